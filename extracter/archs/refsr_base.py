"""What EXTRACTER and TTSR share at the model boundary: input checks, the down/up-sampled inputs, [0,1] <-> [-1,1]."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SCALE = 4


def bicubic_resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Anti-aliased bicubic resize clamped to [0, 1] (PyTorch's kernel, a=-0.75; PIL uses a=-0.5)."""
    return F.interpolate(x, size=size, mode='bicubic', align_corners=False, antialias=True).clamp_(0, 1)


def make_lr_up(lr: torch.Tensor) -> torch.Tensor:
    """The bicubically x4-upsampled LR, used to search in the same domain as the down-up-sampled reference."""
    return bicubic_resize(lr, (lr.shape[-2] * SCALE, lr.shape[-1] * SCALE))


def make_ref_downup(ref: torch.Tensor) -> torch.Tensor:
    """The reference blurred like an upsampled LR: bicubic x1/4 then x4."""
    h, w = ref.shape[-2:]
    return bicubic_resize(bicubic_resize(ref, (h // SCALE, w // SCALE)), (h, w))


class RefSRNet(nn.Module):
    """Base class: subclasses provide ``search_transfer`` (with ``stride``) and ``_forward_m11``."""

    search_transfer: nn.Module

    def required_multiples(self) -> Tuple[int, int]:
        """(LR side multiple, reference side multiple) that the current search geometry needs."""
        stride = self.search_transfer.stride
        return stride, SCALE * stride

    def check_inputs(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor],
                     ref_downup: Optional[torch.Tensor]) -> None:
        lr_mult, ref_mult = self.required_multiples()
        for name, t in (('lr', lr), ('ref', ref)):
            if t.dim() != 4 or t.size(1) != 3:
                raise ValueError(f'{name} must be an RGB batch [N, 3, H, W], got shape {tuple(t.shape)}')
        if lr.size(0) != ref.size(0):
            raise ValueError(f'lr and ref batch sizes differ: {lr.size(0)} vs {ref.size(0)}')
        h, w = lr.shape[-2:]
        if h % lr_mult or w % lr_mult:
            raise ValueError(f'LR size {h}x{w} is not a multiple of {lr_mult} (the search stride); pad or crop it '
                             '(the inference path pads automatically)')
        rh, rw = ref.shape[-2:]
        if rh % ref_mult or rw % ref_mult or rh < ref_mult or rw < ref_mult:
            raise ValueError(f'reference size {rh}x{rw} is not a positive multiple of {ref_mult} '
                             f'(4 x the search stride); crop or pad it')
        if lr_up is not None and tuple(lr_up.shape[-2:]) != (h * SCALE, w * SCALE):
            raise ValueError(f'lr_up must be 4x the LR size ({h * SCALE}x{w * SCALE}), got {tuple(lr_up.shape[-2:])}')
        if ref_downup is not None and ref_downup.shape[-2:] != ref.shape[-2:]:
            raise ValueError(f'ref_downup must have the reference size {rh}x{rw}, got {tuple(ref_downup.shape[-2:])}')

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor] = None,
                ref_downup: Optional[torch.Tensor] = None, return_aux: bool = False):
        """Images in [0, 1]: ``lr`` [N,3,h,w], ``ref`` [N,3,H,W], optionally the dataset-made ``lr_up`` [N,3,4h,4w]
        and ``ref_downup`` [N,3,H,W]. Returns SR in [0, 1] [N,3,4h,4w]; with ``return_aux`` a dict that also holds
        the soft attention ``S`` and textures ``T_lv3``/``T_lv2``/``T_lv1`` (lists over top-k ranks)."""
        self.check_inputs(lr, ref, lr_up, ref_downup)
        if lr_up is None:
            lr_up = make_lr_up(lr)
        if ref_downup is None:
            ref_downup = make_ref_downup(ref)
        sr_m11, S, T_lv3, T_lv2, T_lv1 = self._forward_m11(lr * 2 - 1, lr_up, ref, ref_downup)
        sr = (sr_m11 + 1) / 2
        if return_aux:
            return {'sr': sr, 'S': S, 'T_lv3': T_lv3, 'T_lv2': T_lv2, 'T_lv1': T_lv1}
        return sr
