"""EXTRACTER (Reyes-Saldana & Rivera, arXiv 2310.01379).

DFE (VGG-19 to relu3_1) -> Search & Transfer (top-k hard/soft attention, windows k/2k/4k) -> CSFI main network
(one fusion head per rank and level) -> GDE (gradient density enhancing) -> SR image.
"""

from typing import Any, Dict, Optional, Sequence, Union

import torch

from extracter.archs.csfi import CSFIMainNet
from extracter.archs.descriptor import StateDict, count_indexed, describe
from extracter.archs.gde import GDE
from extracter.archs.modules import parse_block_counts
from extracter.archs.refsr_base import REFSR_NOT_DETECTED, SCALE, RefSRNet, read_main_network, search_stride_multiples
from extracter.archs.search_transfer import SearchMode, SearchTransfer
from extracter.archs.vgg import ExtractorInit, TextureExtractor
from extracter.registry import ARCH_REGISTRY

BlockCounts = Union[str, Sequence[int]]


def read_extracter_options(state: StateDict) -> Dict[str, Any]:
    """EXTRACTER's ``network_g`` as far as its weights (our key names) determine it: width, block counts, top-k."""
    if 'gde.SFE.conv_head.weight' not in state or 'dfe.slice1.0.weight' not in state:
        raise ValueError('not an EXTRACTER state dict: no gde.SFE.conv_head.weight / dfe.slice1.0.weight')
    return {'type': 'Extracter', **read_main_network(state),
            'num_grad_blocks': [count_indexed(state, f'gde.{p}') for p in ('SFE.RBs', 'grad_12', 'grad_23', 'grad_33')],
            'top_k': count_indexed(state, 'main.conv11_head')}


@ARCH_REGISTRY.register()
@describe(
    uses_reference=True, scale=SCALE, multiples=search_stride_multiples, min_tile_pad=8, main_maps_per_lr_px=19.0,
    feature_extractor='dfe', feature_extractor_init='dfe_init', adjustable_geometry=True,
    read_options=read_extracter_options, init_only_options=('vgg19_path',), converters=('extracter-official',),
    not_detected=REFSR_NOT_DETECTED + (
        ('window, stride, padding', 'the search geometry is not stored: the constructor defaults 3/1/1 (as released; '
                                    'the paper evaluates with 6/2/2, which the same weights take)'),),
)
class Extracter(RefSRNet):
    """EXTRACTER. Defaults are the released ``train.py`` configuration (blocks 8+16+8+4 / 8+9+9+9, top-k 2,
    window 3 / stride 1 / padding 1); the released notebook uses 2+8+8+4 / 2+9+9+9 and top-k 3; the paper's
    geometry is window 6 / stride 2 / padding 2.

    Args:
        num_res_blocks: residual blocks of [shallow features, stage 1, stage 2, stage 3].
        num_grad_blocks: residual blocks of the GDE module [shallow gradient features, x1, x2, x4 fusion].
        n_feats: channels of the main network.
        res_scale: residual scaling of the main network's blocks.
        top_k: reference patches transferred per LR patch (one fusion head each).
        window, stride, padding: search geometry at relu3_1; change later with :meth:`set_search_geometry`.
        dfe_init: ``'vgg19'`` (local canonical VGG-19 file) or ``'random'``.
        vgg19_path: the canonical VGG-19 file (default ``experiments/pretrained_models/vgg19_canonical.pth``).
        dfe_requires_grad: train the DFE (the original does, with its own learning rate).
        search_mode: ``'dense'`` (faithful) or ``'chunked'`` (bounded memory, same output); see
            :class:`~extracter.archs.search_transfer.SearchTransfer`.
        chunk_size, key_chunk_size: LR / reference patches per block of the chunked search.
    """

    def __init__(
        self,
        num_res_blocks: BlockCounts = (8, 16, 8, 4),
        num_grad_blocks: BlockCounts = (8, 9, 9, 9),
        n_feats: int = 64,
        res_scale: float = 1.0,
        top_k: int = 2,
        window: int = 3,
        stride: int = 1,
        padding: int = 1,
        dfe_init: ExtractorInit = 'vgg19',
        vgg19_path: Optional[str] = None,
        dfe_requires_grad: bool = True,
        search_mode: SearchMode = 'dense',
        chunk_size: int = 4096,
        key_chunk_size: int = 8192,
    ) -> None:
        super().__init__()
        self.set_main_width(n_feats, num_res_blocks)
        self.num_grad_blocks = parse_block_counts(num_grad_blocks, 4, 'num_grad_blocks')
        self.dfe = TextureExtractor(init=dfe_init, vgg19_path=vgg19_path, requires_grad=dfe_requires_grad)
        self.search_transfer = SearchTransfer(window, stride, padding, top_k=top_k, overlap_norm='exact',
                                              mode=search_mode, chunk_size=chunk_size,
                                              key_chunk_size=key_chunk_size)
        self.main = CSFIMainNet(self.num_res_blocks, n_feats, res_scale, top_k,
                                texture_attention=True, out_conv=False)
        self.gde = GDE(self.num_grad_blocks, n_feats, res_scale)

    def _reconstruct(self, lr_m11: torch.Tensor, S, T_lv3, T_lv2, T_lv1) -> torch.Tensor:
        merged, x31, x32, x33 = self.main(lr_m11, S, T_lv3, T_lv2, T_lv1)
        return self.gde((lr_m11 + 1) / 2, merged, x31, x32, x33)
