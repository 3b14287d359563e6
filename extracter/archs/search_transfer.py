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
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

OVERLAP_NORMS = ('exact', 'ttsr')


class SearchTransfer(nn.Module):
    """Dense (faithful) search & transfer. Parameter-free; the geometry can be changed at any time."""

    def __init__(self, window: int = 3, stride: int = 1, padding: int = 1, top_k: int = 1,
                 overlap_norm: str = 'exact') -> None:
        super().__init__()
        if overlap_norm not in OVERLAP_NORMS:
            raise ValueError(f'overlap_norm must be one of {OVERLAP_NORMS}, got {overlap_norm!r}')
        if top_k < 1:
            raise ValueError(f'top_k must be >= 1, got {top_k}')
        self.top_k = int(top_k)
        self.overlap_norm = overlap_norm
        self.set_geometry(window, stride, padding)

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

    def extra_repr(self) -> str:
        return (f'window={self.window}, stride={self.stride}, padding={self.padding}, top_k={self.top_k}, '
                f'overlap_norm={self.overlap_norm}')

    def level_geometry(self, level: int) -> Tuple[int, int, int]:
        """(window, stride, padding) at relu3_1 (level 3), relu2_1 (level 2, x2) or relu1_1 (level 1, x4)."""
        factor = {3: 1, 2: 2, 1: 4}[level]
        return self.window * factor, self.stride * factor, self.padding * factor

    def grid_size(self, h: int, w: int) -> Tuple[int, int]:
        """Number of patch positions along each side of a relu3_1 map of size h x w."""
        k, s, p = self.window, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def search(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k relevance (Eq. 4, 5, 7). Returns scores and reference-patch indices, both [N, top_k, H*W]."""
        k, s, p = self.window, self.stride, self.padding
        query = F.normalize(F.unfold(lr_feat, kernel_size=k, padding=p, stride=s), dim=1)  # [N, C*k*k, L]
        keys = F.normalize(F.unfold(ref_feat, kernel_size=k, padding=p, stride=s), dim=1)  # [N, C*k*k, Lr]
        if keys.shape[-1] < self.top_k:
            raise ValueError(f'the reference has {keys.shape[-1]} patches, fewer than top_k={self.top_k}')
        relevance = torch.bmm(keys.transpose(1, 2), query)  # [N, Lr, L]
        return torch.topk(relevance, self.top_k, dim=1, largest=True, sorted=True)

    def divisor(self, level: int, out_hw: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """Per-pixel overlap count of the folded patches (one channel), or TTSR's constant."""
        k, s, p = self.level_geometry(level)
        if self.overlap_norm == 'ttsr':
            return like.new_tensor(float((self.window // self.stride) ** 2))
        n_patches = ((out_hw[0] + 2 * p - k) // s + 1) * ((out_hw[1] + 2 * p - k) // s + 1)
        ones = like.new_ones(1, k * k, n_patches)
        return F.fold(ones, output_size=out_hw, kernel_size=k, padding=p, stride=s)

    def transfer_level(self, value: torch.Tensor, index: torch.Tensor, level: int,
                       out_hw: Tuple[int, int]) -> torch.Tensor:
        """Gather the reference patches at ``index`` [N, L] from ``value`` and fold them onto ``out_hw`` (Eq. 6)."""
        k, s, p = self.level_geometry(level)
        unfolded = F.unfold(value, kernel_size=k, padding=p, stride=s)  # [N, C*k*k, Lr]
        gathered = torch.gather(unfolded, 2, index.unsqueeze(1).expand(-1, unfolded.size(1), -1))
        folded = F.fold(gathered, output_size=out_hw, kernel_size=k, padding=p, stride=s)
        return folded / self.divisor(level, out_hw, folded)

    def forward(self, lr_lv3: torch.Tensor, refsr_lv3: torch.Tensor, ref_lv1: torch.Tensor,
                ref_lv2: torch.Tensor, ref_lv3: torch.Tensor):
        """Returns lists over the top-k ranks: S [N, 1, h', w'] (soft attention on the patch grid) and the textures
        T_lv3 [N, 256, h, w], T_lv2 [N, 128, 2h, 2w], T_lv1 [N, 64, 4h, 4w]."""
        n, _, h, w = lr_lv3.shape
        scores, index = self.search(lr_lv3, refsr_lv3)
        gh, gw = self.grid_size(h, w)
        S: List[torch.Tensor] = []
        T_lv3: List[torch.Tensor] = []
        T_lv2: List[torch.Tensor] = []
        T_lv1: List[torch.Tensor] = []
        for rank in range(self.top_k):
            idx = index[:, rank]
            S.append(scores[:, rank].reshape(n, 1, gh, gw))
            T_lv3.append(self.transfer_level(ref_lv3, idx, 3, (h, w)))
            T_lv2.append(self.transfer_level(ref_lv2, idx, 2, (2 * h, 2 * w)))
            T_lv1.append(self.transfer_level(ref_lv1, idx, 1, (4 * h, 4 * w)))
        return S, T_lv3, T_lv2, T_lv1
