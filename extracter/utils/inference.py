"""One entry point for RefSR inference at any size: :func:`run_refsr`.

It pads the inputs to ``net.required_multiples()`` (and crops the result back), optionally switches the search
geometry (EXTRACTER's dynamic window/stride) and the search mode for this call only, plans chunk and tile sizes
for a memory budget, encodes the reference once, and runs untiled or tiled (:mod:`extracter.utils.tiling`).
The validation/test step and the inference scripts call it; :func:`refsr_kwargs_from_options` reads its
arguments from YAML options.
"""

import contextlib
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from extracter.archs.refsr_base import SCALE, RefSRNet, check_image_pair, make_lr_up
from extracter.utils.memory_plan import DEFAULT_TILE_PAD, MemoryPlan, parse_memory, plan_memory
from extracter.utils.tiling import round_tile, tiled_forward

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
                    geometry: Optional[Tuple[int, int, int]] = None) -> Iterator[None]:
    """Temporarily set the search mode/chunking and geometry of ``net``; restored on exit."""
    st = net.search_transfer
    saved = (st.mode, st.chunk_size, st.key_chunk_size, st.cache_keys, (st.window, st.stride, st.padding))
    try:
        if geometry is not None:
            if not hasattr(net, 'set_search_geometry'):
                raise ValueError(f'{type(net).__name__} has a fixed search geometry; search_geometry applies to '
                                 'Extracter only')
            net.set_search_geometry(*geometry)
        st.set_chunking(search_mode, chunk_size, key_chunk_size, cache_keys)
        yield
    finally:
        st.set_chunking(*saved[:4])
        st.set_geometry(*saved[4])


def run_refsr(net: RefSRNet, lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor] = None,
              ref_downup: Optional[torch.Tensor] = None, tile: Optional[Mapping[str, int]] = None,
              max_memory=None, search_mode: Optional[str] = None, chunk_size: Optional[int] = None,
              key_chunk_size: Optional[int] = None, search_geometry: Optional[Tuple[int, int, int]] = None,
              pad_mode: str = 'reflect', return_plan: bool = False, progress=None):
    """Super-resolve ``lr`` [N,3,h,w] with ``ref`` [N,3,H,W] (both in [0, 1]); returns SR [N,3,4h,4w] in [0, 1].

    Args:
        net: an Extracter or TTSR network (its mode is not changed; call ``net.eval()`` yourself).
        lr_up, ref_downup: the dataset-made upsampled LR / down-up-sampled reference (made here if None).
        tile: ``{'tile_size': int, 'tile_pad': int}`` in LR pixels, or None (untiled unless ``max_memory`` needs
            tiles). With ``max_memory``, ``{'tile_pad': int}`` alone lets the planner pick the tile size.
        max_memory: working-memory budget (``'6G'``, bytes); chooses chunked search, chunk and tile sizes. Raises
            :class:`~extracter.utils.memory_plan.MemoryBudgetError` when the request cannot fit.
        search_mode: ``'dense'`` (faithful) or ``'chunked'``; None keeps the net's own, except that a budget
            implies ``'chunked'`` unless ``'dense'`` is asked for.
        chunk_size, key_chunk_size: chunked-search block sizes (the planner's choice when ``max_memory`` is set).
        search_geometry: (window, stride, padding) for this call, e.g. (12, 4, 4) for large images (EXTRACTER).
        pad_mode: how the inputs are padded to the required multiples (``'reflect'`` or ``'replicate'``).
        return_plan: also return the :class:`MemoryPlan` (None without ``max_memory``).
        progress: ``progress(done, total)`` after each tile.
    Runs under ``torch.no_grad()``; the net's settings are restored afterwards.
    """
    check_image_pair(lr, ref, lr_up, ref_downup)
    h, w = lr.shape[-2:]
    tile_t, plan_pad = None, DEFAULT_TILE_PAD
    if tile is not None:
        if not isinstance(tile, Mapping) or ('tile_size' not in tile and max_memory is None):
            raise ValueError(f"tile must be a mapping with 'tile_size' (and 'tile_pad'), got {tile!r}")
        if 'tile_size' in tile:
            tile_t = (int(tile['tile_size']), int(tile.get('tile_pad', 0)))
        else:  # with a budget: the planner picks the tile size, with this context
            plan_pad = int(tile.get('tile_pad', DEFAULT_TILE_PAD))
    if max_memory is not None and search_mode is None:
        search_mode = 'chunked'
    with torch.no_grad(), search_settings(net, search_mode, chunk_size, key_chunk_size, geometry=search_geometry):
        lr_mult, ref_mult = net.required_multiples()
        if tile_t is not None:
            tile_t = round_tile(*tile_t, lr_mult)
        lr_p, _ = pad_to_multiple(lr, lr_mult, pad_mode)
        ref_p, _ = pad_to_multiple(ref, ref_mult, pad_mode)
        if lr_up is not None:
            lr_up = pad_to_multiple(lr_up, SCALE * lr_mult, pad_mode)[0]
        if ref_downup is not None:
            ref_downup = pad_to_multiple(ref_downup, ref_mult, pad_mode)[0]
        plan: Optional[MemoryPlan] = None
        if max_memory is not None:
            plan = plan_memory(net, tuple(lr_p.shape[-2:]), tuple(ref_p.shape[-2:]), max_memory, tile=tile_t,
                               search_mode=net.search_transfer.mode, tile_pad=plan_pad)
            net.search_transfer.set_chunking(plan.search_mode, plan.chunk_size, plan.key_chunk_size)
            if plan.tile_size is not None:
                tile_t = (plan.tile_size, plan.tile_pad)
        net.check_inputs(lr_p, ref_p, None, ref_downup)
        ref_feats = net.encode_reference(ref_p, ref_downup)
        del ref_downup
        st = net.search_transfer
        if st.mode == 'chunked' and plan is not None and plan.cache_keys:
            ref_feats.key_blocks = st.prepare_keys(ref_feats.search)
        if lr_up is None:
            lr_up = make_lr_up(lr_p)
        if tile_t is None:
            sr = net.forward_features(lr_p, lr_up, ref_feats)
        else:
            sr = tiled_forward(net, lr_p, lr_up, ref_feats, tile_t[0], tile_t[1], progress=progress)
        sr = sr[:, :, :SCALE * h, :SCALE * w]
    return (sr, plan) if return_plan else sr


