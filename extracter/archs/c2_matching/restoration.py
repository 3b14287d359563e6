"""C2-Matching's restoration network (paper Sec. 3.3, the original's ``ref_restoration_arch.py``): a content
extractor on the LR, then three dynamic-aggregation stages (relu3_1, relu2_1, relu1_1 of the reference's VGG-19),
each a modulated deformable convolution pre-offset by the correspondence flow, and x2 upsampling between them; the
output is the residual over the bilinear x4 LR (align_corners False), unclamped.

The modulated deformable convolution is :func:`torchvision.ops.deform_conv2d` with a mask (pure PyTorch, CPU and
CUDA), in place of the original's compiled DCNv2 (``DCN_sep_pre_multi_offset``): the same operation, the same
offset layout (``[y, x]`` per kernel position, group-major) and parameter names.
"""

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def deform_conv2d(*args, **kwargs) -> torch.Tensor:
    """:func:`torchvision.ops.deform_conv2d`, imported on first use: importing torchvision loads its datasets and
    models and torch._dynamo, which importing the architectures must not (tests/test_registry.py)."""
    from torchvision.ops import deform_conv2d as op

    return op(*args, **kwargs)


REF_CHANNELS = {'relu3_1': 256, 'relu2_1': 128, 'relu1_1': 64}  # VGG-19's maps the stages aggregate
LEVEL_SCALE = {'relu3_1': 1, 'relu2_1': 2, 'relu1_1': 4}  # their pixels per LR pixel


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv + identity (the original's ``ResidualBlockNoBN``, ``res_scale`` 1)."""

    def __init__(self, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))).add_(x)  # x + conv2(...): the same sum, no third map


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

    def forward(self, ref_feat: torch.Tensor, feat: torch.Tensor, pre_offset: torch.Tensor,
                origin: Optional[Tuple[int, int]] = None, band_bytes: Optional[int] = None) -> torch.Tensor:
        """The aggregation at ``feat``'s positions. ``origin``: a tile's top-left in ``ref_feat`` (the whole
        reference map, which the offsets point into); None: ``feat`` covers the whole map. ``band_bytes``: evaluate
        it in bands of output rows whose transient tensors stay under this many bytes (:func:`band_rows`; the
        result is the single call's up to float rounding); None: one call, as the original (training)."""
        h, w = feat.shape[-2:]
        rows = h if band_bytes is None else band_rows(ref_feat.size(1), self.deformable_groups, w, band_bytes)
        if rows >= h:
            offset, mask = self.offsets_and_mask(feat, pre_offset)
            if origin is None:
                return deform_conv2d(ref_feat, offset, self.weight, self.bias, stride=1, padding=1, dilation=1,
                                     mask=mask)
            return window_deform_conv(ref_feat, offset, mask, self.weight, self.bias, origin)
        oy, ox = origin or (0, 0)
        out = feat.new_empty(feat.size(0), self.weight.size(0), h, w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            # the offset convolution (3x3, padding 1) on the band with one row of context above and below
            s0, s1 = max(0, r0 - 1), min(h, r1 + 1)
            offset, mask = self.offsets_and_mask(feat[:, :, s0:s1], pre_offset[:, :, s0:s1])
            offset, mask = offset[:, :, r0 - s0:r1 - s0], mask[:, :, r0 - s0:r1 - s0]
            out[:, :, r0:r1] = window_deform_conv(ref_feat, offset, mask, self.weight, self.bias, (oy + r0, ox))
            del offset, mask
        return out


def band_rows(channels: int, groups: int, width: int, band_bytes: int) -> int:
    """Output rows per band of a dynamic aggregation ``width`` pixels wide whose transient tensors fit
    ``band_bytes``: per pixel torchvision's columns (9 C floats) and output buffers (3 C), the offsets and masks
    (27 G from the convolution, 18 G each for the offsets, the pre-offsets, their sum and the window's
    correction, 9 G for the mask)."""
    per_px = 4 * (12 * channels + 27 * groups + 4 * 18 * groups + 9 * groups)
    return max(1, band_bytes // (per_px * width))


def _window_geometry(size: int, out: int) -> Tuple[int, int]:
    """(padding, dilation) for which a stride-1 3x3 convolution over ``size`` has ``out`` outputs (``size - out``
    even): size + 2 * padding - 2 * dilation = out."""
    extra = size - out
    return (0, extra // 2) if extra >= 2 else ((2 - extra) // 2, 1)


def window_deform_conv(ref_feat: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, origin: Tuple[int, int]) -> torch.Tensor:
    """The 3x3 padding-1 modulated deformable convolution over the whole ``ref_feat`` [N, C, H, W], evaluated only
    at the positions of a window (``offset``'s size) starting at ``origin``: one torchvision call whose output grid
    is the window's, its kernel taps moved to the window's places through the offsets (a window's cost, not the
    whole map's; the samples are the untiled ones up to float rounding). Where the window and the map differ in
    size by an odd number, the window gets one row (column) more above (left), with zero offsets, computed and
    dropped: the map itself is never copied."""
    size_h, size_w = ref_feat.shape[-2:]
    by, bx = (size_h - offset.size(-2)) % 2, (size_w - offset.size(-1)) % 2
    if by or bx:
        offset, mask = F.pad(offset, (bx, 0, by, 0)), F.pad(mask, (bx, 0, by, 0))
        origin = (origin[0] - by, origin[1] - bx)
    th, tw = offset.shape[-2:]
    (py, dy), (px, dx) = _window_geometry(size_h, th), _window_geometry(size_w, tw)
    taps = torch.arange(3, device=offset.device, dtype=offset.dtype)
    # wanted tap position (origin + q - 1 + k) minus torchvision's (q - padding + k * dilation)
    cy = origin[0] - 1 + py + taps * (1 - dy)
    cx = origin[1] - 1 + px + taps * (1 - dx)
    corr = torch.stack((cy.view(3, 1).expand(3, 3), cx.view(1, 3).expand(3, 3)), dim=-1).reshape(1, 18, 1, 1)
    groups = offset.size(1) // 18
    offset = offset + corr.repeat(1, groups, 1, 1)
    out = deform_conv2d(ref_feat, offset, weight, bias, stride=1, padding=(py, px), dilation=(dy, dx), mask=mask)
    return out[:, :, by:, bx:]


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

    def forward(self, x: torch.Tensor, pre_offset: Dict[str, torch.Tensor], ref_feat: Dict[str, torch.Tensor],
                origin: Optional[Tuple[int, int]] = None, band_bytes: Optional[int] = None) -> torch.Tensor:
        """``origin``: a tile's top-left LR pixel in the whole reference (``ref_feat`` whole); None: untiled.
        ``band_bytes``: the aggregations in bands of rows (:meth:`DynAgg.forward`); None: one call each."""
        for stage, level in self.STAGES:
            ref = ref_feat[level]
            at = None if origin is None else (origin[0] * LEVEL_SCALE[level], origin[1] * LEVEL_SCALE[level])
            local = ref if at is None else ref[:, :, at[0]:at[0] + x.size(-2), at[1]:at[1] + x.size(-1)]
            off = self.lrelu(getattr(self, f'{stage}_offset_conv1')(torch.cat([x, local], 1)))
            off = self.lrelu(getattr(self, f'{stage}_offset_conv2')(off))
            swapped = self.lrelu(getattr(self, f'{stage}_dyn_agg')(ref, off, pre_offset[level], at, band_bytes))
            del off, local  # each map is dropped once used: at x4 every 64-channel map is 16x the LR's size
            h = getattr(self, f'head_{stage}')(torch.cat([x, swapped], 1))
            del swapped
            h = getattr(self, f'body_{stage}')(h) + x
            del x
            x = getattr(self, f'tail_{stage}')(h)
            del h
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

    def forward(self, lr: torch.Tensor, pre_offset: Dict[str, torch.Tensor], ref_feat: Dict[str, torch.Tensor],
                origin: Optional[Tuple[int, int]] = None, band_bytes: Optional[int] = None) -> torch.Tensor:
        base = F.interpolate(lr, scale_factor=4, mode='bilinear', align_corners=False)
        return self.dyn_agg_restore(self.content_extractor(lr), pre_offset, ref_feat, origin, band_bytes) + base
