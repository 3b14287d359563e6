"""What EXTRACTER and TTSR share at the model boundary: input checks, the down/up-sampled inputs, [0,1] <-> [-1,1]."""

from dataclasses import dataclass
from typing import List, Optional, Tuple

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


def check_image_pair(lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor] = None,
                     ref_downup: Optional[torch.Tensor] = None) -> None:
    """Shapes any size of input must have: RGB batches of one size, ``lr_up`` 4x the LR, ``ref_downup`` as ``ref``."""
    for name, t in (('lr', lr), ('ref', ref)):
        if t.dim() != 4 or t.size(1) != 3:
            raise ValueError(f'{name} must be an RGB batch [N, 3, H, W], got shape {tuple(t.shape)}')
    if lr.size(0) != ref.size(0):
        raise ValueError(f'lr and ref batch sizes differ: {lr.size(0)} vs {ref.size(0)}')
    h, w = lr.shape[-2:]
    if lr_up is not None and tuple(lr_up.shape[-2:]) != (SCALE * h, SCALE * w):
        raise ValueError(f'lr_up must be 4x the LR size ({SCALE * h}x{SCALE * w}), got {tuple(lr_up.shape[-2:])}')
    if ref_downup is not None and ref_downup.shape[-2:] != ref.shape[-2:]:
        raise ValueError(f'ref_downup must have the reference size {tuple(ref.shape[-2:])}, '
                         f'got {tuple(ref_downup.shape[-2:])}')


@dataclass
class ReferenceFeatures:
    """A reference encoded once, to be searched by any number of LR images or tiles.

    ``search``: relu3_1 of the down-up-sampled reference (the search keys); ``lv1``/``lv2``/``lv3``: relu1_1,
    relu2_1, relu3_1 of the reference (the transferred textures); ``key_blocks``: optionally the normalised key
    patches of the chunked search (:meth:`SearchTransfer.prepare_keys`), valid for the geometry they were made with.
    """

    search: torch.Tensor
    lv1: torch.Tensor
    lv2: torch.Tensor
    lv3: torch.Tensor
    key_blocks: Optional[List[torch.Tensor]] = None


class RefSRNet(nn.Module):
    """Base class: subclasses provide ``search_transfer`` (a SearchTransfer), ``texture_extractor`` (the VGG-19
    slices) and ``_reconstruct`` (the main network, from the LR in [-1, 1] and the transferred textures).

    ``forward`` is :meth:`encode_reference` followed by :meth:`forward_features`; tiled inference calls the
    second once per tile with the same encoded reference.
    """

    search_transfer: nn.Module

    def texture_extractor(self) -> nn.Module:
        raise NotImplementedError

    def _reconstruct(self, lr_m11: torch.Tensor, S, T_lv3, T_lv2, T_lv1) -> torch.Tensor:
        raise NotImplementedError

    def set_search_mode(self, mode: Optional[str] = None, chunk_size: Optional[int] = None,
                        key_chunk_size: Optional[int] = None, cache_keys: Optional[bool] = None) -> None:
        """``'dense'`` (faithful) or ``'chunked'`` (bounded memory, same result) search & transfer."""
        self.search_transfer.set_chunking(mode, chunk_size, key_chunk_size, cache_keys)

    def encode_reference(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor] = None) -> ReferenceFeatures:
        """Texture features of the reference ``ref`` [N,3,H,W] in [0, 1] (computed once, searched by every tile)."""
        if ref_downup is None:
            ref_downup = make_ref_downup(ref)
        extractor = self.texture_extractor()
        search = extractor(ref_downup)[2]
        lv1, lv2, lv3 = extractor(ref)
        return ReferenceFeatures(search=search, lv1=lv1, lv2=lv2, lv3=lv3)

    def search_features(self, lr_up: torch.Tensor) -> torch.Tensor:
        """relu3_1 of the upsampled LR (the search queries), at the LR size."""
        return self.texture_extractor()(lr_up)[2]

    def forward_features(self, lr: torch.Tensor, lr_up: Optional[torch.Tensor], ref_feats: ReferenceFeatures,
                         return_aux: bool = False, search: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        """SR of ``lr`` [N,3,h,w] in [0, 1] (with its upsampled ``lr_up``) against an encoded reference. No size
        checks: :meth:`forward` and :func:`extracter.utils.inference.run_refsr` make them.

        ``search``: a precomputed (scores, index) [N, top_k, L] for this LR's patch grid (tiled inference searches
        the whole LR once); then ``lr_up`` is not used."""
        st = self.search_transfer
        if search is None:
            search = st.search(self.search_features(lr_up), ref_feats.search, ref_feats.key_blocks)
        S, T_lv3, T_lv2, T_lv1 = st.transfer(search[0], search[1], tuple(lr.shape[-2:]), ref_feats.lv1,
                                             ref_feats.lv2, ref_feats.lv3)
        sr = (self._reconstruct(lr * 2 - 1, S, T_lv3, T_lv2, T_lv1) + 1) / 2
        if return_aux:
            return {'sr': sr, 'S': S, 'T_lv3': T_lv3, 'T_lv2': T_lv2, 'T_lv1': T_lv1}
        return sr

    def required_multiples(self) -> Tuple[int, int]:
        """(LR side multiple, reference side multiple) that the current search geometry needs."""
        stride = self.search_transfer.stride
        return stride, SCALE * stride

    def check_inputs(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor],
                     ref_downup: Optional[torch.Tensor]) -> None:
        check_image_pair(lr, ref, lr_up, ref_downup)
        lr_mult, ref_mult = self.required_multiples()
        h, w = lr.shape[-2:]
        if h % lr_mult or w % lr_mult:
            raise ValueError(f'LR size {h}x{w} is not a multiple of {lr_mult} (the search stride); pad or crop it '
                             '(the inference path pads automatically)')
        rh, rw = ref.shape[-2:]
        if rh % ref_mult or rw % ref_mult or rh < ref_mult or rw < ref_mult:
            raise ValueError(f'reference size {rh}x{rw} is not a positive multiple of {ref_mult} '
                             f'(4 x the search stride); crop or pad it')

    def forward(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor] = None,
                ref_downup: Optional[torch.Tensor] = None, return_aux: bool = False):
        """Images in [0, 1]: ``lr`` [N,3,h,w], ``ref`` [N,3,H,W], optionally the dataset-made ``lr_up`` [N,3,4h,4w]
        and ``ref_downup`` [N,3,H,W]. Returns SR in [0, 1] [N,3,4h,4w]; with ``return_aux`` a dict that also holds
        the soft attention ``S`` and textures ``T_lv3``/``T_lv2``/``T_lv1`` (lists over top-k ranks)."""
        self.check_inputs(lr, ref, lr_up, ref_downup)
        if lr_up is None:
            lr_up = make_lr_up(lr)
        return self.forward_features(lr, lr_up, self.encode_reference(ref, ref_downup), return_aux=return_aux)
