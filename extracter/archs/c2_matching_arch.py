"""C2-Matching (Jiang et al., "Robust Reference-based Super-Resolution via C2-Matching", ICCV 2021): contrastive
correspondence (two VGG-16 branches to conv3_1, 3x3 patch matching) -> flow-pre-offset modulated deformable
convolutions over the reference's VGG-19 relu1_1/2_1/3_1 -> restoration over the bilinear x4 LR.

The three networks of the original (``net_extractor``: ContrasExtractorSep, ``net_map``:
CorrespondenceGenerationArch with its VGG-19, ``net_g``: RestorationNet) are one module here: ``contras``,
``vgg`` and ``restoration``. Its correspondence is the network's own stage behind :meth:`C2Matching.search`, not a
registered search method (docs/architecture.md, "Adding an architecture"): its queries and keys are learned
contrastive features, its result feeds deformable offsets, not a transfer, and the restoration net also reads the
reference's features at the LR's own positions, which ties one reference to the LR's geometry (the reference has
the output's size; :func:`extracter.inference.run_refsr` pads both to a common size, as the original's test set
does).
"""

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from extracter.archs.c2_matching.contras_extractor import ContrasExtractorSep
from extracter.archs.c2_matching.correspondence import correspondence, index_to_flow, pre_offsets
from extracter.archs.c2_matching.restoration import RestorationNet
from extracter.archs.descriptor import StateDict, count_indexed, describe
from extracter.archs.refsr_base import (
    SCALE,
    ReferenceFeatures,
    References,
    RefSRNet,
    as_reference_list,
    check_image_pair,
)
from extracter.archs.vgg import ENCODE_ALIGN, ENCODE_MARGIN, ExtractorInit, TextureExtractor
from extracter.registry import ARCH_REGISTRY
from extracter.search import SearchSpec
from extracter.utils.malloc import trim_freed_memory

# The tile padding (benchmarks/measure_tile_pad.py, released size with PyTorch's default initialisation: largest
# difference to the untiled SR 3.8e-4 at pad 8, 1.6e-5 at 12, 4e-7 at 16): one step above the 5e-4 rule, as no
# trained weights are here to measure and trained EXTRACTER weights reach further than random ones
# (docs/benchmarks/large_images_notes.md, "Tile padding").
C2_MIN_TILE_PAD = 12
# The planner's profile: the restoration's activations per LR pixel in ngf-channel x4 maps (with the aggregations in
# bands, C2_DCN_BAND_BYTES): from RSS peaks on CPU of untiled 256-768 px outputs (8.5) and of 640 px tiles of a
# 1024 px output (10.4, glibc's fragments of the tiles' mid-size blocks included), rounded up; the fixed part is
# memory_plan.OWN_OVERHEAD (docs/benchmarks/c2matching_memory).
C2_MAIN_MAPS_PER_LR_PX = 11.0
# Inference (no gradients) evaluates the three dynamic aggregations in bands of output rows holding at most this
# many bytes of transient tensors (the deformable convolutions' columns, offsets and masks: in one call 9x the
# aggregated map and more; restoration.band_rows): the same result up to float rounding at a fraction of the memory.
C2_DCN_BAND_BYTES = 64 * 2 ** 20
# the correspondence's grid, stated as a search geometry: 3x3 patches, stride 1, one result per LR feature pixel;
# correlation blocks of 2048 reference patches (the same argmax at any size; at 768 px on the idle 2-core CPU 22.5 s
# against 26.0 s for the original's 512 Mi-float blocks, 8192 patches there, with a quarter of their memory)
C2_SPEC = SearchSpec(method='dense', window=3, stride=1, padding=1, key_chunk_size=2048)


def c2_multiples(options) -> Tuple[int, int]:
    """Any LR size (the contrastive VGG-16 pools the x4 upsampled LR twice); the reference a multiple of 4."""
    return 1, SCALE


def read_c2_options(state: StateDict) -> Dict[str, Any]:
    """C2Matching's ``network_g`` as far as its weights (our key names) determine it."""
    key = 'restoration.content_extractor.conv_first.weight'
    if key not in state or 'contras.feature_extraction_image1.model.conv1_1.weight' not in state:
        raise ValueError('not a C2Matching state dict')
    groups = int(state['restoration.dyn_agg_restore.large_dyn_agg.conv_offset_mask.weight'].shape[0]) // 27
    return {'type': 'C2Matching', 'ngf': int(state[key].shape[0]),
            'n_blocks': count_indexed(state, 'restoration.content_extractor.body'), 'groups': groups}


