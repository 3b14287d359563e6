"""Turn checkpoints saved by the original EXTRACTER or TTSR code (or mmagic's TTSR) into BasicSR checkpoints for our
archs: :func:`convert_state_dict` reads any of them.

Original layouts (``torch.save(model.state_dict())`` in their trainers):
- EXTRACTER: ``FE.*`` (VGG slices + frozen ``sub_mean``) and ``SR.*`` (main network and GDE in one module).
- TTSR: ``LTE.*`` and ``MainNet.*`` (plus ``LTE_copy.*`` when saved without the trainer's filter: a frozen copy
  of LTE used only by the transferal perceptual loss; dropped).
- mmagic/mmediting TTSR: ``generator.*`` and ``extractor.*`` (see :mod:`extracter.convert.mmagic`).
Possibly nested under ``model`` / ``state_dict`` / ``params`` and prefixed ``module.`` (DataParallel/DDP).

The mapping is a prefix rename (our attribute names follow the original ones); block counts, ``top_k`` and
``n_feats`` are read off the weights. Unrecognised keys are an error that names them; loading is strict.
"""

import re
from collections import Counter
from typing import Dict, List, Tuple

import torch

from extracter.archs.descriptor import detect_options
from extracter.convert.c2matching import HINT as C2_HINT
from extracter.convert.c2matching import c2_part
from extracter.convert.common import ConversionError, infer_network_options
from extracter.convert.mmagic import convert_mmagic_state, is_mmagic_state

_NEST_KEYS = ('params_ema', 'params', 'state_dict', 'model', 'net', 'network')
_GDE_PARTS = ('conv12_grad', 'grad_12', 'conv23_grad', 'grad_23', 'conv33_grad', 'grad_33', 'fuse_tail1',
              'fuse_tail2', 'fuse')
_HEADS = ('conv11_head', 'conv22_head', 'conv33_head')
_OUR_HEADS = ('main', 'dfe', 'lte', 'gde')  # the top-level modules of this toolkit's RefSR networks
USE_AS_IS = 'python extracter/infer.py --weights {source} ...'


