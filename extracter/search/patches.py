"""Patch arithmetic shared by the exact (chunked) and the approximate texture searches.

Patches are those of ``F.unfold`` with window k, stride s, padding p of relu3_1 feature maps; the relevance is TTSR's
Eq. 4 cosine ``r_ij = <q_i / |q_i|, k_j / |k_j|>``, computed as raw dot products scaled by inverse patch norms (box
sums of squared features, much cheaper than norms of unfolded patches).
"""

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['Scratch', 'grid_size', 'patch_rows', 'patch_range', 'key_block', 'inv_patch_norms', 'merge_topk',
           'chunked_search']


class Scratch:
    """Reusable buffers, one per name, grown on demand. The approximate search's tile loop and re-scoring and the
    transfer's block gathers move tens to hundreds of MB per step; fresh allocations of that size come from the
    kernel as new pages each time (at 2048 / 6/2/2, 16 million page faults, a third of the search's CPU time), reused
    ones do not. The buffers hold what one step holds (the memory estimates count it once)."""

    def __init__(self, like: torch.Tensor):
        self.device, self.dtype = like.device, like.dtype
        self.buffers = {}

    def get(self, name: str, *shape: int) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < numel:
            self.buffers.pop(name, None)  # free the smaller one first
            buf = self.buffers[name] = torch.empty(numel, dtype=self.dtype, device=self.device)
        return buf[:numel].view(shape)


def grid_size(h: int, w: int, window: int, stride: int, padding: int) -> Tuple[int, int]:
    """Patch positions along each side of an h x w map."""
    return (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1


def patch_rows(x_pad: torch.Tensor, k: int, s: int, r0: int, r1: int) -> torch.Tensor:
    """Unfolded patches of patch rows [r0, r1) of an already padded map: [N, C*k*k, (r1-r0)*grid_w]."""
    return F.unfold(x_pad[:, :, r0 * s:(r1 - 1) * s + k], kernel_size=k, stride=s)


def patch_range(x_pad: torch.Tensor, k: int, s: int, grid_w: int, j0: int, j1: int) -> torch.Tensor:
    """Unfolded patches with flat indices [j0, j1) of an already padded map (only the rows they touch)."""
    r0, r1 = j0 // grid_w, (j1 - 1) // grid_w + 1
    return patch_rows(x_pad, k, s, r0, r1)[:, :, j0 - r0 * grid_w:j1 - r0 * grid_w]


def key_block(ref_pad: torch.Tensor, inv: torch.Tensor, k: int, s: int, grid_w: int, j0: int, j1: int
              ) -> torch.Tensor:
    """The L2-normalised reference patches [j0, j1) of a padded map, [N, C*k*k, j1-j0] (Eq. 4's k_j / |k_j|;
    ``inv``: :func:`inv_patch_norms` of the map). The one way a key block is made, in the search or prepared
    beforehand (:func:`extracter.search.methods.exact.prepare_key_blocks`): the same ops, the same bits."""
    return patch_range(ref_pad, k, s, grid_w, j0, j1).mul_(inv[:, None, j0:j1])


def inv_patch_norms(x_pad: torch.Tensor, k: int, s: int, eps: float = 1e-12, padding: int = 0) -> torch.Tensor:
    """1 / max(|patch|, eps) for every patch of an already padded map, [N, grid_h*grid_w]; the squared norms are a
    box sum of the channel-summed squares. ``padding``: the map is not padded yet, its zero padding is (the channel
    sums are padded instead of the map: no padded copy)."""
    sq = x_pad.pow(2).sum(dim=1, keepdim=True)
    if padding:
        sq = F.pad(sq, (padding,) * 4)
    sums = F.avg_pool2d(sq, kernel_size=k, stride=s, divisor_override=1)
    return sums.clamp_min_(0).sqrt_().clamp_min_(eps).reciprocal_().flatten(1)


def merge_topk(best_s: Optional[torch.Tensor], best_i: Optional[torch.Tensor], blk_s: torch.Tensor,
               blk_i: torch.Tensor, k: int, dim: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Running top-k: the kept candidates merged with a new block's (rank-sorted along ``dim``)."""
    if best_s is None:
        return blk_s, blk_i
    cand_s = torch.cat((best_s, blk_s), dim=dim)
    cand_i = torch.cat((best_i, blk_i), dim=dim)
    best_s, pos = torch.topk(cand_s, min(k, cand_s.size(dim)), dim=dim, largest=True, sorted=True)
    return best_s, torch.gather(cand_i, dim, pos)


def chunked_search(lr_feat: torch.Tensor, ref_feat: torch.Tensor, window: int, stride: int, padding: int,
                   top_k: int, chunk_size: int = 4096, key_chunk_size: int = 8192,
                   key_blocks: Optional[List[torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The exact search in blocks of ``chunk_size`` LR patches x ``key_chunk_size`` reference patches with a running
    top-k: (scores, index), each [N, top_k, L], rank-sorted. ``key_blocks``: the L2-normalised reference patches in
    blocks of ``key_chunk_size`` ([N, C*k*k, block] each, :func:`key_block`), reused across calls.

    Each key block is normalised before its product (made here, or given: the same ops on the same tensors, so the
    result is bit-identical either way); the query scale, which cannot change a query's ranking, is applied only to
    the kept scores. Equal to the dense search up to float rounding (~1e-7)."""
    k, s, p = window, stride, padding
    n = lr_feat.size(0)
    lr_pad = F.pad(lr_feat, (p, p, p, p))
    ref_pad = F.pad(ref_feat, (p, p, p, p))
    _, gw = grid_size(*lr_feat.shape[-2:], k, s, p)
    _, rgw = grid_size(*ref_feat.shape[-2:], k, s, p)
    q_inv = inv_patch_norms(lr_pad, k, s)  # [N, L]
    k_inv = inv_patch_norms(ref_pad, k, s)  # [N, Lr]
    n_query, n_keys = q_inv.size(1), k_inv.size(1)
    kc = key_chunk_size
    if key_blocks is not None and sum(b.size(2) for b in key_blocks) != n_keys:
        raise ValueError('key_blocks do not match the reference features (prepare them with prepare_keys)')
    scores = lr_feat.new_empty(n, top_k, n_query)
    index = torch.empty(n, top_k, n_query, dtype=torch.long, device=lr_feat.device)
    for i0 in range(0, n_query, chunk_size):
        i1 = min(i0 + chunk_size, n_query)
        query_t = patch_range(lr_pad, k, s, gw, i0, i1).transpose(1, 2)  # [N, Lb, D], not normalised
        best_s: Optional[torch.Tensor] = None
        best_i: Optional[torch.Tensor] = None
        for b, j0 in enumerate(range(0, n_keys, kc)):
            j1 = min(j0 + kc, n_keys)
            block = key_blocks[b] if key_blocks is not None else key_block(ref_pad, k_inv, k, s, rgw, j0, j1)
            relevance = torch.bmm(query_t, block)  # [N, Lb, Kb]: the dense matrix's block, transposed
            del block
            blk_s, blk_i = torch.topk(relevance, min(top_k, j1 - j0), dim=2, largest=True, sorted=True)
            del relevance
            best_s, best_i = merge_topk(best_s, best_i, blk_s, blk_i + j0, top_k, dim=2)
        scores[:, :, i0:i1] = (best_s * q_inv[:, i0:i1, None]).transpose(1, 2)
        index[:, :, i0:i1] = best_i.transpose(1, 2)
    return scores, index
