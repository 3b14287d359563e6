"""Turn TTSR checkpoints of OpenMMLab's mmagic (formerly mmediting) into checkpoints for our ``TTSR``.

mmagic's TTSR model (``mmagic/models/editors/ttsr/``) saves one ``state_dict`` for the whole model:
``generator.*`` (``TTSRNet``: ``sfe``, ``conv_first1``, ``res_block1``, ``up1``, ``csfi2``, ..., ``merge_features``),
``extractor.*`` (``LTE``: ``img_normalize`` + VGG-19 ``slice1..3``) and, depending on the version and the config,
``extractor_copy.*`` (mmagic 1.x: a frozen copy of the LTE for the transferal perceptual loss),
``discriminator.*`` (``TTSRDiscriminator``, GAN configs), ``perceptual_loss.vgg.*`` (the perceptual loss's VGG-19,
GAN configs) and ``step_counter`` (mmediting 0.x). The file also holds ``meta``, ``optimizer`` and, with mmengine,
``message_hub``/``param_schedulers``; only ``state_dict`` is read.

The network computes exactly what the original TTSR computes (see docs/mmagic_ttsr.md), so the conversion is a
key rename onto our ``TTSR`` with its default options; block counts and width are read off the weights. The
discriminator has our ``RefSRDiscriminator``'s structure and is converted separately
(:func:`convert_mmagic_discriminator`).
"""

import math
import re
from typing import Dict, List, Optional, Tuple

import torch

from extracter.convert.common import ConversionError, infer_network_options

# mmagic TTSRNet -> our CSFIMainNet (``main.``); longest/most specific patterns first
_GENERATOR_RULES: List[Tuple[str, str]] = [
    (r'sfe\.conv_first\.', 'SFE.conv_head.'),
    (r'sfe\.body\.', 'SFE.RBs.'),
    (r'sfe\.conv_last\.', 'SFE.conv_tail.'),
    (r'conv_first1\.', 'conv11_head.0.'),
    (r'res_block1\.', 'RB11.'),
    (r'conv_last1\.', 'conv11_tail.'),
    (r'up1\.upsample_conv\.', 'conv12.'),
    (r'conv_first2\.', 'conv22_head.0.'),
    (r'csfi2\.conv1to2\.', 'ex12.conv12.'),
    (r'csfi2\.conv2to1\.', 'ex12.conv21.'),
    (r'csfi2\.conv_merge([12])\.', r'ex12.conv_merge\1.'),
    (r'res_block2_([12])\.', r'RB2\1.'),
    (r'conv_last2_([12])\.', r'conv2\1_tail.'),
    (r'up2\.upsample_conv\.', 'conv23.'),
    (r'conv_first3\.', 'conv33_head.0.'),
    (r'csfi3\.conv1to2\.', 'ex123.conv12.'),
    (r'csfi3\.conv1to4\.', 'ex123.conv13.'),
    (r'csfi3\.conv2to1\.', 'ex123.conv21.'),
    (r'csfi3\.conv2to4\.', 'ex123.conv23.'),
    (r'csfi3\.conv4to1_([12])\.', r'ex123.conv31_\1.'),
    (r'csfi3\.conv4to2\.', 'ex123.conv32.'),
    (r'csfi3\.conv_merge([12])\.', r'ex123.conv_merge\1.'),
    (r'csfi3\.conv_merge4\.', 'ex123.conv_merge3.'),
    (r'res_block3_([123])\.', r'RB3\1.'),
    (r'conv_last3_([123])\.', r'conv3\1_tail.'),
    (r'merge_features\.conv1to4\.', 'merge_tail.conv13.'),
    (r'merge_features\.conv2to4\.', 'merge_tail.conv23.'),
    (r'merge_features\.conv_merge\.', 'merge_tail.conv_merge.'),
    (r'merge_features\.conv_last([12])\.', r'merge_tail.conv_tail\1.'),
]
_EXTRACTOR_RULES: List[Tuple[str, str]] = [
    (r'img_normalize\.', 'sub_mean.'),
    (r'(slice[123]\.\d+\.)', r'\1'),
]
# parts of the model state that are not the SR network, and why they are dropped
_DROPPED = {
    'extractor_copy': 'frozen copy of the LTE used only by the transferal perceptual loss',
    'perceptual_loss': 'VGG-19 of the perceptual loss (training only)',
    'step_counter': 'training iteration counter',
    'data_preprocessor': 'input normalisation constants (ours is built in)',
}
def _as_float(value: torch.Tensor) -> torch.Tensor:
    # contiguous: a checkpoint may store views (shared or overlapping storage); ours get storages of their own
    return (value.float() if value.is_floating_point() else value).contiguous()


_TTSR_MARKERS = ('generator.sfe.conv_first.weight', 'generator.conv_first1.weight', 'extractor.slice1.0.weight')


def is_mmagic_state(state: Dict[str, torch.Tensor]) -> bool:
    """Whether a (nesting-stripped) state dict is laid out like an mmagic/mmediting model (``generator.*``)."""
    return any(k.startswith('generator.') for k in state)