def unwrap_state_dict(obj, source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """Find the tensor dict inside ``obj`` (nested under a known key or not) and strip ``module.`` prefixes."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if not isinstance(obj, dict):
            raise ConversionError(f'{source}: expected a state dict (a dict of tensors), got {type(obj).__name__}')
        nested = [k for k in _NEST_KEYS if isinstance(obj.get(k), dict)]
        if not nested:
            raise ConversionError(f'{source}: not a state dict; top-level keys: {sorted(map(str, obj))[:10]}')
        obj = obj[nested[0]]
    else:
        raise ConversionError(f'{source}: could not find a state dict of tensors')
    return {re.sub(r'^(module\.)+', '', k): v for k, v in obj.items()}


def _shown(value) -> str:
    return '+'.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def refuse_ours(state: Dict[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """A checkpoint already in this toolkit's format (an architecture's descriptor recognises it: ``detect``) needs
    no conversion: refused with the command that uses it as it is."""
    options = detect_options(state)
    if options is not None:
        shown = ', '.join(f'{k} {_shown(options[k])}' for k in ('num_res_blocks', 'n_feats', 'top_k', 'upscale',
                                                                  'embed_dim') if k in options)
        raise ConversionError(f"{source}: already in this toolkit's format ({options['type']}"
                              f"{': ' + shown if shown else ''}): use it as it is ({USE_AS_IS.format(source=source)});"
                              f' nothing was converted')
    heads = {k.split('.', 1)[0] for k in state}
    if heads and heads <= set(_OUR_HEADS):
        raise ConversionError(f"{source}: has this toolkit's key names ({', '.join(f'{h}.*' for h in sorted(heads))}), "
                              'not an original layout: there is nothing to convert (but no architecture of this '
                              'package matches its tensors as they are: a partial or edited state dict?)')


def detect_arch(state: Dict[str, torch.Tensor], source: str = 'checkpoint') -> str:
    prefixes = Counter(k.split('.', 1)[0] for k in state)
    if {'SR', 'FE'} & set(prefixes):
        return 'Extracter'
    if {'MainNet', 'LTE'} & set(prefixes):
        return 'TTSR'
    raise ConversionError(f'{source}: neither an EXTRACTER (SR.*, FE.*), a TTSR (MainNet.*, LTE.*) nor an mmagic TTSR '
                          f'(generator.*, extractor.*) checkpoint; '
                          f'key prefixes found: {dict(prefixes)}')


def _map_extracter_key(key: str) -> str:
    head, rest = key.split('.', 1)
    if head == 'FE':
        return f'dfe.{rest}'
    if head != 'SR':
        return ''
    if rest.startswith('SFE_GRAD.'):
        return f'gde.SFE.{rest[len("SFE_GRAD."):]}'
    first = rest.split('.', 1)[0]
    if first in _GDE_PARTS:
        return f'gde.{rest}'
    return f'main.{rest}'


def _map_ttsr_key(key: str) -> str:
    head, rest = key.split('.', 1)
    if head == 'LTE':
        return f'lte.{rest}'
    if head != 'MainNet':
        return ''
    first, tail = rest.split('.', 1)
    if first in _HEADS:  # TTSR has one fusion head per level; ours is a list over top-k ranks (TTSR: top-1)
        return f'main.{first}.0.{tail}'
    return f'main.{rest}'


def convert_state_dict(raw, source: str = 'checkpoint') -> Tuple[Dict[str, torch.Tensor], Dict[str, object],
                                                                   List[str]]:
    """Returns (our state dict, network options, notes). Raises :class:`ConversionError` on anything unknown."""
    state = unwrap_state_dict(raw, source)
    refuse_ours(state, source)
    if is_mmagic_state(state):
        mapped, options, notes = convert_mmagic_state(state, source)
        verify_strict_load(mapped, options, source)
        return mapped, options, notes
    part = c2_part(state)
    if part is not None:  # one of several files: convert_c2matching_files reads them together
        raise ConversionError(f'{source}: the original C2-Matching {part}; it converts together with the other '
                              f'part and the VGG-19 file: {C2_HINT}')
    arch = detect_arch(state, source)
    mapper = _map_extracter_key if arch == 'Extracter' else _map_ttsr_key
    notes: List[str] = []
    dropped = sorted(k for k in state if arch == 'TTSR' and k.startswith('LTE_copy.'))
    if dropped:
        notes.append(f'dropped {len(dropped)} LTE_copy.* keys (frozen copy of LTE used only by a training loss)')
    mapped, unknown = {}, []
    for key, value in state.items():
        if key in dropped:
            continue
        new = mapper(key) if '.' in key else ''
        if not new:
            unknown.append(key)
        else:
            mapped[new] = value.float() if value.is_floating_point() else value
    if unknown:
        raise ConversionError(f'{source}: unrecognised keys for {arch}: {unknown[:10]}'
                              f'{" ..." if len(unknown) > 10 else ""}')
    if 'main.SFE.conv_head.weight' not in mapped:
        raise ConversionError(f'{source}: {arch} checkpoint lacks the shallow feature extractor weights')
    options = infer_network_options(arch, mapped)
    verify_strict_load(mapped, options, source)
    return mapped, options, notes


def build_network(options: Dict[str, object]) -> torch.nn.Module:
    from extracter.registry import ARCH_REGISTRY

    opt = dict(options)
    return ARCH_REGISTRY.get(opt.pop('type'))(**opt)


def verify_strict_load(state: Dict[str, torch.Tensor], options: Dict[str, object], source: str) -> None:
    net = build_network(options)
    result = net.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f'missing {result.missing_keys[:10]}')
    if result.unexpected_keys:
        problems.append(f'unexpected {result.unexpected_keys[:10]}')
    if problems:
        raise ConversionError(f'{source}: converted weights do not match the inferred {options["type"]} network: '
                              + '; '.join(problems))
