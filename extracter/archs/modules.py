"""Generic building blocks shared by the EXTRACTER and TTSR architectures (the CSFI main network is in
:mod:`extracter.archs.csfi`).

Attribute names follow the original code (TTSR ``model/MainNet.py``, EXTRACTER ``model/Modules.py`` and
``model/CSFI.py``) so that official checkpoints map onto them by a prefix rename
(see ``scripts/convert_official.py``).
"""

from typing import List

import torch
import torch.nn.functional as F
from torch import nn


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, bias=True)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True)


def parse_block_counts(value, expected: int, name: str) -> List[int]:
    """Accept ``'8+16+8+4'`` (the original code's notation) or a sequence of ints."""
    if isinstance(value, str):
        try:
            counts = [int(v) for v in value.split('+')]
        except ValueError as err:
            raise ValueError(f'{name}: expected a "+"-separated list of integers, got {value!r}') from err
    else:
        counts = [int(v) for v in value]
    if len(counts) != expected or any(c < 0 for c in counts):
        raise ValueError(f'{name}: expected {expected} non-negative block counts, got {value!r}')
    return counts


class ResBlock(nn.Module):
    """conv-ReLU-conv with a scaled identity skip (EDSR style, no batch norm)."""

    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = conv3x3(n_feats, n_feats)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        if self.res_scale != 1:  # in place on the fresh output (a pass and a map fewer; the same numbers)
            out.mul_(self.res_scale)
        return out.add_(x)


def res_blocks(count: int, n_feats: int, res_scale: float = 1.0) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(n_feats, res_scale) for _ in range(count))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


class SFE(nn.Module):
    """Shallow feature extractor: conv, residual blocks, conv, global skip."""

    def __init__(self, num_res_blocks: int, n_feats: int, res_scale: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.conv_head = conv3x3(in_channels, n_feats)
        self.RBs = res_blocks(num_res_blocks, n_feats, res_scale)
        self.conv_tail = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_head(x).relu_()
        return self.conv_tail(run_blocks(self.RBs, x)).add_(x)


class SobelMagnitude(nn.Module):
    """Per-channel Sobel gradient magnitude ``sqrt(Gx^2 + Gy^2 + 1e-6)`` (EXTRACTER's gradient density map).

    The kernels are non-persistent buffers (the original keeps them out of the state dict too), so they follow the
    module to any device.
    """

    def __init__(self, channels: int = 3, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        kernel_v = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
        kernel_h = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        weight = torch.stack([kernel_v, kernel_h]).unsqueeze(1).repeat(channels, 1, 1, 1)  # [2C, 1, 3, 3]
        self.register_buffer('weight', weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.conv2d(x, self.weight.to(x.dtype), padding=1, groups=self.channels)  # [N, 2C, H, W]: (v, h) pairs
        g_v, g_h = g[:, 0::2], g[:, 1::2]
        return torch.sqrt(g_v.pow(2) + g_h.pow(2) + self.eps)
