"""Metric protocols (``val.protocols``): colour space x border crop x measure, expanded into BasicSR metric blocks::

    val:
      protocols:
        colour: [y, rgb]       # y: BT.601 luma of BasicSR's bgr2ycbcr (MATLAB's rgb2ycbcr); rgb: the three channels
        border: [0, scale]     # pixels cropped at each border: 0, scale (4 at x4) or a number
        metrics: [psnr, ssim]

gives the metrics ``<measure>_<colour>_b<border>`` (``psnr_y_b0``, ``ssim_y_b0``, ``psnr_y_b4``, ..., ``ssim_rgb_b4``),
each BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``crop_border`` and ``test_y_channel`` on the saved uint8
images. They join the hand-written ``val.metrics`` (a name in both must mean the same metric). Which published
number used which protocol: docs/evaluation.md.
"""

import difflib
from typing import Any, Dict, List, Mapping, Optional

from extracter.archs.refsr_base import SCALE

COLOURS = ('y', 'rgb')
MEASURES = {'psnr': 'calculate_psnr', 'ssim': 'calculate_ssim'}
BORDERS = ('scale', 'a number of pixels >= 0')  # what ``border`` accepts (for messages and docs)
PROTOCOL_KEYS = ('colour', 'border', 'metrics')
_LABELS = {'calculate_psnr': 'PSNR', 'calculate_ssim': 'SSIM'}
_CHOICES = {'colour': 'y, rgb', 'border': '0, scale, a number of pixels', 'metrics': 'psnr, ssim'}


def metric_name(measure: str, colour: str, border: int) -> str:
    """``psnr_y_b4`` style name of one protocol's metric."""
    return f'{measure}_{colour}_b{border}'


def _items(spec: Mapping[str, Any], key: str, prefix: str) -> List[Any]:
    value = spec[key]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f'{prefix}{key} must not be empty')
    return items


def _border(value: Any, scale: int, key: str) -> int:
    if value == 'scale':
        return scale
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be 'scale' or a number of pixels >= 0, got {value!r}")
    return value


def expand_protocols(spec: Any, scale: int = SCALE, prefix: str = 'val.protocols.') -> Dict[str, Dict[str, Any]]:
    """The metric blocks (name -> BasicSR metric options) of a ``protocols`` mapping; a ValueError names the key."""
    where = prefix.rstrip('.')
    if not isinstance(spec, Mapping):
        raise ValueError(f'{where} must be a mapping with keys {", ".join(PROTOCOL_KEYS)}, got {spec!r}')
    for key in spec:
        if key not in PROTOCOL_KEYS:
            close = difflib.get_close_matches(str(key), PROTOCOL_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f'; allowed: {", ".join(PROTOCOL_KEYS)}'
            raise ValueError(f'unknown option key {prefix + str(key)!r}{hint}')
    for key in PROTOCOL_KEYS:
        if key not in spec:
            raise ValueError(f'{prefix}{key} is missing (one of, or a list of: {_CHOICES[key]})')
    colours = _items(spec, 'colour', prefix)
    for c in colours:
        if c not in COLOURS:
            raise ValueError(f'{prefix}colour must be one of {", ".join(COLOURS)} (or a list of them), got {c!r}')
    borders = [_border(b, scale, f'{prefix}border') for b in _items(spec, 'border', prefix)]
    measures = _items(spec, 'metrics', prefix)
    for m in measures:
        if m not in MEASURES:
            raise ValueError(f'{prefix}metrics must be one of {", ".join(MEASURES)} (or a list of them), got {m!r}')
    out: Dict[str, Dict[str, Any]] = {}
    for colour in colours:
        for border in borders:
            for measure in measures:
                name = metric_name(measure, colour, border)
                if name in out:
                    raise ValueError(f'{where} names {name} twice (border scale is {scale} pixels)')
                out[name] = {'type': MEASURES[measure], 'crop_border': border, 'test_y_channel': colour == 'y'}
    return out


def merge_metrics(metrics: Optional[Mapping[str, Any]], protocols: Any, scale: int = SCALE,
                  prefix: str = 'val.') -> Dict[str, Dict[str, Any]]:
    """``val.metrics`` followed by the metrics of ``val.protocols``; a name in both must be the same metric."""
    out = {name: dict(block) for name, block in (metrics or {}).items()}
    if protocols is None:
        return out
    for name, block in expand_protocols(protocols, scale, f'{prefix}protocols.').items():
        given = out.get(name)
        if given is not None:
            same = (given.get('type') == block['type'] and given.get('crop_border', 0) == block['crop_border']
                    and bool(given.get('test_y_channel', False)) == block['test_y_channel'])
            if not same:
                raise ValueError(f'{prefix}metrics.{name} differs from the metric {prefix}protocols names {name} '
                                 f'({describe_metric(name, block)}); rename one of them')
            continue
        out[name] = block
    return out


def describe_metric(name: str, block: Mapping[str, Any]) -> str:
    """``psnr_y_b4: PSNR on Y (BT.601), border 4`` for a BasicSR metric block."""
    kind = _LABELS.get(block.get('type'), block.get('type'))
    if block.get('type') in _LABELS:
        colour = 'Y (BT.601, BasicSR)' if block.get('test_y_channel') else 'RGB'
        return f'{name}: {kind} on {colour}, border {block.get("crop_border", 0)}'
    return f'{name}: {kind}'
