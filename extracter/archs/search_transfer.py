"""Texture search and transfer between LR and reference features (TTSR Sec. 3.2-3.3, EXTRACTER Sec. 3).

Relevance (TTSR Eq. 4): cosine similarity between L2-normalised unfolded patches q_i of the upsampled LR and k_j of
the down-up-sampled reference, both at VGG relu3_1: ``r_ij = <q_i / |q_i|, k_j / |k_j|>``.
Hard attention (Eq. 5): the indices of the top-k most relevant reference patches for every LR patch; soft attention
(Eq. 7): their relevance scores. Transfer (Eq. 6): the reference patches at those indices, taken from the relu3_1,
relu2_1 and relu1_1 features with windows k, 2k, 4k, strides s, 2s, 4s and paddings p, 2p, 4p, folded back onto the
LR grid.

Overlap normalisation after folding:
- ``'exact'`` (EXTRACTER): divide by the per-pixel number of overlapping patches (the fold of ones), exact at
  the borders too.
- ``'ttsr'`` (TTSR): divide by the constant (k/s)^2 = 9, as the original TTSR code does; border pixels, covered by
  fewer patches, come out darker. Kept for parity with TTSR checkpoints.

EXTRACTER's released code passes padding and stride to ``unfold`` swapped in the search; that only works when
padding == stride (true for both released geometries, window 3s / stride s / padding s). We pass them in the right
order, which equals the original wherever the original works, and also allows other geometries.

Several references (our extension; neither paper does this): the search takes a list of reference feature maps,
searches each and keeps the top-k over the union of all their patches (the top-k of a union is the top-k of the
per-reference top-k lists, so this is exact); the returned index runs over the references' patches in order (reference
r's patch j is ``offset_r + j``, the offsets being the cumulated patch counts, see :func:`split_index`), and the
transfer gathers every position's patch from the reference it came from. With one reference nothing changes.

Three implementations; the first two with the same results (ties aside):
- ``mode='dense'`` (the faithful default, as the original code): the whole relevance matrix between all LR and all
  reference patches, and every reference patch unfolded at every level for every rank. Memory grows with
  (LR patches x reference patches).
- ``mode='chunked'``: the relevance is computed for blocks of ``chunk_size`` LR patches against blocks of
  ``key_chunk_size`` reference patches with a running top-k, so peak memory no longer grows with the product; the
  transfer gathers the selected reference patches straight from the feature map for bands of LR patch rows and folds
  them band by band, with a separable one-channel overlap divisor. Nothing of size (patches x patch length) is kept
  for the whole image.
- ``mode='approximate'`` (large inputs; never in training): reduced-descriptor retrieval, then the exact relevance in
  candidate windows (:mod:`extracter.archs.search_approximate`); the same (scores, index) contract, the scores the
  exact relevances of the chosen patches, and the chunked transfer. Several references: each is searched
  approximately and the union's top-k kept, as above. Equal to the exact search where its candidates cover the
  whole reference (small inputs fall back to the chunked search).
"""

import itertools
from typing import List, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from extracter.archs.patches import Scratch, chunked_search, grid_size, inv_patch_norms, patch_range
from extracter.archs.search_approximate import ApproximateSettings, approximate_search
from extracter.archs.vgg import Relu11FromImage

OVERLAP_NORMS = ('exact', 'ttsr')
SEARCH_MODES = ('dense', 'chunked', 'approximate')
EXACT_MODES = ('dense', 'chunked')
SearchMode = Literal[SEARCH_MODES]  # constructor annotations (the option schema checks the choice)
FEATURE_CHANNELS = {3: 256, 2: 128, 1: 64}  # VGG-19 relu3_1, relu2_1, relu1_1
Maps = Union[torch.Tensor, Sequence[torch.Tensor]]
TextureMap = Union[torch.Tensor, Relu11FromImage]  # a reference's texture map, or relu1_1 kept as its image