def refsr_kwargs_from_options(opt: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """:func:`run_refsr` keyword arguments from options (the test/val section, or the top level)::

        tile:                  # optional, LR pixels
          tile_size: 128       # may be left out when max_memory is given (the planner picks it)
          tile_pad: 16
        max_memory: 6G         # optional working-memory budget
        search:                # optional
          mode: chunked        # dense | chunked
          chunk_size: 4096     # optional, LR patches per block
          key_chunk_size: 8192 # optional, reference patches per block
          window: 12           # optional geometry switch (EXTRACTER), all three together
          stride: 4
          padding: 4
    """
    opt = opt or {}
    kwargs: Dict[str, Any] = {}
    tile = opt.get('tile')
    if tile is not None:
        if not isinstance(tile, Mapping) or ('tile_size' not in tile and opt.get('max_memory') is None):
            raise ValueError(f"option 'tile' must be a mapping with 'tile_size' and 'tile_pad', got {tile!r}")
        unknown = set(tile) - {'tile_size', 'tile_pad'}
        if unknown:
            raise ValueError(f"option 'tile' has unknown keys {sorted(unknown)}")
        kwargs['tile'] = {key: int(value) for key, value in tile.items()}
    if opt.get('max_memory') is not None:
        parse_memory(opt['max_memory'])  # fail early on a malformed value
        kwargs['max_memory'] = opt['max_memory']
    search = opt.get('search')
    if search is not None:
        if not isinstance(search, Mapping):
            raise ValueError(f"option 'search' must be a mapping, got {search!r}")
        unknown = set(search) - {'mode', 'chunk_size', 'key_chunk_size', 'window', 'stride', 'padding'}
        if unknown:
            raise ValueError(f"option 'search' has unknown keys {sorted(unknown)}")
        if 'mode' in search:
            kwargs['search_mode'] = str(search['mode'])
        for key in ('chunk_size', 'key_chunk_size'):
            if key in search:
                kwargs[key] = int(search[key])
        geometry = [search.get(key) for key in ('window', 'stride', 'padding')]
        if any(g is not None for g in geometry):
            if any(g is None for g in geometry):
                raise ValueError("option 'search' needs window, stride and padding together for a geometry switch")
            kwargs['search_geometry'] = tuple(int(g) for g in geometry)
    return kwargs
