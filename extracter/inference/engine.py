"""The one inference engine for RefSR at any size, with one or several references: :func:`run_refsr`.

It pads the inputs to the network's size multiples (and crops the result back), optionally switches the search
geometry (EXTRACTER's dynamic window/stride) and the search mode for this call only, plans chunk and tile sizes
for a memory budget, and then works in four phases, so that the large parts never share memory: (1) the search keys
of every reference (VGG-19 in tiles of ``ENCODE_TILE`` pixels, a tile's transient memory), (2) one search of the
union of the references' patches for the whole LR, after which the keys are dropped, (3) the textures of every
reference (relu1_1 stored, or recomputed from the image where the budget needs it), (4) the main network, untiled or
tile by tile (:mod:`extracter.inference.tiling`). Training validation,
``test.py``, ``infer.py`` and the scripts all call it; the search result it returns (``return_aux``) is what the
texture-source picture shows.
"""

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from extracter.archs.descriptor import descriptor_of
from extracter.archs.refsr_base import SCALE, ReferenceFeatures, RefSRNet, check_image_pair, make_lr_up
from extracter.inference.memory_plan import (
    DEFAULT_TILE_PAD,
    ENCODE_TILE,
    MemoryPlan,
    cached_reference_bytes,
    plan_memory,
    plan_own_search,
)
from extracter.inference.options import InferenceOptions
from extracter.inference.reference_cache import ReferenceCache
from extracter.inference.tiling import round_tile, search_features_tiled, tile_loop, tile_pad_floor, tiled_forward
from extracter.search import SearchSpec
from extracter.search.choice import choose_search
from extracter.search.methods.approximate import ApproximateSettings

Images = Union[torch.Tensor, Sequence[torch.Tensor]]
PAD_MODES = ('reflect', 'replicate')


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = 'reflect') -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Pad ``x`` [N,C,H,W] at the bottom/right to multiples of ``multiple``; returns it and the (dh, dw) added.
    ``reflect`` falls back to ``replicate`` where the image is too small to reflect."""
    if mode not in PAD_MODES:
        raise ValueError(f'pad mode must be one of {PAD_MODES}, got {mode!r}')
    h, w = x.shape[-2:]
    dh, dw = -h % multiple, -w % multiple
    if dh == 0 and dw == 0:
        return x, (0, 0)
    if mode == 'reflect' and (dh >= h or dw >= w):
        mode = 'replicate'
    return F.pad(x, (0, dw, 0, dh), mode=mode), (dh, dw)


@dataclass
class RefSRResult:
    """What :func:`run_refsr` computed, besides the SR (``return_aux=True``).

    ``scores``/``index``: the search result [N, top_k, L] on the padded LR's patch grid ``lr_grid``; ``index`` runs
    over the references' patches in order (``patch_counts`` each, see
    :func:`extracter.search.transfer.split_index`); ``ref_grids``: each reference's patch grid;
    ``padded_lr_hw``/``padded_ref_hw``: the sizes after padding to the network's multiples; ``plan``: the memory plan.
    """

    sr: torch.Tensor
    scores: torch.Tensor
    index: torch.Tensor
    lr_grid: Tuple[int, int]
    ref_grids: List[Tuple[int, int]]
    patch_counts: List[int]
    padded_lr_hw: Tuple[int, int]
    padded_ref_hw: List[Tuple[int, int]]
    plan: Optional[MemoryPlan]
    search_used: str = ''  # one line: the search that ran (and why, for 'auto')
    spec: Optional[SearchSpec] = None  # the search that ran


def _as_images(x: Optional[Images], n: int, name: str) -> List[Optional[torch.Tensor]]:
    if x is None:
        return [None] * n
    items = [x] if isinstance(x, torch.Tensor) else list(x)
    if len(items) != n:
        raise ValueError(f'{name}: {len(items)} given for {n} reference(s)')
    return items


def equivalent_ref_hw(sizes: Sequence[Tuple[int, int]], multiple: int) -> Tuple[int, int]:
    """One reference size with (about) the pixels and patches of several, for the memory planner: the widest width,
    and the height that holds their summed area."""
    width = max(w for _, w in sizes)
    area = sum(h * w for h, w in sizes)
    return max(multiple, math.ceil(area / width / multiple) * multiple), width


def _tile_request(tile: Optional[Mapping[str, int]], max_memory) -> Tuple[Optional[Tuple[int, int]], Optional[int]]:
    """(tile_size, tile_pad) asked for, or None; and the pad for the planner's own tiles (None: not asked)."""
    if tile is None:
        return None, None
    if not isinstance(tile, Mapping) or ('tile_size' not in tile and max_memory is None):
        raise ValueError(f"tile must be a mapping with 'tile_size' (and 'tile_pad'), got {tile!r}")
    if 'tile_size' in tile:
        return (int(tile['tile_size']), int(tile.get('tile_pad', 0))), None
    return None, int(tile.get('tile_pad', DEFAULT_TILE_PAD))  # with a budget: the planner picks the tile size


