"""C2-Matching's restoration network (paper Sec. 3.3, the original's ``ref_restoration_arch.py``): a content
extractor on the LR, then three dynamic-aggregation stages (relu3_1, relu2_1, relu1_1 of the reference's VGG-19),
each a modulated deformable convolution pre-offset by the correspondence flow, and x2 upsampling between them; the
output is the residual over the bilinear x4 LR (align_corners False), unclamped.

The modulated deformable convolution is :func:`torchvision.ops.deform_conv2d` with a mask (pure PyTorch, CPU and
CUDA), in place of the original's compiled DCNv2 (``DCN_sep_pre_multi_offset``): the same operation, the same
offset layout (``[y, x]`` per kernel position, group-major) and parameter names.
"""

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

REF_CHANNELS = {'relu3_1': 256, 'relu2_1': 128, 'relu1_1': 64}  # VGG-19's maps the stages aggregate


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv + identity (the original's ``ResidualBlockNoBN``, ``res_scale`` 1)."""

    def __init__(self, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def _blocks(n: int, nf: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlockNoBN(nf) for _ in range(n)))


class DynAgg(nn.Module):
    """Dynamic aggregation (paper Eq. 7): a 3x3 modulated deformable convolution over the reference features whose
    offsets are the correspondence pre-offsets plus offsets (and masks) learned from ``[content, reference]``."""

    def __init__(self, channels: int, deformable_groups: int) -> None:
        super().__init__()
        if channels % deformable_groups:
            raise ValueError(f'groups must divide the {channels} reference channels, got {deformable_groups}')
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset_mask = nn.Conv2d(channels, deformable_groups * 3 * 9, 3, 1, 1)
        bound = 1.0 / math.sqrt(channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offsets_and_mask(self, feat: torch.Tensor, pre_offset: torch.Tensor):
        """(offset [N, 2*9*G, h, w] in ``[y, x]`` order, mask [N, 9*G, h, w]) from the offset features and the
        pre-offsets [N, 9, h, w, 2] (x, y)."""
        o1, o2, mask = torch.chunk(self.conv_offset_mask(feat), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        pre = pre_offset.repeat(1, self.deformable_groups, 1, 1, 1)  # [N, 9G, h, w, 2]
        pre_yx = torch.stack((pre[..., 1], pre[..., 0]), dim=2).flatten(1, 2)  # [N, 2*9G, h, w]: y, x, y, x, ...
        return offset + pre_yx, torch.sigmoid(mask)

    def forward(self, ref_feat: torch.Tensor, feat: torch.Tensor, pre_offset: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(feat, pre_offset)
        return deform_conv2d(ref_feat, offset, self.weight, self.bias, stride=1, padding=1, dilation=1, mask=mask)


class ContentExtractor(nn.Module):
    """conv + LeakyReLU(0.1) + residual blocks on the LR."""

    def __init__(self, nf: int = 64, n_blocks: int = 16) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.body = _blocks(n_blocks, nf)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.lrelu(self.conv_first(x)))


class DynamicAggregationRestoration(nn.Module):
    """The three stages (small: relu3_1 at the LR size, medium: relu2_1 at x2, large: relu1_1 at x4)."""

    STAGES = (('small', 'relu3_1'), ('medium', 'relu2_1'), ('large', 'relu1_1'))

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8) -> None:
        super().__init__()
        for stage, level in self.STAGES:
            c = REF_CHANNELS[level]
            setattr(self, f'{stage}_offset_conv1', nn.Conv2d(ngf + c, c, 3, 1, 1))
            setattr(self, f'{stage}_offset_conv2', nn.Conv2d(c, c, 3, 1, 1))
            setattr(self, f'{stage}_dyn_agg', DynAgg(c, groups))
            setattr(self, f'head_{stage}', nn.Sequential(nn.Conv2d(ngf + c, ngf, 3, 1, 1), nn.LeakyReLU(0.1, True)))
            setattr(self, f'body_{stage}', _blocks(n_blocks, ngf))
        self.tail_small = nn.Sequential(nn.Conv2d(ngf, ngf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.1, True))
        self.tail_medium = nn.Sequential(nn.Conv2d(ngf, ngf * 4, 3, 1, 1), nn.PixelShuffle(2),
                                         nn.LeakyReLU(0.1, True))
        self.tail_large = nn.Sequential(nn.Conv2d(ngf, ngf // 2, 3, 1, 1), nn.LeakyReLU(0.1, True),
                                        nn.Conv2d(ngf // 2, 3, 3, 1, 1))
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor, pre_offset: Dict[str, torch.Tensor],
                ref_feat: Dict[str, torch.Tensor]) -> torch.Tensor:
        for stage, level in self.STAGES:
            ref = ref_feat[level]
            off = self.lrelu(getattr(self, f'{stage}_offset_conv1')(torch.cat([x, ref], 1)))
            off = self.lrelu(getattr(self, f'{stage}_offset_conv2')(off))
            swapped = self.lrelu(getattr(self, f'{stage}_dyn_agg')(ref, off, pre_offset[level]))
            h = getattr(self, f'head_{stage}')(torch.cat([x, swapped], 1))
            h = getattr(self, f'body_{stage}')(h) + x
            x = getattr(self, f'tail_{stage}')(h)
        return x


class RestorationNet(nn.Module):
    """SR = dynamic aggregation restoration(content(LR)) + bilinear x4 LR (unclamped)."""

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8) -> None:
        super().__init__()
        self.content_extractor = ContentExtractor(ngf, n_blocks)
        self.dyn_agg_restore = DynamicAggregationRestoration(ngf, n_blocks, groups)
        self._init_weights()

    def _init_weights(self) -> None:
        """The original's initialisation: every convolution N(0, 0.02) with zero bias, the DCN offset/mask
        convolutions zero (the flow alone places the first samples)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        for stage, _ in DynamicAggregationRestoration.STAGES:
            conv = getattr(self.dyn_agg_restore, f'{stage}_dyn_agg').conv_offset_mask
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, lr: torch.Tensor, pre_offset: Dict[str, torch.Tensor],
                ref_feat: Dict[str, torch.Tensor]) -> torch.Tensor:
        base = F.interpolate(lr, scale_factor=4, mode='bilinear', align_corners=False)
        return self.dyn_agg_restore(self.content_extractor(lr), pre_offset, ref_feat) + base
