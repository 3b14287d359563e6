"""Memory-budget planner for large-image inference: picks the search mode, the chunk sizes and the tile size.

``max_memory`` (e.g. ``'6G'``) bounds the working memory of one inference: weights, inputs, the encoded
reference, the search and transfer blocks and the main network's activations. It does not count the Python /
PyTorch runtime itself (about 0.8 GB of RSS after ``import extracter`` on CPU). Estimates are float32 and
deliberately a little pessimistic; coefficients were measured on CPU with ``scripts/benchmark_scaling.py``'s
set-up (glibc keeps some freed memory, which shows in RSS and is included).

The plan prefers, in order: no tiling, then the tiling that fits with the least main-network work (equal tiles,
the fewest that fit: their context is recomputed, see :func:`tile_work`); large search blocks (for matrix-multiply
efficiency), shrinking them before shrinking tiles; and caching the normalised reference patches across tiles
when that still fits. A request that cannot fit (the reference alone too large, a given tile too large, the dense
search too large) raises :class:`MemoryBudgetError` with the numbers.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from torch import nn

from extracter.archs.search_approximate import ApproximateSettings, approximate_search_bytes
from extracter.archs.search_transfer import FEATURE_CHANNELS

FLOAT = 4
# bytes per reference pixel: peak while encoding (VGG-19 to relu3_1 of ref and ref_downup) and kept afterwards
ENCODE_PEAK_PER_REF_PX = 1300
FEATURES_PER_REF_PX = 800  # 512 B of features, plus allocator retention measured on CPU
TEXTURE_FLOATS_PER_LR_PX = 64 * 16 + 128 * 4 + 256  # T_lv1 + T_lv2 + T_lv3 per rank
DEFAULT_CHUNK, DEFAULT_KEY_CHUNK = 4096, 8192
MIN_CHUNK, MIN_KEY_CHUNK = 256, 512
DEFAULT_TILE_PAD = 16
_UNITS = {'': 1, 'B': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


class MemoryBudgetError(ValueError):
    """The request cannot be served within ``max_memory``."""


def parse_memory(value) -> int:
    """Bytes from ``6G``, ``1.5G``, ``512M``, ``6GB``, ``6GiB`` (binary units) or a plain number of bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f'max_memory must be positive, got {value}')
        return int(value)
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*', str(value).upper())
    if not match:
        raise ValueError(f"max_memory must look like '6G', '512M' or a number of bytes, got {value!r}")
    if float(match.group(1)) <= 0:
        raise ValueError(f'max_memory must be positive (a working-memory budget such as 6G), got {value!r}')
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(n: float) -> str:
    return f'{n / 2 ** 30:.2f} GiB' if n >= 2 ** 30 else f'{n / 2 ** 20:.0f} MiB'


@dataclass
class NetSpec:
    """What the planner needs to know of a network."""

    arch: str
    n_params: int
    n_feats: int
    top_k: int
    window: int
    stride: int
    padding: int
    main_maps_per_lr_px: float  # main network activations per LR pixel, in n_feats-channel x4 maps (ArchFacts)
    approximate: ApproximateSettings = field(default_factory=ApproximateSettings)

    @classmethod
    def from_net(cls, net: nn.Module) -> 'NetSpec':
        st = net.search_transfer
        return cls(type(net).__name__, sum(p.numel() for p in net.parameters()), net.n_feats, st.top_k, st.window,
                   st.stride, st.padding, net.facts.main_maps_per_lr_px, st.approximate)


@dataclass
class MemoryPlan:
    budget: int
    search_mode: str
    chunk_size: int
    key_chunk_size: int
    cache_keys: bool
    tile_size: Optional[int]  # None: no tiling
    tile_pad: int
    estimate: int  # estimated peak working memory, bytes
    parts: Dict[str, int]

    def describe(self) -> str:
        tile = 'untiled' if self.tile_size is None else f'tiles {self.tile_size} + pad {self.tile_pad} (LR px)'
        return (f'{self.search_mode} search (chunk {self.chunk_size} x {self.key_chunk_size} patches, '
                f'cached keys: {self.cache_keys}), {tile}; estimated peak {format_bytes(self.estimate)} of '
                f'{format_bytes(self.budget)}')


