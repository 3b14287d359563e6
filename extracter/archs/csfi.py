"""Cross-scale feature integration (TTSR Sec. 3.4, Fig. 4; EXTRACTER Sec. 3.3): CSFI2, CSFI3, the merge tail and the
main network that stacks them over the x1, x2 and x4 scales with the transferred textures.

Attribute names follow the original code (TTSR ``model/MainNet.py``, EXTRACTER ``model/CSFI.py``) so that official
checkpoints map onto them by a prefix rename (:mod:`extracter.convert.official`).

Activations and residual sums are computed in place on the fresh outputs of the convolutions (``relu_``, ``add_``,
``addcmul``; the same numbers up to float rounding, ~1e-7; autograd-safe): every out-of-place one allocated a new
full-size map, and at 1024 x 768 on CPU fresh memory costs more to fault in than the operation itself.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from extracter.archs.modules import SFE, conv1x1, conv3x3, res_blocks, run_blocks


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
        x12 = self.conv12(_up(x1, 2)).relu_()
        x21 = self.conv21(x2).relu_()
        x1 = self.conv_merge1(torch.cat((x1, x21), dim=1)).relu_()
        x2 = self.conv_merge2(torch.cat((x2, x12), dim=1)).relu_()
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
        x12 = self.conv12(_up(x1, 2)).relu_()
        x13 = self.conv13(_up(x1, 4)).relu_()
        x21 = self.conv21(x2).relu_()
        x23 = self.conv23(_up(x2, 2)).relu_()
        x31 = self.conv31_2(self.conv31_1(x3).relu_()).relu_()
        x32 = self.conv32(x3).relu_()
        x1 = self.conv_merge1(torch.cat((x1, x21, x31), dim=1)).relu_()
        x2 = self.conv_merge2(torch.cat((x2, x12, x32), dim=1)).relu_()
        x3 = self.conv_merge3(torch.cat((x3, x13, x23), dim=1)).relu_()
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
        x13 = self.conv13(_up(x1, 4)).relu_()
        x23 = self.conv23(_up(x2, 2)).relu_()
        x = self.conv_merge(torch.cat((x3, x13, x23), dim=1)).relu_()
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
            out = torch.addcmul(out, head(torch.cat((f, texture), dim=1)), score)  # out + head(f || T) * S
        return out

    def forward(self, x: torch.Tensor, S, T_lv3, T_lv2, T_lv1):
        """``x``: LR in [-1, 1]; S/T_*: lists with one tensor per top-k rank.

        Returns ``(merged, x31, x32, x33)``: the merge tail's output (the image in [-1, 1] when ``out_conv``) and the
        three stage outputs (used by EXTRACTER's GDE module).
        """
        x11 = self._fuse(self.conv11_head, self.SFE(x), T_lv3, S)
        x11 = self.conv11_tail(run_blocks(self.RB11, x11)).add_(x11)

        x21 = x11
        x22 = self.ps12(self.conv12(x11)).relu_()
        x22 = self._fuse(self.conv22_head, x22, T_lv2, S)
        x21_res, x22_res = self.ex12(x21, x22)
        x21 = self.conv21_tail(run_blocks(self.RB21, x21_res)).add_(x21)
        x22 = self.conv22_tail(run_blocks(self.RB22, x22_res)).add_(x22)

        x31, x32 = x21, x22
        x33 = self.ps23(self.conv23(x22)).relu_()
        x33 = self._fuse(self.conv33_head, x33, T_lv1, S)
        x31_res, x32_res, x33_res = self.ex123(x31, x32, x33)
        x31 = self.conv31_tail(run_blocks(self.RB31, x31_res)).add_(x31)
        x32 = self.conv32_tail(run_blocks(self.RB32, x32_res)).add_(x32)
        x33 = self.conv33_tail(run_blocks(self.RB33, x33_res)).add_(x33)
        return self.merge_tail(x31, x32, x33), x31, x32, x33
