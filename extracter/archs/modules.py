"""Building blocks shared by the EXTRACTER and TTSR architectures.

Attribute names follow the original code (TTSR ``model/MainNet.py``, EXTRACTER ``model/Modules.py`` and
``model/CSFI.py``) so that official checkpoints map onto them by a prefix rename
(see ``scripts/convert_official.py``).
"""

from typing import List, Sequence

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
        return self.conv2(self.relu(self.conv1(x))) * self.res_scale + x


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
        x = F.relu(self.conv_head(x))
        return self.conv_tail(run_blocks(self.RBs, x)) + x


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode='bicubic')


class CSFI2(nn.Module):
    """Cross-scale feature integration of two scales (TTSR Sec. 3.4)."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = conv3x3(n_feats * 2, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 2, n_feats)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        x12 = F.relu(self.conv12(_up(x1, 2)))
        x21 = F.relu(self.conv21(x2))
        x1 = F.relu(self.conv_merge1(torch.cat((x1, x21), dim=1)))
        x2 = F.relu(self.conv_merge2(torch.cat((x2, x12), dim=1)))
        return x1, x2


class CSFI3(nn.Module):
    """Cross-scale feature integration of three scales (TTSR Sec. 3.4)."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, 2)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv31_1 = conv3x3(n_feats, n_feats, 2)
        self.conv31_2 = conv3x3(n_feats, n_feats, 2)
        self.conv32 = conv3x3(n_feats, n_feats, 2)
        self.conv_merge1 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge3 = conv3x3(n_feats * 3, n_feats)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor):
        x12 = F.relu(self.conv12(_up(x1, 2)))
        x13 = F.relu(self.conv13(_up(x1, 4)))
        x21 = F.relu(self.conv21(x2))
        x23 = F.relu(self.conv23(_up(x2, 2)))
        x31 = F.relu(self.conv31_2(F.relu(self.conv31_1(x3))))
        x32 = F.relu(self.conv32(x3))
        x1 = F.relu(self.conv_merge1(torch.cat((x1, x21, x31), dim=1)))
        x2 = F.relu(self.conv_merge2(torch.cat((x2, x12, x32), dim=1)))
        x3 = F.relu(self.conv_merge3(torch.cat((x3, x13, x23), dim=1)))
        return x1, x2, x3


