"""Texture transfer by a search result (TTSR Eq. 6, EXTRACTER Sec. 3): the reference patches at the searched indices,
taken from the relu3_1, relu2_1 and relu1_1 maps with windows k, 2k, 4k, strides s, 2s, 4s and paddings p, 2p, 4p,
folded back onto the LR grid, and the soft attention (Eq. 7) as the scores on the LR patch grid.

Overlap normalisation after folding:
- ``'exact'`` (EXTRACTER): divide by the per-pixel number of overlapping patches (the fold of ones), exact at
  the borders too.
- ``'ttsr'`` (TTSR): divide by the constant (k/s)^2 = 9, as the original TTSR code does; border pixels, covered by
  fewer patches, come out darker. Kept for parity with TTSR checkpoints.

How, by the search method's ``transfer`` (:class:`~extracter.search.base.SearchMethod`):
- ``'dense'`` (the original code's): every reference patch unfolded at every level for every rank, gathered,
  folded. Memory grows with the reference.
- ``'index'``: the selected patches gathered straight from the maps for bands of LR patch rows and folded band by
  band (:func:`fold_by_index`), or, for channels-last maps whose geometry is a multiple of the stride, block by block
  (:func:`fold_blocks`, bit-identical to the dense fold); a separable one-channel overlap divisor. Nothing of size
  (patches x patch length) is kept for the whole image.

Several references (our extension): the index runs over the references' patches in order (reference r's patch j is
``offset_r + j``, the offsets being the cumulated patch counts, :func:`split_index`), and every position's patch is
gathered from the reference it came from.

Every function takes the call's :class:`~extracter.search.spec.SearchSpec`; nothing is stored between calls.
"""

import itertools
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from extracter.search.patches import Scratch
from extracter.search.spec import SearchSpec

OVERLAP_NORMS = ('exact', 'ttsr')
Maps = Union[torch.Tensor, Sequence[torch.Tensor]]


