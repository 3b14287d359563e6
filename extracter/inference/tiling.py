"""Tiled RefSR inference: the LR is cut into overlapping tiles, every tile searches the whole (once encoded)
reference, and the tiles' centres are stitched.

``tile: {tile_size, tile_pad}`` has the meaning it has in BasicSR-based SISR repositories, in LR pixels: the LR is
split into tiles of ``tile_size`` x ``tile_size`` (the last row/column may be smaller), each processed with
``tile_pad`` extra LR pixels of context on every side (where the image has them), and only the tile's own area of
the x4 output is kept. Both are rounded to multiples of the search stride (the LR multiple of
``net.size_multiples(spec)``), so that every tile's search patches sit on the untiled patch grid.

The search itself is not tiled: it runs once for the whole LR (chunked, bounded memory), and each tile takes its
window of the result; see :func:`tiled_forward`.
"""

import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from extracter.archs.descriptor import descriptor_of
from extracter.archs.refsr_base import SCALE, ReferenceFeatures, RefSRNet, as_reference_list
from extracter.search import SearchSpec
from extracter.utils.input_warning import InputWarning

# LR pixels of context for the tiled VGG-19 pass: its receptive field up to relu3_1 is 24 upsampled-LR pixels
VGG_MARGIN = 8
Span = Tuple[int, int, int, int]  # (out_start, out_stop, in_start, in_stop) along one axis, LR pixels