class MergeTail(nn.Module):
    """Merges the three scales at the output resolution.

    With ``out_conv`` (TTSR) it ends in the 64-32-3 output convolutions and the clamp to [-1, 1]; without it
    (EXTRACTER) it returns features, and the GDE module produces the image.
    """

    def __init__(self, n_feats: int, out_conv: bool) -> None:
        super().__init__()
        self.out_conv = out_conv
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv_merge = conv3x3(n_feats * 3, n_feats)
        if out_conv:
            self.conv_tail1 = conv3x3(n_feats, n_feats // 2)
            self.conv_tail2 = conv1x1(n_feats // 2, 3)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        x13 = F.relu(self.conv13(_up(x1, 4)))
        x23 = F.relu(self.conv23(_up(x2, 2)))
        x = F.relu(self.conv_merge(torch.cat((x3, x13, x23), dim=1)))
        if self.out_conv:
            x = torch.clamp(self.conv_tail2(self.conv_tail1(x)), -1, 1)
        return x


class CSFIMainNet(nn.Module):
    """The texture-fusion main network shared by TTSR and EXTRACTER.

    Three stages at x1, x2 and x4 of the LR size. At each stage the transferred textures of every top-k rank are
    fused by their own head, weighted by the (bicubically resized) soft-attention map S (TTSR Eq. 9):
    ``F_out = F + sum_i Conv_i(F || T_i) * S_i``. EXTRACTER's released code also multiplies the texture by S before
    the head (``texture_attention=True``); we keep that for parity. Stages are joined by sub-pixel upsampling and
    CSFI2/CSFI3 cross-scale integration, and the merge tail fuses the three scales.
    """

    feature_levels = (256, 128, 64)  # channels of the VGG-19 relu3_1, relu2_1 and relu1_1 textures

    def __init__(
        self,
        num_res_blocks: Sequence[int],
        n_feats: int,
        res_scale: float,
        top_k: int,
        texture_attention: bool,
        out_conv: bool,
    ) -> None:
        super().__init__()
        self.num_res_blocks = list(num_res_blocks)
        self.texture_attention = texture_attention
        c3, c2, c1 = self.feature_levels
        self.SFE = SFE(self.num_res_blocks[0], n_feats, res_scale)
        # stage 1 (LR size)
        self.conv11_head = nn.ModuleList(conv3x3(c3 + n_feats, n_feats) for _ in range(top_k))
        self.RB11 = res_blocks(self.num_res_blocks[1], n_feats, res_scale)
        self.conv11_tail = conv3x3(n_feats, n_feats)
        self.conv12 = conv3x3(n_feats, n_feats * 4)
        self.ps12 = nn.PixelShuffle(2)
        # stage 2 (x2)
        self.conv22_head = nn.ModuleList(conv3x3(c2 + n_feats, n_feats) for _ in range(top_k))
        self.ex12 = CSFI2(n_feats)
        self.RB21 = res_blocks(self.num_res_blocks[2], n_feats, res_scale)
        self.RB22 = res_blocks(self.num_res_blocks[2], n_feats, res_scale)
        self.conv21_tail = conv3x3(n_feats, n_feats)
        self.conv22_tail = conv3x3(n_feats, n_feats)
        self.conv23 = conv3x3(n_feats, n_feats * 4)
        self.ps23 = nn.PixelShuffle(2)
        # stage 3 (x4)
        self.conv33_head = nn.ModuleList(conv3x3(c1 + n_feats, n_feats) for _ in range(top_k))
        self.ex123 = CSFI3(n_feats)
        self.RB31 = res_blocks(self.num_res_blocks[3], n_feats, res_scale)
        self.RB32 = res_blocks(self.num_res_blocks[3], n_feats, res_scale)
        self.RB33 = res_blocks(self.num_res_blocks[3], n_feats, res_scale)
        self.conv31_tail = conv3x3(n_feats, n_feats)
        self.conv32_tail = conv3x3(n_feats, n_feats)
        self.conv33_tail = conv3x3(n_feats, n_feats)
        self.merge_tail = MergeTail(n_feats, out_conv=out_conv)

    def _fuse(self, heads: nn.ModuleList, f: torch.Tensor, textures, scores) -> torch.Tensor:
        """Soft-attention fusion of every rank's texture into ``f`` (TTSR Eq. 9, one head per rank)."""
        out = f
        for head, texture, score in zip(heads, textures, scores):
            if score.shape[-2:] != f.shape[-2:]:
                score = F.interpolate(score, size=f.shape[-2:], mode='bicubic')
            if self.texture_attention:
                texture = texture * score
            out = out + head(torch.cat((f, texture), dim=1)) * score
        return out

    def forward(self, x: torch.Tensor, S, T_lv3, T_lv2, T_lv1):
        """``x``: LR in [-1, 1]; S/T_*: lists with one tensor per top-k rank.

        Returns ``(merged, x31, x32, x33)``: the merge tail's output (the image in [-1, 1] when ``out_conv``) and the
        three stage outputs (used by EXTRACTER's GDE module).
        """
        x11 = self._fuse(self.conv11_head, self.SFE(x), T_lv3, S)
        x11 = x11 + self.conv11_tail(run_blocks(self.RB11, x11))

        x21 = x11
        x22 = F.relu(self.ps12(self.conv12(x11)))
        x22 = self._fuse(self.conv22_head, x22, T_lv2, S)
        x21_res, x22_res = self.ex12(x21, x22)
        x21 = x21 + self.conv21_tail(run_blocks(self.RB21, x21_res))
        x22 = x22 + self.conv22_tail(run_blocks(self.RB22, x22_res))

        x31, x32 = x21, x22
        x33 = F.relu(self.ps23(self.conv23(x22)))
        x33 = self._fuse(self.conv33_head, x33, T_lv1, S)
        x31_res, x32_res, x33_res = self.ex123(x31, x32, x33)
        x31 = x31 + self.conv31_tail(run_blocks(self.RB31, x31_res))
        x32 = x32 + self.conv32_tail(run_blocks(self.RB32, x32_res))
        x33 = x33 + self.conv33_tail(run_blocks(self.RB33, x33_res))
        return self.merge_tail(x31, x32, x33), x31, x32, x33


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