def encode_tiled(layer: nn.Module, x: torch.Tensor, tile_size: Optional[int]) -> torch.Tensor:
    """``layer(x)`` (a contrastive branch: VGG-16 to conv3_1, 1/4 of ``x``'s size) in tiles of ``tile_size`` input
    pixels with :data:`ENCODE_MARGIN` of context (VGG-16 and VGG-19 are alike up to conv3_1: the margin of
    ``TextureExtractor.encode_tiled``), written into one tensor: one tile's transient memory, the untiled result up
    to float rounding. Untiled when ``tile_size`` is None, the image fits one tile, or its sides are not multiples
    of 4."""
    n, _, h, w = x.shape
    if tile_size is None or (h <= tile_size and w <= tile_size) or h % ENCODE_ALIGN or w % ENCODE_ALIGN:
        return layer(x)
    size = max(ENCODE_ALIGN, tile_size // ENCODE_ALIGN * ENCODE_ALIGN)
    pad = -(-ENCODE_MARGIN // ENCODE_ALIGN) * ENCODE_ALIGN
    out: Optional[torch.Tensor] = None
    for y0 in range(0, h, size):
        y1, iy0, iy1 = min(h, y0 + size), max(0, y0 - pad), min(h, y0 + size + pad)
        for x0 in range(0, w, size):
            x1, ix0, ix1 = min(w, x0 + size), max(0, x0 - pad), min(w, x0 + size + pad)
            feat = layer(x[:, :, iy0:iy1, ix0:ix1])
            if out is None:
                out = feat.new_empty(n, feat.size(1), h // 4, w // 4)
            out[:, :, y0 // 4:y1 // 4, x0 // 4:x1 // 4] = feat[:, :, (y0 - iy0) // 4:(y1 - iy0) // 4,
                                                              (x0 - ix0) // 4:(x1 - ix0) // 4]
    return out


@ARCH_REGISTRY.register()
@describe(
    uses_reference=True, scale=SCALE, multiples=c2_multiples, min_tile_pad=C2_MIN_TILE_PAD,
    main_maps_per_lr_px=C2_MAIN_MAPS_PER_LR_PX,
    feature_extractor='vgg', feature_extractor_init='vgg_init', adjustable_geometry=False, own_search=True,
    reference_size='output', read_options=read_c2_options,
    not_detected=(('vgg_requires_grad, contras_requires_grad', 'training only, not stored: constructor defaults'),),
    init_only_options=('vgg19_path', 'contras_path'), converters=('c2matching-official',),
)
class C2Matching(RefSRNet):
    """C2-Matching with the released configuration by default (64 features, 16 blocks per stage, 8 deformable
    groups). Takes images in [0, 1]; the reference must have the output's size (4x the LR).

    Args:
        ngf: channels of the restoration network.
        n_blocks: residual blocks of the content extractor and of each stage.
        groups: deformable groups of the three dynamic aggregations.
        vgg_init: ``'vgg19'`` (the local canonical VGG-19 file: net_map's VGG-19, in no released checkpoint) or
            ``'random'``.
        vgg19_path: the canonical VGG-19 file.
        vgg_requires_grad: train the VGG-19 (the original keeps it frozen).
        contras_requires_grad: train the contrastive extractor with the restoration (the original's stage 3 keeps
            the stage-2 student frozen; stages 1-2 train it on their own).
        contras_path: a contrastive extractor checkpoint to start from (stage 3: the stage-2 student, ours or
            converted; ``{'params': ...}`` or a bare ``ContrasExtractorSep`` state dict).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 16, groups: int = 8, vgg_init: ExtractorInit = 'vgg19',
                 vgg19_path: Optional[str] = None, vgg_requires_grad: bool = False,
                 contras_requires_grad: bool = False, contras_path: Optional[str] = None) -> None:
        super().__init__()
        if ngf < 2 or ngf % 2:
            raise ValueError(f'ngf must be a positive even number, got {ngf}')
        if n_blocks < 1:
            raise ValueError(f'n_blocks must be >= 1, got {n_blocks}')
        self.n_feats = ngf
        self.contras = ContrasExtractorSep()
        if contras_path is not None:
            from extracter.utils.checkpoint import load_checkpoint, network_state

            self.contras.load_state_dict(network_state(load_checkpoint(contras_path), contras_path), strict=True)
        self.contras.requires_grad_(contras_requires_grad)
        self.vgg = TextureExtractor(init=vgg_init, vgg19_path=vgg19_path, requires_grad=vgg_requires_grad)
        self.restoration = RestorationNet(ngf, n_blocks, groups)

    # ------------------------------------------------------------------ the search: the network's own stage
    @property
    def default_search_spec(self) -> SearchSpec:
        return C2_SPEC

    def search_spec(self, spec: Optional[SearchSpec] = None, **changes) -> SearchSpec:
        """:data:`C2_SPEC` with the call's ``key_chunk_size`` (reference patches per correlation block: memory only,
        the same result): the correspondence has one geometry, and no search method applies to it."""
        asked = (C2_SPEC if spec is None else spec).replace(**changes)
        if asked.geometry != C2_SPEC.geometry:
            raise ValueError('C2Matching has a fixed correspondence (3x3 patches, stride 1); only EXTRACTER can '
                             'change the search geometry')
        return C2_SPEC.replace(key_chunk_size=asked.key_chunk_size)

    def set_search_geometry(self, window: int, stride: int, padding: int) -> None:
        self.search_spec(geometry=(window, stride, padding))

    def set_search_mode(self, mode: Optional[str] = None, chunk_size: Optional[int] = None,
                        key_chunk_size: Optional[int] = None, cache_keys: Optional[bool] = None) -> None:
        """No search method applies (the correspondence is the network's own stage); accepted and ignored."""

    def size_multiples(self, spec: Optional[SearchSpec] = None) -> Tuple[int, int]:
        return c2_multiples(None)

    required_multiples = size_multiples

    def check_inputs(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor],
                     ref_downup: Optional[torch.Tensor], spec: Optional[SearchSpec] = None) -> None:
        check_image_pair(lr, ref, lr_up, ref_downup)
        h, w = lr.shape[-2:]
        if tuple(ref.shape[-2:]) != (SCALE * h, SCALE * w):
            raise ValueError(f'C2Matching needs the reference at the output size {SCALE * h}x{SCALE * w} (4x the '
                             f'LR), got {tuple(ref.shape[-2:])}; run_refsr pads both to a common size')
        if h < 3 or w < 3:
            raise ValueError(f'C2Matching needs an LR of at least 3x3 pixels, got {h}x{w}')

    def encode_search_keys(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor] = None,
                           tile_size: Optional[int] = None) -> torch.Tensor:
        """The reference's contrastive features (the second branch sees the reference itself, not a down-up copy),
        in tiles of ``tile_size`` reference pixels when given (:func:`encode_tiled`)."""
        return encode_tiled(self.contras.feature_extraction_image2, ref, tile_size)

    def encode_keys(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor] = None,
                    tile_size: Optional[int] = None, spec: Optional[SearchSpec] = None) -> ReferenceFeatures:
        return ReferenceFeatures(self.encode_search_keys(ref, None, tile_size), None, None, None)

    def search_features(self, lr_up: torch.Tensor) -> torch.Tensor:
        """The upsampled LR's contrastive features (conv3_1 of the first branch), at the LR size."""
        return self.contras.feature_extraction_image1(lr_up)

    def search(self, lr_feat: torch.Tensor, refs: References, spec: Optional[SearchSpec] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The correspondence (:func:`~extracter.archs.c2_matching.correspondence.correspondence`): (scores, index)
        [N, 1, h*w] over the one reference's feature pixels."""
        refs = as_reference_list(refs)
        if len(refs) != 1:
            raise ValueError(f'C2Matching takes one reference per image, got {len(refs)}')
        if refs[0].search is None:
            raise ValueError('an encoded reference without its search keys cannot be searched')
        return correspondence(lr_feat, refs[0].search, self.search_spec(spec).key_chunk_size)

    # ------------------------------------------------------------------ textures and restoration
    def encode_textures(self, ref: torch.Tensor, tile_size: Optional[int] = None, lv1: str = 'stored'):
        """relu1_1, relu2_1, relu3_1 of the reference (net_map's VGG-19), NCHW: the deformable convolutions read
        them whole (relu1_1 is always stored)."""
        return self.vgg.encode_tiled(ref, tile_size, levels=(1, 2, 3), memory_format=torch.contiguous_format)

    def encode_texture_features(self, ref: torch.Tensor, tile_size: Optional[int] = None, lv1: str = 'stored',
                                spec: Optional[SearchSpec] = None) -> ReferenceFeatures:
        return ReferenceFeatures(None, *self.encode_textures(ref, tile_size))

    def encode_reference(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor] = None,
                         tile_size: Optional[int] = None, lv1: str = 'stored') -> ReferenceFeatures:
        lv1_feat, lv2, lv3 = self.encode_textures(ref, tile_size)
        return ReferenceFeatures(self.encode_search_keys(ref), lv1_feat, lv2, lv3)

    def forward_features(self, lr: torch.Tensor, lr_up: Optional[torch.Tensor], ref_feats: References,
                         return_aux: bool = False, search: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                         spec: Optional[SearchSpec] = None, origin: Optional[Tuple[int, int]] = None):
        """SR [N,3,4h,4w] (unclamped, as the original) of ``lr`` against one encoded reference (its textures at the
        output size); ``search``: the correspondence already computed (then ``lr_up`` is not used). ``origin``: a
        tile's top-left pixel in the whole LR (``lr`` and ``search`` are the tile's windows, the reference whole);
        the reference features are read at the tile's place and sampled anywhere."""
        refs = as_reference_list(ref_feats)
        if len(refs) != 1:
            raise ValueError(f'C2Matching takes one reference per image, got {len(refs)}')
        ref = refs[0]
        if search is None:
            search = self.search(self.search_features(lr_up), refs, spec)
        h, w = lr.shape[-2:]
        flow = index_to_flow(search[1], (h, w), ref.lv3.size(-1), origin or (0, 0))
        ref_feat = {'relu1_1': ref.lv1, 'relu2_1': ref.lv2, 'relu3_1': ref.lv3}
        whole = origin is None or (tuple(ref.lv3.shape[-2:]) == (h, w))
        band = None if torch.is_grad_enabled() else C2_DCN_BAND_BYTES
        sr = self.restoration(lr, pre_offsets(flow), ref_feat, None if whole else origin, band)
        if not whole and not torch.is_grad_enabled():  # a tile: its many mid-size blocks would fragment the heap
            trim_freed_memory()
        if return_aux:
            return {'sr': sr, 'scores': search[0], 'index': search[1]}
        return sr
