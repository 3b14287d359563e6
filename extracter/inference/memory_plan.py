"""Memory-budget planner for large-image inference: picks the search mode, the chunk sizes, the tile size and how
the encoded references keep relu1_1.

``max_memory`` (e.g. ``'6G'``) bounds the working memory of one inference: weights, inputs, the encoded
references, the search and transfer blocks and the main network's activations, phase by phase (:func:`estimate`).
It does not count the Python / PyTorch runtime itself (on CPU about 0.5 GB of RSS after importing the inference
engine and the networks; 0.75 GB with basicsr, as in training and test.py).
Estimates are float32 and deliberately a little pessimistic; coefficients were measured on CPU (RSS peaks, which
include what glibc keeps of freed memory; docs/benchmarks/large_images_notes.md has the measurements).

The plan prefers, in order: no tiling, then the tiling that fits with the least main-network work (usually the
fewest, equal tiles: their context is recomputed, see :func:`tile_work`); at each tiling relu1_1 stored, then
recomputed from the reference image (exact, a little slower transfer); large search blocks (for matrix-multiply
efficiency), shrinking them before shrinking tiles; and caching the normalised reference patches across tiles
when that still fits (with a cache of encoded references: across LR images, where the cache can keep them). A
request that cannot fit (the reference alone too large, a given tile too large, the dense search too large) raises
:class:`MemoryBudgetError` with the numbers.
"""

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from torch import nn

from extracter.archs.descriptor import descriptor_of
from extracter.archs.refsr_base import LV1_STORAGE
from extracter.archs.vgg import ENCODE_MARGIN
from extracter.search import SearchSpec, get_method
from extracter.search.methods.approximate import ApproximateSettings
from extracter.search.spec import DEFAULT_CHUNK, DEFAULT_KEY_CHUNK, FEATURE_CHANNELS

