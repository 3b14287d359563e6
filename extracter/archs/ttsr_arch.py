"""TTSR (Yang et al., CVPR 2020), the baseline: LTE -> 3x3 hard/soft attention (top-1) -> CSFI main network."""

from typing import Any, Dict, Optional, Sequence, Union

import torch

from extracter.archs.csfi import CSFIMainNet
from extracter.archs.descriptor import StateDict, describe
from extracter.archs.refsr_base import REFSR_NOT_DETECTED, SCALE, RefSRNet, read_main_network, unit_stride_multiples
from extracter.archs.search_transfer import SearchMode, SearchTransfer
from extracter.archs.vgg import ExtractorInit, TextureExtractor
from extracter.registry import ARCH_REGISTRY


def read_ttsr_options(state: StateDict) -> Dict[str, Any]:
    """TTSR's ``network_g`` as far as its weights (our key names) determine it: width and block counts."""
    if 'lte.slice1.0.weight' not in state:
        raise ValueError('not a TTSR state dict: no lte.slice1.0.weight')
    return {'type': 'TTSR', **read_main_network(state)}


@ARCH_REGISTRY.register()
@describe(
    uses_reference=True, scale=SCALE, multiples=unit_stride_multiples, min_tile_pad=8, main_maps_per_lr_px=17.0,
    feature_extractor='lte', feature_extractor_init='lte_init', adjustable_geometry=False,
    read_options=read_ttsr_options, not_detected=REFSR_NOT_DETECTED, init_only_options=('vgg19_path',),
    converters=('ttsr-official', 'mmagic-ttsr'),
)
class TTSR(RefSRNet):
    """TTSR with the released configuration by default (16+16+8+4 residual blocks, 64 features).

    The search is TTSR's fixed geometry (window 3, stride 1, padding 1, top-1) with its constant 1/9 fold
    normalisation (see :mod:`extracter.archs.search_transfer`).

    Args:
        num_res_blocks: residual blocks of [shallow features, stage 1, stage 2, stage 3].
        n_feats: channels of the main network.
        res_scale: residual scaling.
        lte_init: ``'vgg19'`` (local canonical VGG-19 file) or ``'random'``.
        vgg19_path: the canonical VGG-19 file.
        lte_requires_grad: train the learnable texture extractor.
        search_mode: ``'dense'`` (faithful) or ``'chunked'`` (bounded memory, same output).
        chunk_size, key_chunk_size: LR / reference patches per block of the chunked search.
    """

    def __init__(
        self,
        num_res_blocks: Union[str, Sequence[int]] = (16, 16, 8, 4),
        n_feats: int = 64,
        res_scale: float = 1.0,
        lte_init: ExtractorInit = 'vgg19',
        vgg19_path: Optional[str] = None,
        lte_requires_grad: bool = True,
        search_mode: SearchMode = 'dense',
        chunk_size: int = 4096,
        key_chunk_size: int = 8192,
    ) -> None:
        super().__init__()
        self.set_main_width(n_feats, num_res_blocks)
        self.lte = TextureExtractor(init=lte_init, vgg19_path=vgg19_path, requires_grad=lte_requires_grad)
        self.search_transfer = SearchTransfer(3, 1, 1, top_k=1, overlap_norm='ttsr', mode=search_mode,
                                              chunk_size=chunk_size, key_chunk_size=key_chunk_size)
        self.main = CSFIMainNet(self.num_res_blocks, n_feats, res_scale, top_k=1,
                                texture_attention=False, out_conv=True)

    def _reconstruct(self, lr_m11: torch.Tensor, S, T_lv3, T_lv2, T_lv1) -> torch.Tensor:
        sr, _, _, _ = self.main(lr_m11, S, T_lv3, T_lv2, T_lv1)
        return sr