def _grid(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def search_block_bytes(spec: NetSpec, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], mode: str,
                       chunk: int, key_chunk: int, tile_hw: Optional[Tuple[int, int]] = None) -> Dict[str, int]:
    """Peak transient bytes of the search (whole LR of ``lr_hw``) and of the transfer (one tile of ``tile_hw``,
    default the whole LR)."""
    k, s, p = spec.window, spec.stride, spec.padding
    tile_hw = tile_hw or lr_hw
    d = FEATURE_CHANNELS[3] * k * k
    gh, gw = _grid(lr_hw[0], k, s, p), _grid(lr_hw[1], k, s, p)
    th, tw = _grid(tile_hw[0], k, s, p), _grid(tile_hw[1], k, s, p)
    rh, rw = ref_hw[0] // 4, ref_hw[1] // 4  # relu3_1 is at 1/4 of the reference
    rgh, rgw = _grid(rh, k, s, p), _grid(rw, k, s, p)
    lq, lk = gh * gw, rgh * rgw
    levels = ((1, 256), (2, 128), (4, 64))
    if mode == 'dense':
        search = FLOAT * (2 * d * (lq + lk) + 2 * lq * lk)
        transfer = max(FLOAT * 2 * c * (k * f) ** 2 * lk + FLOAT * c * (k * f) ** 2 * th * tw for f, c in levels)
        return {'search': search, 'transfer': transfer}
    q, kc = min(chunk, lq), min(key_chunk, lk)
    search = FLOAT * (2 * d * (q + 2 * gw) + 2 * d * (kc + 2 * rgw) + 3 * q * kc)
    if mode == 'approximate':  # its own estimate, or the chunked search's where it runs that (small inputs)
        approx = approximate_search_bytes(lr_hw, (rh, rw), FEATURE_CHANNELS[3], k, s, p, spec.approximate, chunk)
        search = search if approx is None else approx
    rows = max(1, chunk // tw)
    lb = min(rows, th) * tw
    transfer = max((FLOAT * c + 8) * (k * f) ** 2 * lb + FLOAT * c * (rows * s * f + k * f) * (tile_hw[1] + 2 * p) * f
                   for f, c in levels)
    return {'search': search, 'transfer': transfer}


def tile_bytes(spec: NetSpec, tile_hw: Tuple[int, int]) -> int:
    """Main network activations and transferred textures for one LR (tile) of ``tile_hw`` pixels."""
    px = tile_hw[0] * tile_hw[1]
    return int(FLOAT * px * (16 * spec.n_feats * spec.main_maps_per_lr_px + spec.top_k * TEXTURE_FLOATS_PER_LR_PX))


def estimate(spec: NetSpec, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], mode: str = 'chunked',
             chunk: int = DEFAULT_CHUNK, key_chunk: int = DEFAULT_KEY_CHUNK, cache_keys: bool = False,
             tile: Optional[Tuple[int, int]] = None) -> Dict[str, int]:
    """Estimated bytes, by part, of one inference (batch 1). ``tile`` = (tile_size, tile_pad) in LR pixels."""
    h, w = lr_hw
    ref_px = ref_hw[0] * ref_hw[1]
    if tile is None:
        th, tw = h, w
    else:
        th, tw = min(h, tile[0] + 2 * tile[1]), min(w, tile[0] + 2 * tile[1])
    blocks = search_block_bytes(spec, lr_hw, ref_hw, mode, chunk, key_chunk, (th, tw))
    k, s, p = spec.window, spec.stride, spec.padding
    n_query = _grid(h, k, s, p) * _grid(w, k, s, p)
    parts = {
        'weights': FLOAT * spec.n_params,
        'images': FLOAT * (3 * 2 * ref_px + 3 * 33 * h * w * 2),  # ref, ref_downup; lr, lr_up, sr (+ padded copies)
        'reference_features': FEATURES_PER_REF_PX * ref_px,
        'encode_transient': (ENCODE_PEAK_PER_REF_PX - FEATURES_PER_REF_PX) * ref_px,
        'cached_keys': 0,
        # tiled: the whole LR's relu3_1 and search result are kept while the tiles run
        'lr_search_features': 0 if tile is None else FLOAT * FEATURE_CHANNELS[3] * h * w,
        'search_result': 12 * spec.top_k * n_query,
        'search_blocks': blocks['search'],
        'transfer_blocks': blocks['transfer'],
        'main_network': tile_bytes(spec, (th, tw)),
    }
    if cache_keys and mode == 'chunked':
        parts['cached_keys'] = FLOAT * FEATURE_CHANNELS[3] * k * k * _grid(ref_hw[0] // 4, k, s, p) * _grid(
            ref_hw[1] // 4, k, s, p)
    kept = (parts['weights'] + parts['images'] + parts['reference_features'] + parts['lr_search_features']
            + parts['search_result'])
    parts['encode_peak'] = kept - parts['lr_search_features'] - parts['search_result'] + parts['encode_transient']
    # the search blocks are freed before the tiles run; a tile's transfer blocks before its main network (whose
    # estimate includes the textures)
    parts['run_peak'] = kept + parts['cached_keys'] + max(parts['search_blocks'], parts['transfer_blocks'],
                                                          parts['main_network'])
    parts['total'] = max(parts['encode_peak'], parts['run_peak'])
    return parts


def tile_work(lr_hw: Tuple[int, int], tile_size: int, tile_pad: int, multiple: int) -> int:
    """LR pixels the main network processes with tiles of ``tile_size`` + ``tile_pad`` (each tile with its context),
    the tiles being cut as :func:`extracter.inference.tiling.tile_spans` cuts them."""
    from extracter.inference.tiling import tile_spans

    h, w = (-(-n // multiple) * multiple for n in lr_hw)
    rows = sum(i1 - i0 for _, _, i0, i1 in tile_spans(h, tile_size, tile_pad, multiple))
    cols = sum(i1 - i0 for _, _, i0, i1 in tile_spans(w, tile_size, tile_pad, multiple))
    return rows * cols


def tile_candidates(lr_hw: Tuple[int, int], multiple: int, tile_pad: int) -> List[Tuple[int, int]]:
    """The tilings the planner tries, least main-network work first (:func:`tile_work`; ties: the larger tile):
    tiles that cut each side into n equal parts (rounded up to ``multiple``), n = 2, 3, ..., down to tiles of four
    strides. Equal tiles recompute less context than the largest size that fits followed by a small remainder."""
    pad = -(-tile_pad // multiple) * multiple
    longest = max(lr_hw)
    sizes = set()
    for length in lr_hw:
        for n in range(2, max(2, length // multiple) + 1):
            size = -(-length // (n * multiple)) * multiple
            if size < longest and size >= min(4 * multiple, longest // 2):
                sizes.add(size)
    return sorted(((s, pad) for s in sizes), key=lambda t: (tile_work(lr_hw, t[0], t[1], multiple), -t[0]))


def plan_memory(net_or_spec, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], max_memory,
                tile: Optional[Tuple[int, int]] = None, search_mode: Optional[str] = None,
                tile_pad: int = DEFAULT_TILE_PAD) -> MemoryPlan:
    """Choose search mode, chunk sizes and tiling so that one inference fits ``max_memory``.

    ``lr_hw`` / ``ref_hw``: the (already padded) LR and reference sizes. ``tile``: a requested (tile_size,
    tile_pad) in LR pixels, kept as given (only the chunks are chosen); otherwise the planner tiles only when the
    untiled run does not fit, with ``tile_pad`` of context. ``search_mode='dense'`` checks the faithful path
    instead (no chunking). Raises :class:`MemoryBudgetError` when nothing fits.
    """
    spec = net_or_spec if isinstance(net_or_spec, NetSpec) else NetSpec.from_net(net_or_spec)
    budget = parse_memory(max_memory)
    mode = search_mode or 'chunked'
    mult = spec.stride
    base = estimate(spec, lr_hw, ref_hw, mode, MIN_CHUNK, MIN_KEY_CHUNK, False, (mult, 0))
    if base['encode_peak'] > budget:
        raise MemoryBudgetError(
            f'max_memory={format_bytes(budget)} cannot hold the encoded {ref_hw[1]}x{ref_hw[0]} reference: that '
            f'alone needs about {format_bytes(base["encode_peak"])}; raise max_memory or use a smaller reference')

    def fits(t, chunk, key_chunk, cache=False):
        parts = estimate(spec, lr_hw, ref_hw, mode, chunk, key_chunk, cache, t)
        return parts['total'] <= budget, parts

    def try_chunks(t):
        """Largest chunks (halving from the defaults) that fit with tiling ``t``, or None."""
        if mode == 'dense':
            ok, parts = fits(t, 0, 0)
            return (0, 0, parts) if ok else None
        chunk, key_chunk = DEFAULT_CHUNK, DEFAULT_KEY_CHUNK
        while True:
            ok, parts = fits(t, chunk, key_chunk)
            if ok:
                return chunk, key_chunk, parts
            if chunk <= MIN_CHUNK and key_chunk <= MIN_KEY_CHUNK:
                return None
            chunk, key_chunk = max(MIN_CHUNK, chunk // 2), max(MIN_KEY_CHUNK, key_chunk // 2)

    if tile is not None:
        t = (max(mult, tile[0] // mult * mult), -(-tile[1] // mult) * mult)
        candidates = [t]
    else:
        candidates = [None] + tile_candidates(lr_hw, mult, tile_pad)
    for t in candidates:
        found = try_chunks(t)
        if found is None:
            continue
        chunk, key_chunk, parts = found
        cache = False
        if mode == 'chunked':  # normalise the reference patches once instead of once per block of LR patches
            k, s, p = spec.window, spec.stride, spec.padding
            n_query_blocks = math.ceil(_grid(lr_hw[0], k, s, p) * _grid(lr_hw[1], k, s, p) / chunk)
            ok, cached = fits(t, chunk, key_chunk, cache=True)
            if ok and n_query_blocks > 1:
                cache, parts = True, cached
        return MemoryPlan(budget, mode, chunk or DEFAULT_CHUNK, key_chunk or DEFAULT_KEY_CHUNK, cache,
                          None if t is None else t[0], 0 if t is None else t[1], parts['total'], parts)
    smallest = min(candidates[1:], key=lambda t: t[0]) if tile is None and len(candidates) > 1 else candidates[-1]
    need = estimate(spec, lr_hw, ref_hw, mode, MIN_CHUNK, MIN_KEY_CHUNK, False, smallest)['total']
    what = 'untiled' if smallest is None else f'with tile_size={smallest[0]}, tile_pad={smallest[1]}'
    hint = ('use search mode chunked' if mode == 'dense' else
            'use a smaller tile' if tile is not None else 'use a smaller LR or reference')
    raise MemoryBudgetError(
        f'max_memory={format_bytes(budget)} is too small for a {lr_hw[1]}x{lr_hw[0]} LR and a {ref_hw[1]}x{ref_hw[0]} '
        f'reference ({mode} search, {what}): it needs about {format_bytes(need)}; raise max_memory or {hint}')