@dataclass
class _Padded:
    """The inputs padded to the call's size multiples."""

    lr: torch.Tensor
    lr_up: Optional[torch.Tensor]
    refs: List[torch.Tensor]
    refs_du: List[Optional[torch.Tensor]]

    @property
    def lr_hw(self) -> Tuple[int, int]:
        return tuple(self.lr.shape[-2:])

    @property
    def ref_sizes(self) -> List[Tuple[int, int]]:
        return [tuple(r.shape[-2:]) for r in self.refs]


def _pad_inputs(lr, lr_up, refs, refs_du, multiples: Tuple[int, int], pad_mode: str) -> _Padded:
    lr_mult, ref_mult = multiples
    return _Padded(pad_to_multiple(lr, lr_mult, pad_mode)[0],
                   None if lr_up is None else pad_to_multiple(lr_up, SCALE * lr_mult, pad_mode)[0],
                   [pad_to_multiple(r, ref_mult, pad_mode)[0] for r in refs],
                   [None if d is None else pad_to_multiple(d, ref_mult, pad_mode)[0] for d in refs_du])


@dataclass
class _Cached:
    """A call's view of a :class:`ReferenceCache`: the cache, the padded references' content ids and the bytes this
    call lets it hold (None: its cap)."""

    cache: ReferenceCache
    ids: List[str]
    limit: Optional[int]

    def keys(self, i: int, spec: SearchSpec, encode: Callable[[], ReferenceFeatures]):
        key = (self.ids[i], spec.search_method.prepare_key(spec))
        return self.cache.get('keys', key, encode, self.limit)

    def textures(self, i: int, lv1_storage: str, spec: SearchSpec, encode: Callable[[], ReferenceFeatures]):
        key = (self.ids[i], lv1_storage, spec.search_method.transfer)
        return self.cache.get('textures', key, encode, self.limit)


