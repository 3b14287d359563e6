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

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from extracter.archs.refsr_base import SCALE, ReferenceFeatures, RefSRNet, check_image_pair, make_lr_up
from extracter.archs.search_approximate import ApproximateSettings
from extracter.inference.memory_plan import DEFAULT_TILE_PAD, ENCODE_TILE, MemoryPlan, plan_memory
from extracter.inference.options import InferenceOptions
from extracter.inference.search_choice import choose_search
from extracter.inference.tiling import round_tile, search_features_tiled, tile_loop, tile_pad_floor, tiled_forward

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


@contextlib.contextmanager
def search_settings(net: RefSRNet, search_mode: Optional[str] = None, chunk_size: Optional[int] = None,
                    key_chunk_size: Optional[int] = None, cache_keys: Optional[bool] = None,
                    geometry: Optional[Tuple[int, int, int]] = None,
                    approximate: Optional[ApproximateSettings] = None) -> Iterator[None]:
    """Temporarily set the search mode/chunking, approximate settings and geometry of ``net``; restored on exit."""
    st = net.search_transfer
    saved = (st.mode, st.chunk_size, st.key_chunk_size, st.cache_keys, st.approximate,
             (st.window, st.stride, st.padding))
    try:
        if geometry is not None:
            net.set_search_geometry(*geometry)
        st.set_chunking(search_mode, chunk_size, key_chunk_size, cache_keys, approximate)
        yield
    finally:
        st.set_chunking(*saved[:5])
        st.set_geometry(*saved[5])