class ComputedMap:
    """A reference texture map kept in a smaller form and recomputed where the transfer reads it (relu1_1 kept as
    its image: :class:`extracter.archs.vgg.Relu11FromImage`). Subclasses give ``shape``, ``device``, ``dtype``,
    ``like`` (a tensor of that dtype and device), :meth:`materialize` (the whole map, for the dense transfer) and
    :meth:`gather` (channels x pixels of one batch element)."""

    shape: torch.Size
    device: torch.device
    dtype: torch.dtype

    @property
    def like(self) -> torch.Tensor:
        raise NotImplementedError

    def size(self, dim: int) -> int:
        return self.shape[dim]

    def materialize(self) -> torch.Tensor:
        raise NotImplementedError

    def gather(self, b: int, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


TextureMap = Union[torch.Tensor, ComputedMap]


def as_list(x: Maps) -> List[torch.Tensor]:
    return [x] if isinstance(x, (torch.Tensor, ComputedMap)) else list(x)


def split_index(index: torch.Tensor, patch_counts: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(reference id, patch index within that reference) of a search index over several references whose patch
    grids hold ``patch_counts`` patches."""
    offsets = torch.tensor([0] + list(patch_counts), device=index.device).cumsum(0)
    ref_id = torch.searchsorted(offsets[1:], index.contiguous(), right=True)
    return ref_id, index - offsets[ref_id]


def _overlap_count_1d(n: int, k: int, s: int, p: int, like: torch.Tensor) -> torch.Tensor:
    """How many patches (window k, stride s, padding p) cover each of n positions along one axis."""
    g = (n + 2 * p - k) // s + 1
    ones = like.new_ones(1, k, g)
    return F.fold(ones, output_size=(1, n), kernel_size=(1, k), padding=(0, p), stride=(1, s)).view(n)


def tensor_like(value: TextureMap) -> torch.Tensor:
    """A tensor of the map's dtype and device (for new buffers)."""
    return value.like if isinstance(value, ComputedMap) else value


def by_index(spec: SearchSpec) -> bool:
    """Whether ``spec``'s method transfers by index (else the dense unfold-gather-fold)."""
    return spec.search_method.transfer == 'index'


def _gather_patches(value: TextureMap, b: int, local: torch.Tensor, grid_w: torch.Tensor, s: int,
                    dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The patches with grid indices ``local`` [Lb] of batch element ``b`` of one reference map (or relu1_1 kept as
    its image): [C, k*k, Lb] in unfold's (dy, dx) order; ``dy``/``dx`` [k*k, 1]: a patch's pixel offsets from its
    top-left corner, padding included. Pixels in the zero padding are zero."""
    h, w = value.shape[-2:]
    y = torch.div(local, grid_w, rounding_mode='floor').view(1, -1) * s + dy  # [k*k, Lb], rows of the unpadded map
    x = (local % grid_w).view(1, -1) * s + dx
    outside = ((y < 0) | (y >= h) | (x < 0) | (x >= w)).view(-1)
    y, x = y.clamp_(0, h - 1).view(-1), x.clamp_(0, w - 1).view(-1)  # [k*k*Lb], (dy, dx)-major
    if isinstance(value, ComputedMap):
        cols = value.gather(b, y, x)
    elif not value.is_contiguous() and value.is_contiguous(memory_format=torch.channels_last):  # no copy of the map
        cols = value[b].permute(1, 2, 0).reshape(-1, value.size(1)).index_select(0, y * w + x).t().contiguous()
    else:
        cols = value[b].reshape(value.size(1), -1).index_select(1, y * w + x)
    if outside.any():  # the zero padding
        cols.index_fill_(1, outside.nonzero().view(-1), 0)
    return cols.view(cols.size(0), dy.size(0), -1)




def divisor(spec: SearchSpec, overlap_norm: str, level: int, out_hw: Tuple[int, int],
            like: torch.Tensor) -> torch.Tensor:
    """Per-pixel overlap count of the folded patches [1, 1, H, W], or TTSR's constant."""
    k, s, p = spec.level_geometry(level)
    if overlap_norm == 'ttsr':
        return like.new_tensor(float((spec.window // spec.stride) ** 2))
    if by_index(spec):  # the count is separable: rows covering y times columns covering x
        count_y = _overlap_count_1d(out_hw[0], k, s, p, like)
        count_x = _overlap_count_1d(out_hw[1], k, s, p, like)
        return (count_y[:, None] * count_x[None, :]).view(1, 1, *out_hw)
    n_patches = ((out_hw[0] + 2 * p - k) // s + 1) * ((out_hw[1] + 2 * p - k) // s + 1)
    ones = like.new_ones(1, k * k, n_patches)
    return F.fold(ones, output_size=out_hw, kernel_size=k, padding=p, stride=s)


def transfer_level(spec: SearchSpec, value: Maps, index: torch.Tensor, level: int, out_hw: Tuple[int, int],
                   div: torch.Tensor, scratch: Optional[Scratch] = None) -> torch.Tensor:
    """Gather the reference patches at ``index`` [N, L] from ``value`` (one map, or one per reference) and fold them
    onto ``out_hw``, divided by ``div`` (:func:`divisor`). ``scratch``: reusable gather buffers (:func:`transfer`
    shares one over its levels and ranks)."""
    values = as_list(value)
    if by_index(spec):
        if blocks_apply(spec, values, level):
            folded = fold_blocks(spec, values, index, level, out_hw, scratch)  # its own storage
            if folded.is_contiguous(memory_format=torch.channels_last):
                return folded.div_(div)  # in place: no second output-sized allocation
            return folded / div
        return fold_by_index(spec, values, index, level, out_hw) / div
    k, s, p = spec.level_geometry(level)
    values = [v.materialize() if isinstance(v, ComputedMap) else v for v in values]
    unfolded = torch.cat([F.unfold(v, kernel_size=k, padding=p, stride=s) for v in values], dim=2)  # [N, D, Lr]
    gathered = torch.gather(unfolded, 2, index.unsqueeze(1).expand(-1, unfolded.size(1), -1))
    folded = F.fold(gathered, output_size=out_hw, kernel_size=k, padding=p, stride=s)
    return folded / div


def transfer_layout(spec: SearchSpec, value: TextureMap) -> TextureMap:
    """A reference texture map (relu1_1, relu2_1 or relu3_1) in the layout the transfer reads fastest: channels-last
    on CPU for a transfer by index (a copy, made once per reference, where it is not already: see
    :func:`fold_blocks`), unchanged otherwise (and relu1_1 kept as its image). The result does not depend on it."""
    if not by_index(spec) or isinstance(value, ComputedMap) or value.device.type != 'cpu':
        return value
    return value.contiguous(memory_format=torch.channels_last)


def blocks_apply(spec: SearchSpec, values: Sequence[TextureMap], level: int) -> bool:
    """Whether :func:`fold_blocks` serves this level: channels-last maps (not relu1_1 kept as its image) whose
    sides are multiples of the stride, and a window and padding that are multiples of it (every released
    geometry: window 3s, padding s)."""
    k, s, p = spec.level_geometry(level)
    return k % s == 0 and p % s == 0 and all(
        isinstance(v, torch.Tensor) and v.is_contiguous(memory_format=torch.channels_last)
        and v.shape[-2] % s == 0 and v.shape[-1] % s == 0 for v in values)

def fold_blocks(spec, values: List[torch.Tensor], index: torch.Tensor, level: int,
                 out_hw: Tuple[int, int], scratch: Optional[Scratch] = None) -> torch.Tensor:
    """fold(gather(unfold(value), index)) for channels-last maps, block by block (see :meth:`blocks_apply`).

    With k = m s and p = q s, a patch is m x m blocks of s x s pixels that sit on the block grid of the padded
    output (patch (gy, gx) covers blocks gy..gy+m-1) and, shifted by q, on the block grid of the reference. The
    fold is therefore m^2 shifted adds: for each block offset (i, j), the (i, j) block of every selected patch,
    gathered as s rows of s*C contiguous floats (``index_select`` of whole rows of a channels-last map, instead
    of single pixels of an NCHW one: about 5x faster), added to the output blocks at (gy+i, gx+j). Blocks
    outside the reference are the zero padding. The adds run in F.fold's (col2im's) order of (dy, dx), so the
    result equals the dense path's fold bit for bit. Returns [N, C, h, w], channels-last (the layout the main
    network runs in on CPU). Several references: each patch's blocks come from its own reference. The m^2
    gathers of a level reuse one buffer (``scratch``): fresh ones cost a page fault per 4 KiB (at 1024 x 768,
    top-2, 1.9 million faults, most of the transfer's time)."""
    k, s, p = spec.level_geometry(level)
    m, q = k // s, p // s
    n, c = values[0].shape[:2]
    dev = values[0].device
    scratch = Scratch(values[0]) if scratch is None else scratch
    # autograd refuses out= and would see the reused buffers overwritten: fresh tensors when it records
    reuse = not (torch.is_grad_enabled() and any(v.requires_grad for v in values))
    gh = (out_hw[0] + 2 * p - k) // s + 1
    gw = (out_hw[1] + 2 * p - k) // s + 1
    # the output's blocks, NHWC storage; the padded output's block row/column gy + i is the output's gy + i - q,
    # and the adds that fall in the padding (cropped by the dense path) are skipped
    hb, wb = -(-out_hw[0] // s), -(-out_hw[1] // s)
    out = values[0].new_zeros(n, hb * s, wb * s, c)
    out_blocks = out.view(n, hb, s, wb, s * c)
    dy = torch.arange(s, device=dev).view(1, s)
    counts = [((v.shape[-2] + 2 * p - k) // s + 1) * ((v.shape[-1] + 2 * p - k) // s + 1) for v in values]
    offsets = list(itertools.accumulate([0] + counts))
    for b in range(n):
        idx = index[b]
        if len(values) > 1:
            ref_id = torch.searchsorted(torch.tensor(offsets[1:], device=dev), idx.contiguous(), right=True)
            members = [(ref_id == r).nonzero().view(-1) for r in range(len(values))]
        for i in range(m):
            for j in range(m):
                gathered = None
                if len(values) > 1:
                    gathered = (scratch.get('gathered', gh * gw, s, s * c) if reuse
                                else values[0].new_empty(gh * gw, s, s * c))
                for r, v in enumerate(values):
                    sel = None if len(values) == 1 else members[r]
                    if sel is not None and sel.numel() == 0:
                        continue
                    h_b, w_b = v.shape[-2] // s, v.shape[-1] // s
                    grid_w = (v.shape[-1] + 2 * p - k) // s + 1
                    local = (idx if sel is None else idx[sel]) - offsets[r]
                    by = torch.div(local, grid_w, rounding_mode='floor') + (i - q)
                    bx = local % grid_w + (j - q)
                    outside = (by < 0) | (by >= h_b) | (bx < 0) | (bx >= w_b)
                    # rows of the map viewed as [H * W/s, s*C] (channels-last: a view): row y, block column bx
                    rows = v[b].permute(1, 2, 0).reshape(v.shape[-2] * w_b, s * c)
                    pos = (by.clamp(0, h_b - 1)[:, None] * s + dy) * w_b + bx.clamp(0, w_b - 1)[:, None]
                    if reuse:
                        blocks = torch.index_select(rows, 0, pos.view(-1), out=scratch.get(
                            'blocks', pos.numel(), s * c)).view(-1, s, s * c)
                    else:
                        blocks = rows.index_select(0, pos.view(-1)).view(-1, s, s * c)
                    outside = outside.nonzero().view(-1)  # only the blocks in the padding are written
                    if outside.numel():
                        blocks.index_fill_(0, outside, 0)
                    if sel is None:
                        gathered = blocks
                    else:
                        gathered.index_copy_(0, sel, blocks)
                y0, y1 = max(0, q - i), min(gh, hb + q - i)
                x0, x1 = max(0, q - j), min(gw, wb + q - j)
                out_blocks[b, y0 + i - q:y1 + i - q, :, x0 + j - q:x1 + j - q].add_(
                    gathered.view(gh, gw, s, s * c)[y0:y1, x0:x1].transpose(1, 2))
    return out.permute(0, 3, 1, 2)[:, :, :out_hw[0], :out_hw[1]]


def fold_by_index(spec, values: List[TextureMap], index: torch.Tensor, level: int,
                   out_hw: Tuple[int, int]) -> torch.Tensor:
    """fold(gather(unfold(value), index)) without unfolding ``value``: for bands of LR patch rows, the selected
    patches are read straight from the map(s) and folded into their band of the output; pixels of a patch that
    fall in the zero padding are zeroed after the gather, so the (large) reference maps are never copied into
    padded ones (tiled inference calls this once per tile, rank and level). With several references each band's
    patches are gathered reference by reference (never a concatenation of the maps). A
    :class:`ComputedMap` (relu1_1 kept as its image) recomputes the gathered pixels."""
    k, s, p = spec.level_geometry(level)
    n, c = values[0].shape[:2]
    dev = index.device
    like = tensor_like(values[0])
    heights = [v.shape[-2] for v in values]
    widths = [v.shape[-1] for v in values]
    grid_w = torch.tensor([(w + 2 * p - k) // s + 1 for w in widths], device=dev)
    grid_h = torch.tensor([(h + 2 * p - k) // s + 1 for h in heights], device=dev)
    patch_off = torch.cat((grid_w.new_zeros(1), (grid_h * grid_w).cumsum(0)))
    gh = (out_hw[0] + 2 * p - k) // s + 1
    gw = (out_hw[1] + 2 * p - k) // s + 1
    out_w = out_hw[1] + 2 * p
    out = like.new_zeros(n, c, out_hw[0] + 2 * p, out_w)
    # a patch's pixels in unfold's (dy, dx) order, relative to its top-left corner in the padded map
    ar = torch.arange(k, device=dev)
    dy = ar.repeat_interleave(k).view(k * k, 1) - p
    dx = ar.repeat(k).view(k * k, 1) - p
    rows = max(1, spec.chunk_size // gw)
    for r0 in range(0, gh, rows):
        r1 = min(gh, r0 + rows)
        band_h = (r1 - r0 - 1) * s + k
        idx = index[:, r0 * gw:r1 * gw].contiguous()  # [N, Lb]
        ref = torch.searchsorted(patch_off[1:], idx, right=True) if len(values) > 1 else torch.zeros_like(idx)
        for b in range(n):
            if len(values) == 1:
                cols = _gather_patches(values[0], b, idx[b], grid_w[0], s, dy, dx)
            else:
                cols = like.new_empty(c, k * k, idx.size(1))
                for r, value in enumerate(values):
                    sel = (ref[b] == r).nonzero().view(-1)
                    if sel.numel():
                        cols.index_copy_(2, sel, _gather_patches(value, b, idx[b, sel] - patch_off[r], grid_w[r],
                                                                 s, dy, dx))
            out[b:b + 1, :, r0 * s:r0 * s + band_h] += F.fold(cols.view(1, c * k * k, -1),
                                                               output_size=(band_h, out_w), kernel_size=k,
                                                               stride=s)
            del cols
    return out[:, :, p:p + out_hw[0], p:p + out_hw[1]]


def transfer(spec: SearchSpec, overlap_norm: str, top_k: int, scores: torch.Tensor, index: torch.Tensor,
             lr_hw: Tuple[int, int], ref_lv1: Maps, ref_lv2: Maps, ref_lv3: Maps):
    """Soft attention and textures, lists over the ``top_k`` ranks, from a search result [N, top_k, L] for an LR of
    ``lr_hw`` (relu3_1 size): S [N, 1, h', w'] (on the patch grid), T_lv3 [N, 256, h, w], T_lv2 [N, 128, 2h, 2w],
    T_lv1 [N, 64, 4h, 4w]. The reference maps are one per reference, in the order they were searched."""
    if overlap_norm not in OVERLAP_NORMS:
        raise ValueError(f'overlap_norm must be one of {OVERLAP_NORMS}, got {overlap_norm!r}')
    n = scores.size(0)
    h, w = lr_hw
    gh, gw = spec.grid_size(h, w)
    sizes = {3: (h, w), 2: (2 * h, 2 * w), 1: (4 * h, 4 * w)}
    values = {3: ref_lv3, 2: ref_lv2, 1: ref_lv1}
    like = tensor_like(as_list(ref_lv3)[0])
    divisors = {lv: divisor(spec, overlap_norm, lv, sizes[lv], like) for lv in (3, 2, 1)}
    scratch = Scratch(like)  # gather buffers shared by the levels and ranks
    S: List[torch.Tensor] = []
    T: dict = {3: [], 2: [], 1: []}
    for rank in range(top_k):
        idx = index[:, rank]
        S.append(scores[:, rank].reshape(n, 1, gh, gw))
        for lv in (3, 2, 1):
            T[lv].append(transfer_level(spec, values[lv], idx, lv, sizes[lv], divisors[lv], scratch))
    return S, T[3], T[2], T[1]