def pad_to_common_size(lr: torch.Tensor, lr_up: Optional[torch.Tensor], ref: torch.Tensor
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """For a network that needs the reference at the output's size (``descriptor.reference_size == 'output'``:
    C2-Matching): the LR (and ``lr_up``) and the reference zero-padded at the bottom/right to one common output size,
    the larger of 4x the LR and the reference on each side, rounded up to a multiple of 4. The original test set pads
    the HR and the reference so (and makes the LR from the padded HR); the result is cropped back to 4x the LR."""
    h, w = lr.shape[-2:]
    rh, rw = ref.shape[-2:]
    th = -(-max(SCALE * h, rh) // SCALE) * SCALE
    tw = -(-max(SCALE * w, rw) // SCALE) * SCALE
    lr = F.pad(lr, (0, tw // SCALE - w, 0, th // SCALE - h))
    lr_up = None if lr_up is None else F.pad(lr_up, (0, tw - SCALE * w, 0, th - SCALE * h))
    return lr, lr_up, F.pad(ref, (0, tw - rw, 0, th - rh))


def _own_search_inputs(net: RefSRNet, lr, lr_up, refs, search_mode: Optional[str]):
    """The inputs of a network whose search is its own stage, with one reference at the output's size; refuses
    what does not apply to it (a search method, several references)."""
    name = type(net).__name__
    if search_mode not in (None, 'auto'):
        raise ValueError(f'search mode {search_mode!r} does not apply to {name}: its correspondence search is its '
                         'own stage (leave the search mode unset or auto)')
    if len(refs) != 1:
        raise ValueError(f'{name} takes one reference per image (its restoration reads the reference at the '
                         f'output\'s own positions), got {len(refs)}')
    lr, lr_up, ref = pad_to_common_size(lr, lr_up, refs[0])
    return lr, lr_up, [ref]


def _search_phase(net: RefSRNet, spec: SearchSpec, inp: _Padded, tile_size: Optional[int],
                  stage: Optional[Callable[[str], None]], cached: Optional[_Cached] = None):
    """Phases 1-2: the search keys of every reference (VGG-19 in tiles: one tile's transient memory; from the
    cache when it has them), then the whole LR searched once (its query features tile by tile when tiled); the keys
    are dropped on return (unless the cache keeps them). Returns the search result, the references' patch grids and
    their patch counts."""
    keys: List[ReferenceFeatures] = []
    for i, (r, du) in enumerate(zip(inp.refs, inp.refs_du), start=1):
        net.check_inputs(inp.lr, r, None, du, spec)
        if stage is not None:
            stage(f'encoding reference {i}/{len(inp.refs)}')
        encode = partial(net.encode_keys, r, du, ENCODE_TILE, spec)
        keys.append(encode() if cached is None else cached.keys(i - 1, spec, encode))
    inp.refs_du = [None] * len(inp.refs)
    lr_up = make_lr_up(inp.lr) if inp.lr_up is None else inp.lr_up
    inp.lr_up = None
    if stage is not None:
        stage('search')
    lr_feat = net.search_features(lr_up) if tile_size is None else search_features_tiled(net, lr_up, tile_size,
                                                                                          spec=spec)
    del lr_up
    search = net.search(lr_feat, keys, spec)
    sizes = [k.search.shape[-2:] for k in keys]
    return search, [spec.grid_size(*hw) for hw in sizes], [spec.patch_count(*hw) for hw in sizes]


def _main_phase(net: RefSRNet, spec: SearchSpec, inp: _Padded, search, tile_t: Optional[Tuple[int, int]],
                lv1_storage: str, progress: Optional[Callable[[int, int], None]],
                stage: Optional[Callable[[str], None]] = None, cached: Optional[_Cached] = None) -> torch.Tensor:
    """Phases 3-4: the textures of every reference, only now (they never share memory with the keys and the
    search, unless the cache keeps them; channels-last on CPU, the layout the transfer reads fastest), then the
    main network, untiled or tile by tile, on the search result; ``stage`` is called as the textures and the main
    network start."""
    if stage is not None:
        stage('textures')
    encoded = []
    for i, r in enumerate(inp.refs):
        encode = partial(net.encode_texture_features, r, ENCODE_TILE, lv1_storage, spec)
        encoded.append(encode() if cached is None else cached.textures(i, lv1_storage, spec, encode))
    if stage is not None:
        stage('main network')
    if tile_t is None:
        return net.forward_features(inp.lr, None, encoded, search=search, spec=spec)
    return tiled_forward(net, inp.lr, None, encoded, tile_t[0], tile_t[1], progress=progress, search=search,
                         spec=spec)


def _keys_for_reuse(spec: SearchSpec, cache: ReferenceCache, ref_sizes: List[Tuple[int, int]]) -> SearchSpec:
    """Without a budget, with a cache: ``spec`` with ``cache_keys`` where its method caches keys and the cache's cap
    holds all it would keep of these references (their keys, key blocks and textures), so that the normalised key
    blocks are prepared once per reference and reused by every LR image (bit-identical; under a budget the plan
    decides, :func:`~extracter.inference.memory_plan.plan_memory`'s ``reuse``)."""
    if not spec.search_method.caches_keys or spec.cache_keys:
        return spec
    cached = spec.replace(cache_keys=True)
    return cached if cached_reference_bytes(cached, ref_sizes) <= cache.max_bytes else spec


def _use_cache(cache: ReferenceCache, net: RefSRNet, inp: _Padded, plan: Optional[MemoryPlan]) -> _Cached:
    """The call's view of ``cache``: the references' content ids (before phase 1 drops the down-up-sampled ones)
    and, under a budget, what the plan leaves (``budget - estimate``: the cache is trimmed to it now, before the
    work, so that what it frees serves this call)."""
    cache.bind(net)
    ids = [cache.reference_id(r, du) for r, du in zip(inp.refs, inp.refs_du)]
    limit = None if plan is None else max(0, plan.budget - plan.estimate)
    cache.trim(limit)
    return _Cached(cache, ids, limit)


def run_refsr(net: RefSRNet, lr: torch.Tensor, ref: Images, lr_up: Optional[torch.Tensor] = None,
              ref_downup: Optional[Images] = None, tile: Optional[Mapping[str, int]] = None,
              max_memory=None, search_mode: Optional[str] = None, chunk_size: Optional[int] = None,
              key_chunk_size: Optional[int] = None, search_geometry: Optional[Tuple[int, int, int]] = None,
              approximate: Optional[ApproximateSettings] = None,
              pad_mode: str = 'reflect', return_plan: bool = False, return_aux: bool = False,
              progress: Optional[Callable[[int, int], None]] = None, stage: Optional[Callable[[str], None]] = None,
              search_spec: Optional[SearchSpec] = None, reference_cache: Optional[ReferenceCache] = None):
    """Super-resolve ``lr`` [N,3,h,w] with one reference ``ref`` [N,3,H,W] or several (a list, any sizes), all in
    [0, 1]; returns SR [N,3,4h,4w] in [0, 1].

    Args:
        net: an Extracter or TTSR network (never changed: the search settings of this call pass down with it, so
            several threads may share one network; call ``net.eval()`` yourself).
        lr_up, ref_downup: the dataset-made upsampled LR / down-up-sampled reference(s) (made here if None).
        tile: ``{'tile_size': int, 'tile_pad': int}`` in LR pixels, or None (untiled unless ``max_memory`` needs
            tiles). With ``max_memory``, ``{'tile_pad': int}`` alone lets the planner pick the tile size.
        max_memory: working-memory budget (``'6G'``, bytes); chooses chunk and tile sizes. Raises
            :class:`~extracter.inference.memory_plan.MemoryBudgetError` when the request cannot fit.
        search_mode: a search method (:func:`extracter.search.method_names`: ``'dense'`` (faithful), ``'chunked'``
            (same result, bounded memory), ``'approximate'`` (sub-quadratic, exact relevances of the chosen
            patches), ...) or ``'auto'`` (approximate where the exact search is expensive, see
            :mod:`extracter.search.choice`, else as None); None: the net's own, except that a budget implies
            ``'chunked'``.
        approximate: the approximate search's :class:`ApproximateSettings` (None: the net's, by default the
            defaults).
        chunk_size, key_chunk_size: search block sizes (the planner's choice when ``max_memory`` is set).
        search_geometry: (window, stride, padding) for this call, e.g. (12, 4, 4) for large images (EXTRACTER).
        search_spec: a whole :class:`~extracter.search.spec.SearchSpec` to start from instead of the net's default
            (the arguments above still apply on top of it).
        pad_mode: how the inputs are padded to the required multiples (``'reflect'`` or ``'replicate'``).
        return_plan: also return the :class:`MemoryPlan` (None without ``max_memory``): ``(sr, plan)``.
        return_aux: return a :class:`RefSRResult` (SR, the search result, grids, plan, the spec) instead.
        progress: ``progress(done, total)`` after each tile.
        stage: ``stage(text)`` as each stage starts: ``'encoding reference i/n'`` (its search keys), ``'search'``,
            ``'textures'`` (the references' textures, encoded after the search) and ``'main network'`` (untiled,
            or tile by tile: each tile then reported by ``progress``). Each stage's time can so be measured (the
            web page's time-left estimate); a callback may raise to stop the run (the page's Cancel).
        reference_cache: a :class:`~extracter.inference.reference_cache.ReferenceCache` of this run (one folder, one
            video): the references' encodings are looked up there and kept for the next LR image (bit-identical to
            encoding again), with the chunked search's normalised key blocks where they fit (``cache_keys``: the
            cache's cap, or with ``max_memory`` the plan); with ``max_memory`` it holds at most what the memory plan
            leaves. None: encode every reference for this call only.
    Several references: the top-k over the union of all their patches (each reference encoded on its own), exact in
    every exact search method, with tiles and budgets. Runs under ``torch.no_grad()``.
    """
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    if not refs:
        raise ValueError('run_refsr needs at least one reference')
    refs_du = _as_images(ref_downup, len(refs), 'ref_downup')
    for r, du in zip(refs, refs_du):
        check_image_pair(lr, r, lr_up, du)
    h, w = lr.shape[-2:]
    own_search = descriptor_of(net).own_search
    if own_search:
        lr, lr_up, refs = _own_search_inputs(net, lr, lr_up, refs, search_mode)
        refs_du = [None]
    tile_t, plan_pad = _tile_request(tile, max_memory)
    spec = net.search_spec(search_spec, geometry=search_geometry, chunk_size=chunk_size,
                           key_chunk_size=key_chunk_size, approximate=approximate)
    with torch.no_grad():
        multiples = net.size_multiples(spec)
        if tile_t is not None:
            tile_t = round_tile(tile_t[0], tile_pad_floor(net, tile_t[1]), multiples[0])
        # the planner's pad: the one asked for (raised to the floor with a warning), else its default raised silently
        plan_pad = max(DEFAULT_TILE_PAD if plan_pad is None else tile_pad_floor(net, plan_pad), net.min_tile_pad)
        inp = _pad_inputs(lr, lr_up, refs, refs_du, multiples, pad_mode)
        del refs_du
        # a whole spec given asks for its method (a budget then keeps it), as search_mode would
        requested = search_spec.method if search_mode is None and search_spec is not None else search_mode
        if own_search:
            search_used = f'{type(net).__name__}: its own correspondence search'
        else:
            choice = choose_search(spec, requested, inp.lr_hw, inp.ref_sizes, budgeted=max_memory is not None)
            spec, search_used = choice.spec, choice.describe()
        plan: Optional[MemoryPlan] = None
        if max_memory is not None and own_search:
            plan = plan_own_search(net, inp.lr_hw, inp.ref_sizes[0], max_memory, tile=tile_t, tile_pad=plan_pad)
            spec = spec.replace(key_chunk_size=plan.key_chunk_size)
            if plan.tile_size is not None:
                tile_t = (plan.tile_size, plan.tile_pad)
        elif max_memory is not None:
            sizes = inp.ref_sizes
            plan_ref_hw = sizes[0] if len(sizes) == 1 else equivalent_ref_hw(sizes, multiples[1])
            plan = plan_memory(net, inp.lr_hw, plan_ref_hw, max_memory, tile=tile_t, search_mode=spec.method,
                               tile_pad=plan_pad, n_refs=len(sizes), search=spec,
                               reuse=reference_cache is not None and reference_cache.max_bytes > 0)
            spec = plan.search_spec(spec)
            if plan.tile_size is not None:
                tile_t = (plan.tile_size, plan.tile_pad)
        elif reference_cache is not None and not own_search:
            spec = _keys_for_reuse(spec, reference_cache, inp.ref_sizes)
        cached = None if reference_cache is None else _use_cache(reference_cache, net, inp, plan)
        search, ref_grids, patch_counts = _search_phase(net, spec, inp, None if tile_t is None else tile_t[0], stage,
                                                        cached)
        sr = _main_phase(net, spec, inp, search, tile_t, 'stored' if plan is None else plan.lv1_storage, progress,
                         stage, cached)
        sr = sr[:, :, :SCALE * h, :SCALE * w]
    if return_aux:
        return RefSRResult(sr=sr, scores=search[0], index=search[1], lr_grid=spec.grid_size(*inp.lr_hw),
                           ref_grids=ref_grids, patch_counts=patch_counts, padded_lr_hw=inp.lr_hw,
                           padded_ref_hw=inp.ref_sizes, plan=plan, search_used=search_used, spec=spec)
    return (sr, plan) if return_plan else sr


def run_sisr(net: torch.nn.Module, lr: torch.Tensor, tile: Optional[Mapping[str, int]] = None,
             pad_mode: str = 'reflect', progress: Optional[Callable[[int, int], None]] = None,
             **ignored: Any) -> torch.Tensor:
    """Single-image SR (DRCT) at any size, the original's test-time behaviour: reflect-pad to the network's size
    multiple (the window), run untiled or tile by tile (``tile: {tile_size, tile_pad}``, LR pixels, rounded to that
    multiple, through the same tile loop as RefSR), crop back to ``scale`` x the input. Returns the output clamped
    to [0, 1] (as BasicSR's tensor2img does on saving). ``ignored``: RefSR-only options (``max_memory``, search)
    are accepted and have no effect."""
    if lr.dim() != 4:
        raise ValueError(f'lr must be a batch [N, C, H, W], got shape {tuple(lr.shape)}')
    h, w = lr.shape[-2:]
    scale = net.scale_of()
    multiple = net.size_multiples()[0]
    with torch.no_grad():
        lr_p, _ = pad_to_multiple(lr, multiple, pad_mode)
        if tile is None or tile.get('tile_size') is None:
            sr = net(lr_p)
        else:
            size, pad = round_tile(int(tile['tile_size']), tile_pad_floor(net, int(tile.get('tile_pad', 0))), multiple)
            sr = tile_loop(lr_p, scale, size, pad, multiple,
                           lambda y0, y1, x0, x1: net(lr_p[:, :, y0:y1, x0:x1]), progress)
    return sr[:, :, :scale * h, :scale * w].clamp_(0, 1)


def refsr_kwargs_from_options(opt: Optional[Mapping[str, Any]], prefix: str = '',
                              ignore: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """:func:`run_refsr` keyword arguments from the inference keys of options (``tile``, ``max_memory``, ``search``;
    see :mod:`extracter.inference.options`)."""
    return InferenceOptions.from_mapping(opt, prefix, ignore).run_kwargs()