@dataclass
class RefSRResult:
    """What :func:`run_refsr` computed, besides the SR (``return_aux=True``).

    ``scores``/``index``: the search result [N, top_k, L] on the padded LR's patch grid ``lr_grid``; ``index`` runs
    over the references' patches in order (``patch_counts`` each, see
    :func:`extracter.archs.search_transfer.split_index`); ``ref_grids``: each reference's patch grid;
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


def run_refsr(net: RefSRNet, lr: torch.Tensor, ref: Images, lr_up: Optional[torch.Tensor] = None,  # noqa: C901
              ref_downup: Optional[Images] = None, tile: Optional[Mapping[str, int]] = None,
              max_memory=None, search_mode: Optional[str] = None, chunk_size: Optional[int] = None,
              key_chunk_size: Optional[int] = None, search_geometry: Optional[Tuple[int, int, int]] = None,
              approximate: Optional[ApproximateSettings] = None,
              pad_mode: str = 'reflect', return_plan: bool = False, return_aux: bool = False,
              progress: Optional[Callable[[int, int], None]] = None, stage: Optional[Callable[[str], None]] = None):
    """Super-resolve ``lr`` [N,3,h,w] with one reference ``ref`` [N,3,H,W] or several (a list, any sizes), all in
    [0, 1]; returns SR [N,3,4h,4w] in [0, 1].

    Args:
        net: an Extracter or TTSR network (its mode is not changed; call ``net.eval()`` yourself).
        lr_up, ref_downup: the dataset-made upsampled LR / down-up-sampled reference(s) (made here if None).
        tile: ``{'tile_size': int, 'tile_pad': int}`` in LR pixels, or None (untiled unless ``max_memory`` needs
            tiles). With ``max_memory``, ``{'tile_pad': int}`` alone lets the planner pick the tile size.
        max_memory: working-memory budget (``'6G'``, bytes); chooses chunked search, chunk and tile sizes. Raises
            :class:`~extracter.inference.memory_plan.MemoryBudgetError` when the request cannot fit.
        search_mode: ``'dense'`` (faithful), ``'chunked'`` (same result, bounded memory), ``'approximate'``
            (sub-quadratic, exact relevances of the chosen patches) or ``'auto'`` (approximate where the exact
            search is expensive, see :mod:`extracter.inference.search_choice`, else as None); None keeps the net's
            own, except that a budget implies ``'chunked'`` unless ``'dense'`` is asked for.
        approximate: the approximate search's :class:`ApproximateSettings` (None: the net's, by default the
            defaults).
        chunk_size, key_chunk_size: chunked-search block sizes (the planner's choice when ``max_memory`` is set).
        search_geometry: (window, stride, padding) for this call, e.g. (12, 4, 4) for large images (EXTRACTER).
        pad_mode: how the inputs are padded to the required multiples (``'reflect'`` or ``'replicate'``).
        return_plan: also return the :class:`MemoryPlan` (None without ``max_memory``): ``(sr, plan)``.
        return_aux: return a :class:`RefSRResult` (SR, the search result, grids, plan) instead.
        progress: ``progress(done, total)`` after each tile.
        stage: ``stage(text)`` as each stage starts: ``'encoding reference i/n'`` (its search keys), then
            ``'search'`` (the textures are encoded after the search; tiles follow, reported by ``progress``) or,
            untiled, ``'search and main network'``.
    Several references: the top-k over the union of all their patches (each reference encoded on its own), exact in
    every search mode, with tiles and budgets. Runs under ``torch.no_grad()``; the net's settings are restored.
    """
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    if not refs:
        raise ValueError('run_refsr needs at least one reference')
    refs_du = _as_images(ref_downup, len(refs), 'ref_downup')
    for r, du in zip(refs, refs_du):
        check_image_pair(lr, r, lr_up, du)
    h, w = lr.shape[-2:]
    tile_t, plan_pad = None, DEFAULT_TILE_PAD
    if tile is not None:
        if not isinstance(tile, Mapping) or ('tile_size' not in tile and max_memory is None):
            raise ValueError(f"tile must be a mapping with 'tile_size' (and 'tile_pad'), got {tile!r}")
        if 'tile_size' in tile:
            tile_t = (int(tile['tile_size']), int(tile.get('tile_pad', 0)))
        else:  # with a budget: the planner picks the tile size, with this context
            plan_pad = int(tile.get('tile_pad', DEFAULT_TILE_PAD))
    requested = search_mode
    if search_mode == 'auto':
        search_mode = None  # resolved once the padded sizes are known
    elif max_memory is not None and search_mode is None:
        search_mode = 'chunked'
    with torch.no_grad(), search_settings(net, search_mode, chunk_size, key_chunk_size, geometry=search_geometry,
                                          approximate=approximate):
        lr_mult, ref_mult = net.size_multiples()
        if tile_t is not None:
            tile_t = round_tile(tile_t[0], tile_pad_floor(net, tile_t[1]), lr_mult)
        if tile is not None and tile_t is None:  # the planner picks the tile size, with the pad asked for
            plan_pad = tile_pad_floor(net, plan_pad)
        plan_pad = max(plan_pad, net.min_tile_pad)  # its default pad is raised silently
        lr_p, _ = pad_to_multiple(lr, lr_mult, pad_mode)
        refs_p = [pad_to_multiple(r, ref_mult, pad_mode)[0] for r in refs]
        refs_du = [None if d is None else pad_to_multiple(d, ref_mult, pad_mode)[0] for d in refs_du]
        if lr_up is not None:
            lr_up = pad_to_multiple(lr_up, SCALE * lr_mult, pad_mode)[0]
        ref_sizes = [tuple(r.shape[-2:]) for r in refs_p]
        choice = choose_search(net.search_transfer, requested, tuple(lr_p.shape[-2:]), ref_sizes)
        if requested == 'auto':
            net.search_transfer.set_chunking(choice.mode or ('chunked' if max_memory is not None else None))
        plan: Optional[MemoryPlan] = None
        if max_memory is not None:
            plan_ref_hw = ref_sizes[0] if len(refs_p) == 1 else equivalent_ref_hw(ref_sizes, ref_mult)
            plan = plan_memory(net, tuple(lr_p.shape[-2:]), plan_ref_hw, max_memory, tile=tile_t,
                               search_mode=net.search_transfer.mode, tile_pad=plan_pad, n_refs=len(refs_p))
            net.search_transfer.set_chunking(plan.search_mode, plan.chunk_size, plan.key_chunk_size)
            if plan.tile_size is not None:
                tile_t = (plan.tile_size, plan.tile_pad)
        st = net.search_transfer
        lv1_storage = plan.lv1_storage if plan is not None else 'stored'
        # 1. the search keys of every reference (VGG-19 in tiles: one tile's transient memory)
        keys: List[torch.Tensor] = []
        key_blocks: List[Optional[List[torch.Tensor]]] = []
        for i, (r, du) in enumerate(zip(refs_p, refs_du), start=1):
            net.check_inputs(lr_p, r, None, du)
            if stage is not None:
                stage(f'encoding reference {i}/{len(refs_p)}')
            keys.append(net.encode_search_keys(r, du, ENCODE_TILE))
            cache = st.mode == 'chunked' and plan is not None and plan.cache_keys
            key_blocks.append(st.prepare_keys(keys[-1]) if cache else None)
        del refs_du
        if lr_up is None:
            lr_up = make_lr_up(lr_p)
        if stage is not None:
            stage('search and main network' if tile_t is None else 'search')
        # 2. the whole LR searched once (its query features tile by tile when tiled); the keys are then dropped
        lr_feat = net.search_features(lr_up) if tile_t is None else search_features_tiled(net, lr_up, tile_t[0])
        del lr_up
        search = st.search(lr_feat, keys, key_blocks)
        ref_grids = [st.grid_size(*k.shape[-2:]) for k in keys]
        patch_counts = st.patch_counts(keys)
        del lr_feat, keys, key_blocks
        # 3. the textures of every reference, only now: they never share memory with the keys and the search
        # (channels-last on CPU, the layout the transfer reads fastest: VGG-19 gives it; transfer_layout makes sure)
        encoded = [ReferenceFeatures(None, *map(st.transfer_layout, net.encode_textures(r, ENCODE_TILE, lv1_storage)))
                   for r in refs_p]
        # 4. the main network, untiled or tile by tile, on the search result
        if tile_t is None:
            sr = net.forward_features(lr_p, None, encoded, search=search)
        else:
            sr = tiled_forward(net, lr_p, None, encoded, tile_t[0], tile_t[1], progress=progress, search=search)
        del encoded
        sr = sr[:, :, :SCALE * h, :SCALE * w]
        if return_aux:
            return RefSRResult(sr=sr, scores=search[0], index=search[1], lr_grid=st.grid_size(*lr_p.shape[-2:]),
                               ref_grids=ref_grids, patch_counts=patch_counts, padded_lr_hw=tuple(lr_p.shape[-2:]),
                               padded_ref_hw=ref_sizes, plan=plan, search_used=choice.describe(st.mode))
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