def _as_list(x: Maps) -> List[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


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


def _tensor_like(value: 'TextureMap') -> torch.Tensor:
    """A tensor of the map's dtype and device (for new buffers)."""
    return value.image if isinstance(value, Relu11FromImage) else value


def _gather_patches(value: 'TextureMap', b: int, local: torch.Tensor, grid_w: torch.Tensor, s: int,
                    dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The patches with grid indices ``local`` [Lb] of batch element ``b`` of one reference map (or relu1_1 kept as
    its image): [C, k*k, Lb] in unfold's (dy, dx) order; ``dy``/``dx`` [k*k, 1]: a patch's pixel offsets from its
    top-left corner, padding included. Pixels in the zero padding are zero."""
    h, w = value.shape[-2:]
    y = torch.div(local, grid_w, rounding_mode='floor').view(1, -1) * s + dy  # [k*k, Lb], rows of the unpadded map
    x = (local % grid_w).view(1, -1) * s + dx
    outside = ((y < 0) | (y >= h) | (x < 0) | (x >= w)).view(-1)
    y, x = y.clamp_(0, h - 1).view(-1), x.clamp_(0, w - 1).view(-1)  # [k*k*Lb], (dy, dx)-major
    if isinstance(value, Relu11FromImage):
        cols = value.gather(b, y, x)
    elif not value.is_contiguous() and value.is_contiguous(memory_format=torch.channels_last):  # no copy of the map
        cols = value[b].permute(1, 2, 0).reshape(-1, value.size(1)).index_select(0, y * w + x).t().contiguous()
    else:
        cols = value[b].reshape(value.size(1), -1).index_select(1, y * w + x)
    if outside.any():  # the zero padding
        cols.index_fill_(1, outside.nonzero().view(-1), 0)
    return cols.view(cols.size(0), dy.size(0), -1)


class SearchTransfer(nn.Module):
    """Search & transfer, dense (faithful), chunked (bounded memory, same result) or approximate (sub-quadratic
    work, exact relevances of the chosen patches). Parameter-free; the geometry and the
    chunking can be changed at any time.

    Args:
        window, stride, padding: search geometry at relu3_1 (x2 and x4 at relu2_1 and relu1_1).
        top_k: reference patches kept per LR patch.
        overlap_norm: ``'exact'`` or ``'ttsr'`` (see the module docstring).
        mode: ``'dense'``, ``'chunked'`` or ``'approximate'``.
        chunk_size: chunked and approximate modes: LR patches per search (retrieval) block; the transfer works on
            bands of whole patch rows holding about as many patches (at least one row).
        key_chunk_size: chunked mode: reference patches per search block.
        cache_keys: chunked mode: normalise the reference patches once per search and keep them (memory
            C*k*k x reference patches) instead of once per LR block.
        approximate: approximate mode's settings (default :class:`ApproximateSettings`).
    """

    def __init__(self, window: int = 3, stride: int = 1, padding: int = 1, top_k: int = 1,
                 overlap_norm: str = 'exact', mode: str = 'dense', chunk_size: int = 4096,
                 key_chunk_size: int = 8192, cache_keys: bool = False,
                 approximate: Optional[ApproximateSettings] = None) -> None:
        super().__init__()
        if overlap_norm not in OVERLAP_NORMS:
            raise ValueError(f'overlap_norm must be one of {OVERLAP_NORMS}, got {overlap_norm!r}')
        if top_k < 1:
            raise ValueError(f'top_k must be >= 1, got {top_k}')
        self.top_k = int(top_k)
        self.overlap_norm = overlap_norm
        self.set_geometry(window, stride, padding)
        self.set_chunking(mode, chunk_size, key_chunk_size, cache_keys, approximate)

    def set_geometry(self, window: int, stride: int, padding: int) -> None:
        """Set the search window, stride and padding at the relu3_1 level (x2 and x4 at the finer levels)."""
        window, stride, padding = int(window), int(stride), int(padding)
        if stride < 1 or window < stride:
            raise ValueError(f'search geometry needs window >= stride >= 1, got window={window} stride={stride}')
        if not 0 <= padding < window:
            raise ValueError(f'search geometry needs 0 <= padding < window, got padding={padding} window={window}')
        if self.overlap_norm == 'ttsr' and (window, stride, padding) != (3, 1, 1):
            raise ValueError("overlap_norm='ttsr' is TTSR's fixed geometry: window 3, stride 1, padding 1")
        self.window, self.stride, self.padding = window, stride, padding

    def set_chunking(self, mode: Optional[str] = None, chunk_size: Optional[int] = None,
                     key_chunk_size: Optional[int] = None, cache_keys: Optional[bool] = None,
                     approximate: Optional[ApproximateSettings] = None) -> None:
        """Choose the implementation, its block sizes and the approximate search's settings (``None`` keeps the
        current value)."""
        if approximate is not None:
            if not isinstance(approximate, ApproximateSettings):
                raise TypeError(f'approximate must be ApproximateSettings, got {type(approximate).__name__}')
            self.approximate = approximate
        elif not hasattr(self, 'approximate'):
            self.approximate = ApproximateSettings()
        mode = getattr(self, 'mode', 'dense') if mode is None else mode
        if mode not in SEARCH_MODES:
            raise ValueError(f'search mode must be one of {SEARCH_MODES}, got {mode!r}')
        chunk_size = int(getattr(self, 'chunk_size', 4096) if chunk_size is None else chunk_size)
        key_chunk_size = int(getattr(self, 'key_chunk_size', 8192) if key_chunk_size is None else key_chunk_size)
        if chunk_size < 1 or key_chunk_size < 1:
            raise ValueError(f'chunk sizes must be >= 1, got chunk_size={chunk_size} key_chunk_size={key_chunk_size}')
        self.mode, self.chunk_size, self.key_chunk_size = mode, chunk_size, key_chunk_size
        self.cache_keys = bool(getattr(self, 'cache_keys', False) if cache_keys is None else cache_keys)

    def extra_repr(self) -> str:
        return (f'window={self.window}, stride={self.stride}, padding={self.padding}, top_k={self.top_k}, '
                f'overlap_norm={self.overlap_norm}, mode={self.mode}, chunk_size={self.chunk_size}, '
                f'key_chunk_size={self.key_chunk_size}'
                + (f', approximate={self.approximate}' if self.mode == 'approximate' else ''))

    def level_geometry(self, level: int) -> Tuple[int, int, int]:
        """(window, stride, padding) at relu3_1 (level 3), relu2_1 (level 2, x2) or relu1_1 (level 1, x4)."""
        factor = {3: 1, 2: 2, 1: 4}[level]
        return self.window * factor, self.stride * factor, self.padding * factor

    def grid_size(self, h: int, w: int) -> Tuple[int, int]:
        """Number of patch positions along each side of a relu3_1 map of size h x w."""
        return grid_size(h, w, self.window, self.stride, self.padding)

    # ------------------------------------------------------------------ search (Eq. 4, 5, 7)
    def search(self, lr_feat: torch.Tensor, ref_feat: Maps,
               key_blocks=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k relevance of the LR patches against the patches of one reference map or of several (their union).
        Returns scores and reference-patch indices, both [N, top_k, H*W] (rank-sorted); with several references
        the index runs over all their patches in order (:func:`split_index`). ``key_blocks``: per reference, the
        :meth:`prepare_keys` blocks or None (one reference: the blocks themselves)."""
        maps = _as_list(ref_feat)
        if isinstance(ref_feat, torch.Tensor):
            key_blocks = [key_blocks]
        key_blocks = list(key_blocks) if key_blocks is not None else [None] * len(maps)
        counts = self.patch_counts(maps)
        if sum(counts) < self.top_k:
            raise ValueError(f'the reference has {sum(counts)} patches, fewer than top_k={self.top_k}')
        # each reference's own top-k (a tiny one among several: all it has), then the top-k of their union
        results = [self.search_dense(lr_feat, feat, min(self.top_k, n)) if self.mode == 'dense' else
                   self.search_approximate(lr_feat, feat, min(self.top_k, n)) if self.mode == 'approximate' else
                   self.search_chunked(lr_feat, feat, blocks, min(self.top_k, n))
                   for feat, blocks, n in zip(maps, key_blocks, counts)]
        if len(results) == 1:
            return results[0]
        offsets = [0, *itertools.accumulate(counts[:-1])]
        scores = torch.cat([r[0] for r in results], dim=1)
        index = torch.cat([r[1] + off for r, off in zip(results, offsets)], dim=1)
        top, pos = torch.topk(scores, self.top_k, dim=1, largest=True, sorted=True)
        return top, torch.gather(index, 1, pos)

    def patch_counts(self, ref_maps: Maps) -> List[int]:
        """Number of search patches of each reference map (relu3_1)."""
        counts = []
        for feat in _as_list(ref_maps):
            gh, gw = self.grid_size(*feat.shape[-2:])
            counts.append(gh * gw)
        return counts

    def search_dense(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor,
                     top_k: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The faithful search: the whole relevance matrix [N, Lr, L] at once (``top_k``: default the module's)."""
        k, s, p = self.window, self.stride, self.padding
        query = F.normalize(F.unfold(lr_feat, kernel_size=k, padding=p, stride=s), dim=1)  # [N, C*k*k, L]
        keys = F.normalize(F.unfold(ref_feat, kernel_size=k, padding=p, stride=s), dim=1)  # [N, C*k*k, Lr]
        relevance = torch.bmm(keys.transpose(1, 2), query)  # [N, Lr, L]
        return torch.topk(relevance, top_k or self.top_k, dim=1, largest=True, sorted=True)

    def prepare_keys(self, ref_feat: torch.Tensor) -> List[torch.Tensor]:
        """The L2-normalised reference patches in blocks of ``key_chunk_size``, each [N, C*k*k, block]."""
        k, s, p = self.window, self.stride, self.padding
        ref_pad = F.pad(ref_feat, (p, p, p, p))
        _, gw = self.grid_size(*ref_feat.shape[-2:])
        inv = inv_patch_norms(ref_pad, k, s)
        n_keys = inv.size(1)
        blocks = []
        for j0 in range(0, n_keys, self.key_chunk_size):
            j1 = min(j0 + self.key_chunk_size, n_keys)
            blocks.append(patch_range(ref_pad, k, s, gw, j0, j1).mul_(inv[:, None, j0:j1]))
        return blocks

    def search_chunked(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor,
                       key_blocks: Optional[List[torch.Tensor]] = None,
                       top_k: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact blocked search with a running top-k: peak memory about chunk_size x key_chunk_size relevances plus
        one block of query and one of key patches.

        The cosine relevance is computed as raw dot products scaled by the inverse patch norms (box sums of squared
        features): the key scale is applied to each relevance block, and the query scale, which cannot change a
        query's ranking, only to the kept scores. Equal to the dense search up to float rounding (~1e-7)."""
        gh, gw = self.grid_size(*lr_feat.shape[-2:])
        if key_blocks is None and self.cache_keys and gh * gw > self.chunk_size:
            key_blocks = self.prepare_keys(ref_feat)
        return chunked_search(lr_feat, ref_feat, self.window, self.stride, self.padding, top_k or self.top_k,
                              self.chunk_size, self.key_chunk_size, key_blocks)

    def search_approximate(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor,
                           top_k: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Approximate search with exact re-ranking (:func:`extracter.archs.search_approximate.approximate_search`,
        with :attr:`approximate` settings): the same contract, the scores exact relevances of the chosen patches.
        Its retrieval works in blocks of ``chunk_size`` queries; where it falls back to the exact search (the
        candidates would cover everything), that is the chunked search with this module's block sizes."""
        return approximate_search(lr_feat, ref_feat, self.window, self.stride, self.padding, top_k or self.top_k,
                                  self.approximate, query_chunk_size=self.chunk_size,
                                  exact_chunks=(self.chunk_size, self.key_chunk_size))

    # ------------------------------------------------------------------ transfer (Eq. 6)
    def divisor(self, level: int, out_hw: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """Per-pixel overlap count of the folded patches [1, 1, H, W], or TTSR's constant."""
        k, s, p = self.level_geometry(level)
        if self.overlap_norm == 'ttsr':
            return like.new_tensor(float((self.window // self.stride) ** 2))
        if self.mode != 'dense':  # the count is separable: rows covering y times columns covering x
            count_y = _overlap_count_1d(out_hw[0], k, s, p, like)
            count_x = _overlap_count_1d(out_hw[1], k, s, p, like)
            return (count_y[:, None] * count_x[None, :]).view(1, 1, *out_hw)
        n_patches = ((out_hw[0] + 2 * p - k) // s + 1) * ((out_hw[1] + 2 * p - k) // s + 1)
        ones = like.new_ones(1, k * k, n_patches)
        return F.fold(ones, output_size=out_hw, kernel_size=k, padding=p, stride=s)

    def transfer_level(self, value: Maps, index: torch.Tensor, level: int,
                       out_hw: Tuple[int, int], divisor: Optional[torch.Tensor] = None,
                       scratch: Optional[Scratch] = None) -> torch.Tensor:
        """Gather the reference patches at ``index`` [N, L] from ``value`` (one map, or one per reference) and fold
        them onto ``out_hw``. ``scratch``: reusable gather buffers (:meth:`transfer` shares one over its levels and
        ranks)."""
        values = _as_list(value)
        if divisor is None:
            divisor = self.divisor(level, out_hw, _tensor_like(values[0]))
        if self.mode != 'dense':  # chunked and approximate: transfer by index
            if self.blocks_apply(values, level):
                folded = self._fold_blocks(values, index, level, out_hw, scratch)  # its own storage
                if folded.is_contiguous(memory_format=torch.channels_last):
                    return folded.div_(divisor)  # in place: no second output-sized allocation
                return folded / divisor
            return self._fold_by_index(values, index, level, out_hw) / divisor
        k, s, p = self.level_geometry(level)
        values = [v.materialize() if isinstance(v, Relu11FromImage) else v for v in values]
        unfolded = torch.cat([F.unfold(v, kernel_size=k, padding=p, stride=s) for v in values], dim=2)  # [N, D, Lr]
        gathered = torch.gather(unfolded, 2, index.unsqueeze(1).expand(-1, unfolded.size(1), -1))
        folded = F.fold(gathered, output_size=out_hw, kernel_size=k, padding=p, stride=s)
        return folded / divisor

    def transfer_layout(self, value: TextureMap) -> TextureMap:
        """A reference texture map (relu1_1, relu2_1 or relu3_1) in the layout the transfer reads fastest: channels-last
        on CPU in the chunked and approximate modes (a copy, made once per reference, where it is not already: see
        :meth:`_fold_blocks`), unchanged otherwise (and relu1_1 kept as its image). The transfer's result does not
        depend on it."""
        if self.mode == 'dense' or isinstance(value, Relu11FromImage) or value.device.type != 'cpu':
            return value
        return value.contiguous(memory_format=torch.channels_last)

    def blocks_apply(self, values: Sequence[TextureMap], level: int) -> bool:
        """Whether :meth:`_fold_blocks` serves this level: channels-last maps (not relu1_1 kept as its image) whose
        sides are multiples of the stride, and a window and padding that are multiples of it (every released
        geometry: window 3s, padding s)."""
        k, s, p = self.level_geometry(level)
        return k % s == 0 and p % s == 0 and all(
            isinstance(v, torch.Tensor) and v.is_contiguous(memory_format=torch.channels_last)
            and v.shape[-2] % s == 0 and v.shape[-1] % s == 0 for v in values)

    def _fold_blocks(self, values: List[torch.Tensor], index: torch.Tensor, level: int,
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
        k, s, p = self.level_geometry(level)
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

    def _fold_by_index(self, values: List[TextureMap], index: torch.Tensor, level: int,
                       out_hw: Tuple[int, int]) -> torch.Tensor:
        """fold(gather(unfold(value), index)) without unfolding ``value``: for bands of LR patch rows, the selected
        patches are read straight from the map(s) and folded into their band of the output; pixels of a patch that
        fall in the zero padding are zeroed after the gather, so the (large) reference maps are never copied into
        padded ones (tiled inference calls this once per tile, rank and level). With several references each band's
        patches are gathered reference by reference (never a concatenation of the maps). A
        :class:`~extracter.archs.vgg.Relu11FromImage` (relu1_1 kept as its image) recomputes the gathered pixels."""
        k, s, p = self.level_geometry(level)
        n, c = values[0].shape[:2]
        dev = index.device
        like = _tensor_like(values[0])
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
        rows = max(1, self.chunk_size // gw)
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

    def transfer(self, scores: torch.Tensor, index: torch.Tensor, lr_hw: Tuple[int, int], ref_lv1: Maps,
                 ref_lv2: Maps, ref_lv3: Maps):
        """Soft attention and textures (lists over ranks) from a search result [N, top_k, L] for an LR of
        ``lr_hw`` (relu3_1 size); the reference maps are one per reference, in the order they were searched; see
        :meth:`forward`."""
        n = scores.size(0)
        h, w = lr_hw
        gh, gw = self.grid_size(h, w)
        sizes = {3: (h, w), 2: (2 * h, 2 * w), 1: (4 * h, 4 * w)}
        values = {3: ref_lv3, 2: ref_lv2, 1: ref_lv1}
        divisors = {lv: self.divisor(lv, sizes[lv], _as_list(ref_lv3)[0]) for lv in (3, 2, 1)}
        scratch = Scratch(_tensor_like(_as_list(ref_lv3)[0]))  # gather buffers shared by the levels and ranks
        S: List[torch.Tensor] = []
        T: dict = {3: [], 2: [], 1: []}
        for rank in range(self.top_k):
            idx = index[:, rank]
            S.append(scores[:, rank].reshape(n, 1, gh, gw))
            for lv in (3, 2, 1):
                T[lv].append(self.transfer_level(values[lv], idx, lv, sizes[lv], divisors[lv], scratch))
        return S, T[3], T[2], T[1]

    def forward(self, lr_lv3: torch.Tensor, refsr_lv3: torch.Tensor, ref_lv1: torch.Tensor,
                ref_lv2: torch.Tensor, ref_lv3: torch.Tensor, key_blocks: Optional[List[torch.Tensor]] = None):
        """Returns lists over the top-k ranks: S [N, 1, h', w'] (soft attention on the patch grid) and the textures
        T_lv3 [N, 256, h, w], T_lv2 [N, 128, 2h, 2w], T_lv1 [N, 64, 4h, 4w]. ``key_blocks`` (chunked mode): the
        output of :meth:`prepare_keys` for ``refsr_lv3``, to reuse across calls (e.g. tiles)."""
        scores, index = self.search(lr_lv3, refsr_lv3, key_blocks)
        return self.transfer(scores, index, tuple(lr_lv3.shape[-2:]), ref_lv1, ref_lv2, ref_lv3)
