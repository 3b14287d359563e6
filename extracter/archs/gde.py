"""EXTRACTER's Gradient Density Enhancing (GDE) module.

The per-channel Sobel magnitude of the LR image (the gradient density map) gets its own shallow features, which are
fused with the CSFI stage outputs at x1, x2 and x4 (concatenation, conv, residual blocks), upsampled bicubically
between scales; the result is fused with the merged texture features and mapped to the image, clamped to [-1, 1].
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from extracter.archs.modules import SFE, SobelMagnitude, conv1x1, conv3x3, res_blocks, run_blocks


class GDE(nn.Module):
    def __init__(self, num_grad_blocks: Sequence[int], n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.sobel = SobelMagnitude(channels=3)
        self.SFE = SFE(num_grad_blocks[0], n_feats, res_scale)
        # the original builds the fusion blocks with the default res_scale of 1
        self.conv12_grad = conv3x3(2 * n_feats, n_feats)
        self.grad_12 = res_blocks(num_grad_blocks[1], n_feats)
        self.conv23_grad = conv3x3(2 * n_feats, n_feats)
        self.grad_23 = res_blocks(num_grad_blocks[2], n_feats)
        self.conv33_grad = conv3x3(2 * n_feats, n_feats)
        self.grad_33 = res_blocks(num_grad_blocks[3], n_feats)
        self.fuse = conv3x3(2 * n_feats, n_feats)
        self.fuse_tail1 = conv3x3(n_feats, n_feats // 2)
        self.fuse_tail2 = conv1x1(n_feats // 2, 3)

    @staticmethod
    def _stage(conv: nn.Conv2d, blocks: nn.ModuleList, x: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        x = conv(torch.cat([x, texture], dim=1)).relu_()
        return x + run_blocks(blocks, x)

    def forward(self, lr: torch.Tensor, merged: torch.Tensor, x31: torch.Tensor, x32: torch.Tensor,
                x33: torch.Tensor) -> torch.Tensor:
        """``lr`` in [0, 1]; ``merged`` the merge tail's features; x31/x32/x33 the CSFI outputs at x1/x2/x4."""
        g = self.SFE(self.sobel(lr))
        g = self._stage(self.conv12_grad, self.grad_12, g, x31)
        g = self._stage(self.conv23_grad, self.grad_23, F.interpolate(g, scale_factor=2, mode='bicubic'), x32)
        g = self._stage(self.conv33_grad, self.grad_33, F.interpolate(g, scale_factor=2, mode='bicubic'), x33)
        x = self.fuse(torch.cat([merged, g], dim=1)).relu_()
        return torch.clamp(self.fuse_tail2(self.fuse_tail1(x)), -1, 1)
