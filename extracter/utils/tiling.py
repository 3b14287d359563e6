"""Tiled RefSR inference: the LR is cut into overlapping tiles, every tile searches the whole (once encoded)
reference, and the tiles' centres are stitched.

``tile: {tile_size, tile_pad}`` has the meaning it has in BasicSR-based SISR repositories, in LR pixels: the LR is
split into tiles of ``tile_size`` x ``tile_size`` (the last row/column may be smaller), each processed with
``tile_pad`` extra LR pixels of context on every side (where the image has them), and only the tile's own area of
the x4 output is kept. Both are rounded to multiples of the search stride (the LR multiple of
``net.required_multiples()``), so that every tile's search patches sit on the untiled patch grid.
"""

from typing import Callable, List, Optional, Tuple

import torch

from extracter.archs.refsr_base import SCALE, ReferenceFeatures, RefSRNet

Span = Tuple[int, int, int, int]  # (out_start, out_stop, in_start, in_stop) along one axis, LR pixels


def round_tile(tile_size: int, tile_pad: int, multiple: int) -> Tuple[int, int]:
    """Tile size rounded down and padding rounded up to multiples of ``multiple`` (tile size at least one)."""
    if tile_size < 1 or tile_pad < 0:
        raise ValueError(f'tile needs tile_size >= 1 and tile_pad >= 0, got tile_size={tile_size} '
                         f'tile_pad={tile_pad}')
    size = max(multiple, tile_size // multiple * multiple)
    pad = -(-tile_pad // multiple) * multiple
    return size, pad


def tile_spans(length: int, tile_size: int, tile_pad: int, multiple: int = 1) -> List[Span]:
    """Tiles along one axis of ``length`` LR pixels (a multiple of ``multiple``)."""
    if length % multiple:
        raise ValueError(f'length {length} is not a multiple of {multiple}; pad the image first')
    size, pad = round_tile(tile_size, tile_pad, multiple)
    return [(o0, min(o0 + size, length), max(0, o0 - pad), min(length, o0 + size + pad))
            for o0 in range(0, length, size)]


def tiled_forward(net: RefSRNet, lr: torch.Tensor, lr_up: torch.Tensor, ref_feats: ReferenceFeatures,
                  tile_size: int, tile_pad: int,
                  progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """SR [N,3,4h,4w] of ``lr`` [N,3,h,w] tile by tile; ``lr`` must already have the net's LR multiple and
    ``lr_up`` is the upsampled whole LR (tiles crop it, so its borders are the untiled ones). ``progress(done,
    total)`` is called after each tile."""
    n, _, h, w = lr.shape
    multiple = net.required_multiples()[0]
    spans_y = tile_spans(h, tile_size, tile_pad, multiple)
    spans_x = tile_spans(w, tile_size, tile_pad, multiple)
    out = lr.new_empty(n, 3, SCALE * h, SCALE * w)
    total, done = len(spans_y) * len(spans_x), 0
    for y0, y1, iy0, iy1 in spans_y:
        for x0, x1, ix0, ix1 in spans_x:
            tile_sr = net.forward_features(
                lr[:, :, iy0:iy1, ix0:ix1],
                lr_up[:, :, SCALE * iy0:SCALE * iy1, SCALE * ix0:SCALE * ix1], ref_feats)
            out[:, :, SCALE * y0:SCALE * y1, SCALE * x0:SCALE * x1] = tile_sr[
                :, :, SCALE * (y0 - iy0):SCALE * (y1 - iy0), SCALE * (x0 - ix0):SCALE * (x1 - ix0)]
            del tile_sr
            done += 1
            if progress is not None:
                progress(done, total)
    return out