def _rename(key: str, rules: List[Tuple[str, str]]) -> Optional[str]:
    for pattern, repl in rules:
        new, n = re.subn('^' + pattern, repl, key)
        if n:
            return new
    return None


def map_mmagic_key(key: str) -> Optional[str]:
    """Our key for an mmagic ``generator.*``/``extractor.*`` key, or None if it is not part of TTSR."""
    head, _, rest = key.partition('.')
    if head == 'generator':
        new = _rename(rest, _GENERATOR_RULES)
        return f'main.{new}' if new else None
    if head == 'extractor':
        new = _rename(rest, _EXTRACTOR_RULES)
        return f'lte.{new}' if new else None
    return None


def convert_mmagic_state(state: Dict[str, torch.Tensor], source: str = 'checkpoint') -> Tuple[
        Dict[str, torch.Tensor], Dict[str, object], List[str]]:
    """Returns (our TTSR state dict, ``network_g`` options, notes). Raises :class:`ConversionError` when the
    ``generator``/``extractor`` are not mmagic's TTSRNet/LTE, naming what was expected and what was found."""
    missing_markers = [k for k in _TTSR_MARKERS if k not in state]
    if missing_markers:
        parts = sorted({'.'.join(k.split('.')[:2]) for k in state if k.startswith(('generator.', 'extractor.'))})
        raise ConversionError(
            f'{source}: an mmagic/mmediting checkpoint (generator.* keys) but not TTSR: expected mmagic TTSRNet '
            f'generator.sfe.*, generator.conv_first1.*, ... and LTE extractor.slice1.*; missing {missing_markers}; '
            f'found {parts[:12]}{" ..." if len(parts) > 12 else ""}')
    notes: List[str] = []
    mapped: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    dropped: Dict[str, int] = {}
    for key, value in state.items():
        head = key.split('.', 1)[0]
        if head in _DROPPED:
            dropped[head] = dropped.get(head, 0) + 1
            continue
        if head == 'discriminator':
            continue  # converted on its own by convert_mmagic_discriminator
        new = map_mmagic_key(key)
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = _as_float(value)
    if unknown:
        raise ConversionError(f'{source}: unrecognised keys in the mmagic TTSR checkpoint: {unknown[:10]}'
                              f'{" ..." if len(unknown) > 10 else ""}')
    for head, count in sorted(dropped.items()):
        notes.append(f'dropped {count} {head}* key(s) ({_DROPPED[head]})')
    options = infer_network_options('TTSR', mapped)
    notes.append('res_scale is not stored in the weights: 1.0 as in every mmagic TTSR config')
    if any(k.startswith('discriminator.') for k in state):
        disc = convert_mmagic_discriminator(state, source)
        if disc is None:
            notes.append('discriminator.* does not match RefSRDiscriminator (TTSRDiscriminator with other '
                         'channels or layers): not converted')
        else:
            notes.append(f'discriminator.* matches RefSRDiscriminator(in_size={disc[1]["in_size"]}); it was '
                         "trained with mmagic's vanilla (BCE) GAN loss on [-1, 1] images, not with WGAN-GP")
    return mapped, options, notes


def convert_mmagic_discriminator(state: Dict[str, torch.Tensor], source: str = 'checkpoint') -> Optional[
        Tuple[Dict[str, torch.Tensor], Dict[str, object]]]:
    """(our RefSRDiscriminator state dict, ``network_d`` options) from an mmagic GAN checkpoint's
    ``discriminator.*`` (``TTSRDiscriminator``: ``body`` = 10 convs with LeakyReLUs in between, ``last`` = fc,
    LeakyReLU, fc), or None when there is no discriminator or its structure differs from ours."""
    from extracter.archs.discriminator_arch import RefSRDiscriminator

    disc = {k[len('discriminator.'):]: v for k, v in state.items() if k.startswith('discriminator.')}
    fc1 = disc.get('last.0.weight')
    if fc1 is None or fc1.dim() != 2:
        return None
    side = math.isqrt(max(fc1.shape[1] // 512, 0))
    if side < 1 or side * side * 512 != fc1.shape[1]:
        return None
    in_size = 32 * side
    ours = RefSRDiscriminator(in_size=in_size, in_channels=int(disc.get('body.0.weight', fc1).shape[1])).state_dict()
    mapped: Dict[str, torch.Tensor] = {}
    for key, value in disc.items():
        m = re.fullmatch(r'body\.(\d+)\.(weight|bias)', key)
        if m and int(m.group(1)) % 2 == 0:  # convs at even indices, LeakyReLUs at odd ones
            new = f'conv{int(m.group(1)) // 2 + 1}.{m.group(2)}'
        else:
            m = re.fullmatch(r'last\.([02])\.(weight|bias)', key)
            new = f'fc{int(m.group(1)) // 2 + 1}.{m.group(2)}' if m else None
        if new is None or new not in ours or ours[new].shape != value.shape:
            return None
        mapped[new] = _as_float(value)
    if set(mapped) != set(ours):
        return None
    return mapped, {'type': 'RefSRDiscriminator', 'in_size': in_size}