def round_tile(tile_size: int, tile_pad: int, multiple: int) -> Tuple[int, int]:
    """Tile size rounded down and padding rounded up to multiples of ``multiple`` (tile size at least one)."""
    if tile_size < 1 or tile_pad < 0:
        raise ValueError(f'tile needs tile_size >= 1 and tile_pad >= 0, got tile_size={tile_size} '
                         f'tile_pad={tile_pad}')
    size = max(multiple, tile_size // multiple * multiple)
    pad = -(-tile_pad // multiple) * multiple
    return size, pad


def tile_pad_floor(net: torch.nn.Module, tile_pad: int) -> int:
    """``tile_pad`` raised to the network's floor (its descriptor's ``min_tile_pad``: below it the tiles' borders show
    in the result), with an :class:`~extracter.utils.input_warning.InputWarning` when raised."""
    floor = descriptor_of(net).min_tile_pad
    if tile_pad >= floor:
        return tile_pad
    warnings.warn(f'tile_pad {tile_pad} is below what {type(net).__name__} needs for tiles to match the untiled '
                  f'result; using tile_pad {floor} (the tile borders would show; see docs/large_images.md)',
                  InputWarning, stacklevel=3)
    return floor


def tile_spans(length: int, tile_size: int, tile_pad: int, multiple: int = 1) -> List[Span]:
    """Tiles along one axis of ``length`` LR pixels (a multiple of ``multiple``)."""
    if length % multiple:
        raise ValueError(f'length {length} is not a multiple of {multiple}; pad the image first')
    size, pad = round_tile(tile_size, tile_pad, multiple)
    return [(o0, min(o0 + size, length), max(0, o0 - pad), min(length, o0 + size + pad))
            for o0 in range(0, length, size)]


def search_features_tiled(net: RefSRNet, lr_up: torch.Tensor, tile_size: int,
                          margin: int = VGG_MARGIN, spec: Optional[SearchSpec] = None) -> torch.Tensor:
    """relu3_1 of the upsampled LR [N, 256, h, w] computed tile by tile (with ``margin`` LR pixels of context,
    more than VGG-19's receptive field up to relu3_1, so the result equals the untiled one); tiles on multiples of
    ``spec``'s stride (default: the network's)."""
    n, _, hu, wu = lr_up.shape
    h, w = hu // SCALE, wu // SCALE
    multiple = net.size_multiples(spec)[0]
    out = None
    for y0, y1, iy0, iy1 in tile_spans(h, tile_size, margin, multiple):
        for x0, x1, ix0, ix1 in tile_spans(w, tile_size, margin, multiple):
            feat = net.search_features(lr_up[:, :, SCALE * iy0:SCALE * iy1, SCALE * ix0:SCALE * ix1])
            if out is None:
                out = feat.new_empty(n, feat.size(1), h, w)
            out[:, :, y0:y1, x0:x1] = feat[:, :, y0 - iy0:y1 - iy0, x0 - ix0:x1 - ix0]
    return out


def tile_loop(lr: torch.Tensor, scale: int, tile_size: int, tile_pad: int, multiple: int,
              run_tile: Callable[[int, int, int, int], torch.Tensor],
              progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """The one tile loop (RefSR and single-image SR): ``run_tile(iy0, iy1, ix0, ix1)`` returns the x``scale`` output
    of the LR window [iy0:iy1, ix0:ix1] (the tile with its context); only the tile's own area is kept."""
    n, _, h, w = lr.shape
    spans_y = tile_spans(h, tile_size, tile_pad, multiple)
    spans_x = tile_spans(w, tile_size, tile_pad, multiple)
    out: Optional[torch.Tensor] = None
    total, done = len(spans_y) * len(spans_x), 0
    for y0, y1, iy0, iy1 in spans_y:
        for x0, x1, ix0, ix1 in spans_x:
            tile_sr = run_tile(iy0, iy1, ix0, ix1)
            if out is None:
                out = tile_sr.new_empty(n, tile_sr.size(1), scale * h, scale * w)
            out[:, :, scale * y0:scale * y1, scale * x0:scale * x1] = tile_sr[
                :, :, scale * (y0 - iy0):scale * (y1 - iy0), scale * (x0 - ix0):scale * (x1 - ix0)]
            del tile_sr
            done += 1
            if progress is not None:
                progress(done, total)
    return out


def tiled_forward(net: RefSRNet, lr: torch.Tensor, lr_up: torch.Tensor,
                  ref_feats: Union[ReferenceFeatures, Sequence[ReferenceFeatures]], tile_size: int, tile_pad: int,
                  progress: Optional[Callable[[int, int], None]] = None, return_search: bool = False,
                  search: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, spec: Optional[SearchSpec] = None):
    """SR [N,3,4h,4w] of ``lr`` [N,3,h,w] tile by tile against one or several encoded references; ``lr`` must
    already have the net's LR multiple and ``lr_up`` is the upsampled whole LR. ``progress(done, total)`` is called
    after each tile. ``return_search``: also return the whole LR's search result (scores, index). ``search``: that
    result, already computed (:func:`~extracter.inference.engine.run_refsr` searches before it encodes the
    textures); then ``lr_up`` is not used and the references need no search keys.

    The search runs once for the whole LR (its query features are computed tile by tile, exactly): every tile
    then uses the untiled search result for its patches, so only the main network sees tile borders, and no
    search work is repeated in the tiles' overlaps. Memory: the LR's relu3_1 (1 KiB per LR pixel) and the search
    result (top_k x 12 bytes per patch) for the whole LR, the rest per tile. ``spec``: the call's search (default:
    the network's).
    """
    n, _, h, w = lr.shape
    spec = net.search_spec(spec)
    s = spec.stride
    refs = as_reference_list(ref_feats)
    if search is None:
        search = net.search(search_features_tiled(net, lr_up, tile_size, spec=spec), refs, spec)
    flat_scores, flat_index = search
    top_k = flat_scores.size(1)
    gh, gw = spec.grid_size(h, w)
    scores = flat_scores.view(n, top_k, gh, gw)
    index = flat_index.view(n, top_k, gh, gw)

    # a network that reads the reference at the output's own positions is told where the tile is
    placed = descriptor_of(net).reference_size == 'output'

    def run_tile(iy0: int, iy1: int, ix0: int, ix1: int) -> torch.Tensor:
        # the tile's own patch grid is a window of the whole LR's (tile bounds are multiples of the stride)
        th, tw = spec.grid_size(iy1 - iy0, ix1 - ix0)
        py, px = iy0 // s, ix0 // s
        search = (scores[:, :, py:py + th, px:px + tw].reshape(n, top_k, -1),
                  index[:, :, py:py + th, px:px + tw].reshape(n, top_k, -1))
        where = {'origin': (iy0, ix0)} if placed else {}
        return net.forward_features(lr[:, :, iy0:iy1, ix0:ix1], None, refs, search=search, spec=spec, **where)

    out = tile_loop(lr, SCALE, tile_size, tile_pad, net.size_multiples(spec)[0], run_tile, progress)
    return (out, (flat_scores, flat_index)) if return_search else out