FLOAT = 4
# The encoded reference, bytes per reference pixel, float32 (extracter/archs/refsr_base.py encode_search_keys /
# encode_textures): the search keys, relu3_1 of the down-up-sampled reference (256 channels at 1/4 x 1/4), and the
# textures relu2_1 (128 at 1/2 x 1/2) and relu3_1 (256 at 1/4 x 1/4) plus relu1_1, either stored (64 channels, full
# size) or recomputed from the normalised image kept instead (3 channels, padded by one pixel).
KEYS_PER_REF_PX = FLOAT * 256 // 16
TEXTURES_PER_REF_PX = {'stored': FLOAT * (64 + 128 // 4 + 256 // 16), 'recomputed': FLOAT * (3 + 128 // 4 + 256 // 16)}
# VGG-19 runs on the reference in tiles of ENCODE_TILE pixels (+ 12 of context on every side): its transient memory
# is one tile's, ENCODE_PEAK_PER_TILE_PX bytes per pixel of the tile (relu1_1, relu1_2, the pooled and the level-2
# maps, measured on CPU +10%), instead of ~1.3 KB per pixel of the whole reference.
ENCODE_TILE = 512
ENCODE_PEAK_PER_TILE_PX = 1300
LR_VGG_PEAK_PER_LR_PX = 16 * 1300  # the untiled LR query features: VGG-19 of the x4 upsampled LR
TEXTURE_FLOATS_PER_LR_PX = 64 * 16 + 128 * 4 + 256  # T_lv1 + T_lv2 + T_lv3 per rank
MIN_CHUNK, MIN_KEY_CHUNK = 256, 512
DEFAULT_TILE_PAD = 16
OWN_SEARCH = 'own'  # MemoryPlan.search_mode of a network whose search is its own stage (plan_own_search)
_UNITS = {'': 1, 'B': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}


class MemoryBudgetError(ValueError):
    """The request cannot be served within ``max_memory``."""


def parse_memory(value) -> int:
    """Bytes from ``6G``, ``1.5G``, ``512M``, ``6GB``, ``6GiB`` (binary units) or a plain number of bytes. Errors
    start with the key, once (``max_memory must look like '6G', ...``): callers that took the value from a flag put
    the flag in its place (``--max-memory: must look like ...``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f'max_memory must be positive (a working-memory budget such as 6G), got {value}')
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
    """What the planner needs to know of a network, and the call's search geometry and approximate settings."""

    arch: str
    n_params: int
    n_feats: int
    top_k: int
    window: int
    stride: int
    padding: int
    main_maps_per_lr_px: float  # main network activations per LR pixel, in n_feats-channel x4 maps (descriptor)
    approximate: ApproximateSettings = field(default_factory=ApproximateSettings)

    @classmethod
    def from_net(cls, net: nn.Module, search: Optional[SearchSpec] = None) -> 'NetSpec':
        """The network's facts, with ``search``'s geometry and approximate settings (default: the network's)."""
        search = net.default_search_spec if search is None else search
        return cls(type(net).__name__, sum(p.numel() for p in net.parameters()), net.n_feats,
                   net.search_transfer.top_k, search.window, search.stride, search.padding,
                   descriptor_of(net).main_maps_per_lr_px, search.approximate)

    def search_spec(self, mode: str, chunk: int = DEFAULT_CHUNK, key_chunk: int = DEFAULT_KEY_CHUNK,
                    cache_keys: bool = False) -> SearchSpec:
        """The :class:`SearchSpec` of ``mode`` with this geometry and these block sizes."""
        return SearchSpec(mode, self.window, self.stride, self.padding, chunk or DEFAULT_CHUNK,
                          key_chunk or DEFAULT_KEY_CHUNK, cache_keys, self.approximate)


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
    lv1_storage: str = 'stored'  # how the encoded references keep relu1_1 (LV1_STORAGE)

    def search_spec(self, spec: SearchSpec) -> SearchSpec:
        """``spec`` with this plan's method, block sizes and key caching."""
        return spec.replace(method=self.search_mode, chunk_size=self.chunk_size, key_chunk_size=self.key_chunk_size,
                            cache_keys=self.cache_keys)

    def describe(self) -> str:
        tile = 'untiled' if self.tile_size is None else f'tiles {self.tile_size} + pad {self.tile_pad} (LR px)'
        lv1 = ''
        if self.lv1_storage == 'recomputed':
            saved = self.parts.get('lv1_saved', 0)
            lv1 = (f', relu1_1 recomputed from the reference image (to fit: saves {format_bytes(saved)}, '
                   'same result)')
        search = (f'own correspondence search (blocks of {self.key_chunk_size} reference patches)'
                  if self.search_mode == OWN_SEARCH else
                  f'{self.search_mode} search (chunk {self.chunk_size} x {self.key_chunk_size} patches, '
                  f'cached keys: {self.cache_keys})')
        return f'{search}, {tile}{lv1}; estimated peak {format_bytes(self.estimate)} of {format_bytes(self.budget)}'


def _grid(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def search_block_bytes(spec: NetSpec, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], mode: str,
                       chunk: int, key_chunk: int, tile_hw: Optional[Tuple[int, int]] = None,
                       lv1_storage: str = 'stored', n_refs: int = 1) -> Dict[str, int]:
    """Peak transient bytes of the search (whole LR of ``lr_hw``: the method's own estimate,
    :meth:`~extracter.search.base.SearchMethod.search_bytes`) and of the transfer (one tile of ``tile_hw``, default
    the whole LR), besides the maps they read."""
    k, s, p = spec.window, spec.stride, spec.padding
    tile_hw = tile_hw or lr_hw
    search_spec = spec.search_spec(mode, chunk, key_chunk)
    method = search_spec.search_method
    search = method.search_bytes(lr_hw, (ref_hw[0] // 4, ref_hw[1] // 4), FEATURE_CHANNELS[3], search_spec,
                                 spec.top_k)  # relu3_1 is at 1/4 of the reference
    th, tw = _grid(tile_hw[0], k, s, p), _grid(tile_hw[1], k, s, p)
    levels = ((1, 256), (2, 128), (4, 64))
    if method.transfer == 'dense':  # every reference patch unfolded at every level
        lk = _grid(ref_hw[0] // 4, k, s, p) * _grid(ref_hw[1] // 4, k, s, p)
        transfer = max(FLOAT * 2 * c * (k * f) ** 2 * lk + FLOAT * c * (k * f) ** 2 * th * tw for f, c in levels)
        return {'search': search, 'transfer': transfer}
    rows = max(1, search_spec.chunk_size // tw)
    lb = min(rows, th) * tw
    transfer = 0
    for f, c in levels:
        # per gathered pixel: its C values (twice with several references: one reference's, then the band's) and
        # ~32 bytes of indices; relu1_1 recomputed: 27 gathered image values and 64 computed ones
        per = (2 if n_refs > 1 else 1) * FLOAT * c + 40
        if f == 4 and lv1_storage == 'recomputed':
            per += FLOAT * 27 + 8
        band = FLOAT * c * (rows * s * f + k * f) * (tile_hw[1] + 2 * p) * f  # one band of the folded output
        level = 2 * FLOAT * c * (tile_hw[0] + 2 * p) * (tile_hw[1] + 2 * p) * f * f  # the level's map, divided
        transfer = max(transfer, per * (k * f) ** 2 * lb + band + level)
    return {'search': search, 'transfer': transfer}


def tile_bytes(spec: NetSpec, tile_hw: Tuple[int, int]) -> int:
    """Main network activations and transferred textures for one LR (tile) of ``tile_hw`` pixels."""
    px = tile_hw[0] * tile_hw[1]
    return int(FLOAT * px * (16 * spec.n_feats * spec.main_maps_per_lr_px + spec.top_k * TEXTURE_FLOATS_PER_LR_PX))


def estimate(spec: NetSpec, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], mode: str = 'chunked',
             chunk: int = DEFAULT_CHUNK, key_chunk: int = DEFAULT_KEY_CHUNK, cache_keys: bool = False,
             tile: Optional[Tuple[int, int]] = None, lv1_storage: str = 'stored', n_refs: int = 1) -> Dict[str, int]:
    """Estimated bytes, by part, of one inference (batch 1). ``tile`` = (tile_size, tile_pad) in LR pixels;
    ``ref_hw``: the reference (several: one size with their summed area, ``n_refs`` of them).

    The engine (:func:`extracter.inference.engine.run_refsr`) works in four phases, and the estimate is the largest
    of their peaks: (1) the search keys of every reference, VGG-19 in tiles; (2) the search of the whole LR (its
    query features, the search blocks); the keys are then dropped; (3) the textures of every reference, VGG-19 in
    tiles; (4) the main network, untiled or tile by tile (transfer blocks, then its activations)."""
    if lv1_storage not in TEXTURES_PER_REF_PX:
        raise ValueError(f'lv1_storage must be one of {tuple(TEXTURES_PER_REF_PX)}, got {lv1_storage!r}')
    h, w = lr_hw
    ref_px = ref_hw[0] * ref_hw[1]
    if tile is None:
        th, tw = h, w
    else:
        th, tw = min(h, tile[0] + 2 * tile[1]), min(w, tile[0] + 2 * tile[1])
    blocks = search_block_bytes(spec, lr_hw, ref_hw, mode, chunk, key_chunk, (th, tw), lv1_storage, n_refs)
    k, s, p = spec.window, spec.stride, spec.padding
    n_query = _grid(h, k, s, p) * _grid(w, k, s, p)
    enc_side = ENCODE_TILE + 2 * ENCODE_MARGIN
    if tile is None:  # the LR's query features: VGG-19 of the whole upsampled LR
        lr_vgg = LR_VGG_PEAK_PER_LR_PX * h * w
    else:  # tile by tile (tiling.VGG_MARGIN of context)
        lr_vgg = LR_VGG_PEAK_PER_LR_PX * min(h, tile[0] + 16) * min(w, tile[0] + 16)
    parts = {
        'weights': FLOAT * spec.n_params,
        'images': FLOAT * (3 * 2 * ref_px + 3 * 33 * h * w * 2),  # ref, ref_downup; lr, lr_up, sr (+ padded copies)
        'search_keys': KEYS_PER_REF_PX * ref_px,
        'reference_features': TEXTURES_PER_REF_PX[lv1_storage] * ref_px,  # the textures kept for the transfer
        'lv1_saved': (TEXTURES_PER_REF_PX['stored'] - TEXTURES_PER_REF_PX[lv1_storage]) * ref_px,
        'encode_transient': ENCODE_PEAK_PER_TILE_PX * min(ref_px, enc_side * enc_side),
        'cached_keys': 0,
        'lr_search_features': FLOAT * FEATURE_CHANNELS[3] * h * w,
        'lr_vgg_transient': lr_vgg,
        'search_result': 12 * spec.top_k * n_query,
        'search_blocks': blocks['search'],
        'transfer_blocks': blocks['transfer'],
        'main_network': tile_bytes(spec, (th, tw)),
    }
    # what the method prepares of the keys (the chunked search's normalised key patches with cache_keys, the
    # approximate search's reduced index), kept with them through the search
    search_spec = spec.search_spec(mode, chunk, key_chunk, cache_keys=cache_keys)
    parts['cached_keys'] = search_spec.search_method.prepared_bytes((ref_hw[0] // 4, ref_hw[1] // 4),
                                                                    FEATURE_CHANNELS[3], search_spec)
    # freed memory of the earlier phases that the C allocator keeps (measured on CPU with glibc: about one VGG-19
    # tile's transient, in RSS until the end of the inference)
    parts['retained'] = parts['encode_transient']
    base = parts['weights'] + parts['images']
    # the cached key blocks are made as each reference's keys are encoded (SearchMethod.prepare)
    parts['keys_peak'] = base + parts['search_keys'] + parts['cached_keys'] + parts['encode_transient']
    parts['search_peak'] = base + parts['retained'] + parts['search_keys'] + parts['cached_keys'] + max(
        parts['lr_vgg_transient'], parts['lr_search_features'] + parts['search_blocks'] + parts['search_result'])
    kept = base + parts['search_result'] + parts['reference_features']
    parts['encode_peak'] = kept + parts['encode_transient']
    # a tile's transfer blocks (the textures of the ranks done meanwhile) are freed before its main network, whose
    # estimate includes the textures
    textures = FLOAT * th * tw * spec.top_k * TEXTURE_FLOATS_PER_LR_PX
    parts['run_peak'] = kept + parts['retained'] + max(parts['transfer_blocks'] + textures, parts['main_network'])
    parts['total'] = max(parts['keys_peak'], parts['search_peak'], parts['encode_peak'], parts['run_peak'])
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
    """The tilings the planner tries: every tile size that is a multiple of ``multiple`` (from four strides to below
    the longer side), least main-network work first (:func:`tile_work`; ties: the smaller tile, less memory). The
    work depends on how many tiles cut each side and on where the last ones end (context is clipped at the image
    border), not only on the size, so the largest tile that fits is not always the cheapest."""
    pad = -(-tile_pad // multiple) * multiple
    longest = max(lr_hw)
    sizes = range(max(multiple, min(4 * multiple, longest // 2 // multiple * multiple)), longest, multiple)
    return sorted(((s, pad) for s in sizes), key=lambda t: (tile_work(lr_hw, t[0], t[1], multiple), t[0]))


def _first_fit(fits, method, t, storages):
    """(chunk, key_chunk, parts, lv1) of the first storage of relu1_1 at tiling ``t`` that fits with the largest
    chunks (halving from the defaults; a method without blocks: its own), or None."""
    for lv1 in storages:
        chunk, key_chunk = DEFAULT_CHUNK, DEFAULT_KEY_CHUNK
        while True:
            ok, parts = fits(t, chunk, key_chunk, lv1)
            if ok:
                return chunk, key_chunk, parts, lv1
            if not method.uses_blocks or (chunk <= MIN_CHUNK and key_chunk <= MIN_KEY_CHUNK):
                break
            chunk, key_chunk = max(MIN_CHUNK, chunk // 2), max(MIN_KEY_CHUNK, key_chunk // 2)
    return None


def _refuse(spec: NetSpec, lr_hw, ref_hw, budget: int, mode: str, tile, candidates, storages, n_refs: int):
    """The error of a request that fits at no tiling, with what the smallest one needs."""
    smallest = min(candidates[1:], key=lambda t: t[0]) if tile is None and len(candidates) > 1 else candidates[-1]
    need = estimate(spec, lr_hw, ref_hw, mode, MIN_CHUNK, MIN_KEY_CHUNK, False, smallest, storages[-1],
                    n_refs)['total']
    what = 'untiled' if smallest is None else f'with tile_size={smallest[0]}, tile_pad={smallest[1]}'
    if storages[-1] == 'recomputed':
        what += ', relu1_1 recomputed'
    hint = ('use search mode chunked' if not get_method(mode).uses_blocks else
            'use a smaller tile' if tile is not None else 'use a smaller LR or reference')
    return MemoryBudgetError(
        f'max_memory={format_bytes(budget)} is too small for a {lr_hw[1]}x{lr_hw[0]} LR and a {ref_hw[1]}x{ref_hw[0]} '
        f'reference ({mode} search, {what}): it needs about {format_bytes(need)}; raise max_memory or {hint}')


def reuse_fits(parts: Dict[str, int], budget: int) -> bool:
    """Whether a plan's estimate ``parts`` (with cached key blocks) leaves a cache of encoded references room for
    all it keeps of them: their keys, key blocks and textures (the cache gets ``budget - total``, see
    :mod:`extracter.inference.reference_cache`); otherwise the larger entries would crowd the textures out."""
    kept = parts['search_keys'] + parts['cached_keys'] + parts['reference_features']
    return parts['total'] + kept <= budget


def cached_reference_bytes(search: SearchSpec, ref_sizes: Sequence[Tuple[int, int]], lv1_storage: str = 'stored'
                           ) -> int:
    """Bytes a cache of encoded references keeps of these (padded) references: their keys, what ``search``'s
    method prepares of them (:meth:`~extracter.search.base.SearchMethod.prepared_bytes`) and their textures."""
    per_px = KEYS_PER_REF_PX + TEXTURES_PER_REF_PX[lv1_storage]
    return sum(per_px * h * w + search.search_method.prepared_bytes((h // 4, w // 4), FEATURE_CHANNELS[3], search)
               for h, w in ref_sizes)


def plan_memory(net_or_spec, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], max_memory,
                tile: Optional[Tuple[int, int]] = None, search_mode: Optional[str] = None,
                tile_pad: int = DEFAULT_TILE_PAD, n_refs: int = 1, search: Optional[SearchSpec] = None,
                reuse: bool = False) -> MemoryPlan:
    """Choose chunk sizes, tiling and how relu1_1 is kept so that one inference fits ``max_memory``.

    ``lr_hw`` / ``ref_hw``: the (already padded) LR and reference sizes (several references: one size with their
    summed area, and ``n_refs``). ``tile``: a requested (tile_size, tile_pad) in LR pixels, kept as given (only the
    chunks are chosen); otherwise the planner tiles only when the untiled run does not fit, with ``tile_pad`` of
    context. At every tiling relu1_1 is stored if that fits, else recomputed from the reference image (exact, a
    little slower transfer: chosen only where needed). ``search_mode`` (default chunked): the method, whose own
    estimate counts (:meth:`~extracter.search.base.SearchMethod.search_bytes`); a method with the dense transfer
    (``'dense'``, the faithful path) keeps relu1_1 stored; one without blocks is only checked. ``search``: the
    call's spec (its geometry and approximate settings; a network's default otherwise). ``reuse``: the encoded
    references are kept for later LR images (a :class:`~extracter.inference.reference_cache.ReferenceCache`): the
    normalised key blocks are then cached (prepared once per reference, kept with its keys) wherever the plan with
    them fits and still leaves the cache room for everything it keeps of the references (:func:`reuse_fits`).
    Raises :class:`MemoryBudgetError` when nothing fits.
    """
    if isinstance(net_or_spec, NetSpec):
        spec = net_or_spec if search is None else dataclasses.replace(
            net_or_spec, window=search.window, stride=search.stride, padding=search.padding,
            approximate=search.approximate)
    else:
        spec = NetSpec.from_net(net_or_spec, search)
    budget = parse_memory(max_memory)
    mode = search_mode or 'chunked'
    method = get_method(mode)
    mult = spec.stride
    storages = ('stored',) if method.transfer == 'dense' else LV1_STORAGE
    least = estimate(spec, lr_hw, ref_hw, mode, MIN_CHUNK, MIN_KEY_CHUNK, False, (mult, 0), storages[-1], n_refs)
    ref_need = max(least['keys_peak'], least['encode_peak'])
    if ref_need > budget:
        raise MemoryBudgetError(
            f'max_memory={format_bytes(budget)} cannot hold the encoded {ref_hw[1]}x{ref_hw[0]} reference: that '
            f'alone needs about {format_bytes(ref_need)}'
            + (' with relu1_1 recomputed' if storages[-1] == 'recomputed' else '')
            + '; raise max_memory or use a smaller reference')

    def fits(t, chunk, key_chunk, lv1, cache=False):
        parts = estimate(spec, lr_hw, ref_hw, mode, chunk, key_chunk, cache, t, lv1, n_refs)
        return parts['total'] <= budget, parts

    if tile is not None:
        candidates = [(max(mult, tile[0] // mult * mult), -(-tile[1] // mult) * mult)]
    else:
        candidates = [None] + tile_candidates(lr_hw, mult, tile_pad)
    for t in candidates:
        found = _first_fit(fits, method, t, storages)
        if found is None:
            continue
        chunk, key_chunk, parts, lv1 = found
        cache = False
        if method.caches_keys:  # normalise the reference patches once instead of once per block of LR patches
            k, s, p = spec.window, spec.stride, spec.padding
            n_query_blocks = math.ceil(_grid(lr_hw[0], k, s, p) * _grid(lr_hw[1], k, s, p) / chunk)
            ok, cached = fits(t, chunk, key_chunk, lv1, cache=True)
            if ok and (n_query_blocks > 1 or reuse and reuse_fits(cached, budget)):
                cache, parts = True, cached
        return MemoryPlan(budget, mode, chunk, key_chunk, cache, None if t is None else t[0],
                          0 if t is None else t[1], parts['total'], parts, lv1)
    raise _refuse(spec, lr_hw, ref_hw, budget, mode, tile, candidates, storages, n_refs)


# A network whose correspondence search is its own stage (descriptor.own_search: C2-Matching). Bytes per pixel,
# float32, from the tensors each phase holds, checked against RSS peaks on CPU (docs/benchmarks/c2matching_memory):
OWN_KEYS_PER_REF_PX = FLOAT * 256 // 16  # the reference's contrastive conv3_1 (256 channels at 1/4 x 1/4)
OWN_VGG_PEAK_PER_PX = 1300  # a VGG-16/19 pass to conv3_1/relu3_1, per input pixel (as ENCODE_PEAK_PER_TILE_PX)
OWN_PATCHES_PER_KEY = FLOAT * 256 * 9 * 2  # a block's 3x3 reference patches, and their normalised copy
OWN_MIN_KEY_CHUNK = 256  # the smallest correlation block the planner halves the network's default down to
# What every phase holds beyond its tensors: the deformable convolutions' bands (C2_DCN_BAND_BYTES), oneDNN's
# buffers and what glibc keeps of freed mid-size blocks between tiles (measured: 0.25-0.30 GiB at 256-1024 px)
OWN_OVERHEAD = 320 * 2 ** 20


def own_search_estimate(net: nn.Module, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], key_chunk: int,
                        tile: Optional[Tuple[int, int]] = None) -> Dict[str, int]:
    """Estimated bytes, by phase, of one inference (batch 1) of an own-search network on padded sizes (the reference
    at the output's size): the keys (VGG-16 of the reference, in tiles), the correspondence (the LR's features, one
    block of ``key_chunk`` reference patches and its correlation with the LR's pixels), the textures (VGG-19
    relu1_1..3_1 of the reference, kept whole: the deformable convolutions sample anywhere in them) and the
    restoration, untiled or one tile (``descriptor.main_maps_per_lr_px`` ngf-channel x4 maps per LR pixel)."""
    lr_px, ref_px = lr_hw[0] * lr_hw[1], ref_hw[0] * ref_hw[1]
    weights = FLOAT * sum(p.numel() for p in net.parameters())
    keys = OWN_KEYS_PER_REF_PX * ref_px
    textures = TEXTURES_PER_REF_PX['stored'] * ref_px
    th, tw = lr_hw if tile is None else (min(lr_hw[0], tile[0] + 2 * tile[1]), min(lr_hw[1], tile[0] + 2 * tile[1]))
    query_vgg = OWN_VGG_PEAK_PER_PX * 16 * (lr_px if tile is None else th * tw)
    block = min(key_chunk, lr_px)  # reference patches per correlation block (there are about lr_px of them)
    search = FLOAT * 256 * lr_px * 2 + OWN_PATCHES_PER_KEY * block + 2 * FLOAT * block * lr_px
    main = int(FLOAT * th * tw * 16 * net.n_feats * descriptor_of(net).main_maps_per_lr_px)
    encode_tile = min(ref_px, (ENCODE_TILE + 2 * ENCODE_MARGIN) ** 2)  # the VGG-16 keys and VGG-19 in tiles
    parts = {'weights': weights, 'keys_peak': keys + ENCODE_PEAK_PER_TILE_PX * encode_tile,
             'search_peak': keys + max(query_vgg, search),
             'encode_peak': textures + ENCODE_PEAK_PER_TILE_PX * encode_tile,
             'main_peak': textures + main + FLOAT * 3 * 16 * lr_px}
    parts['fixed'] = weights + OWN_OVERHEAD  # held in every phase
    parts['total'] = parts['fixed'] + max(parts['keys_peak'], parts['search_peak'], parts['encode_peak'],
                                          parts['main_peak'])
    return parts


def plan_own_search(net: nn.Module, lr_hw: Tuple[int, int], ref_hw: Tuple[int, int], max_memory,
                    tile: Optional[Tuple[int, int]] = None, tile_pad: int = DEFAULT_TILE_PAD) -> MemoryPlan:
    """:func:`plan_memory` for an own-search network: the largest correlation block and the least tiling that fit
    (``tile``: a requested (tile_size, tile_pad), kept). The search is never tiled (it runs once on the whole LR);
    the restoration is."""
    budget = parse_memory(max_memory)
    candidates = [tile] if tile is not None else [None] + tile_candidates(lr_hw, 1, tile_pad)
    # correlation blocks: the network's default (its spec's key_chunk_size), halved down to OWN_MIN_KEY_CHUNK
    chunks = [net.default_search_spec.key_chunk_size]
    while chunks[-1] // 2 >= OWN_MIN_KEY_CHUNK:
        chunks.append(chunks[-1] // 2)
    for t in candidates:
        for key_chunk in chunks:
            parts = own_search_estimate(net, lr_hw, ref_hw, key_chunk, t)
            if parts['total'] <= budget:
                return MemoryPlan(budget, OWN_SEARCH, 0, key_chunk, False, None if t is None else t[0],
                                  0 if t is None else t[1], parts['total'], parts)
    smallest = min(candidates[1:], key=lambda c: c[0]) if tile is None and len(candidates) > 1 else candidates[-1]
    need = own_search_estimate(net, lr_hw, ref_hw, chunks[-1], smallest)
    raise MemoryBudgetError(f'max_memory={format_bytes(budget)} cannot hold {type(net).__name__} on a '
                            f'{lr_hw[1]}x{lr_hw[0]} LR (padded) with its {ref_hw[1]}x{ref_hw[0]} reference: it needs '
                            f'about {format_bytes(need["total"])} at the smallest tiles; raise max_memory')
