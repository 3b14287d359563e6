"""What EXTRACTER and TTSR share at the model boundary: input checks, the down/up-sampled inputs, [0,1] <-> [-1,1],
the forward pass over one or several encoded references, and the pieces of their descriptors
(:mod:`extracter.archs.descriptor`) that both state the same way.

Everything outside ``archs/`` asks the architecture's descriptor (``descriptor_of(net)``) or the network
(:meth:`RefSRNet.size_multiples`, :meth:`RefSRNet.set_search_geometry`) instead of checking class names.
"""

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from extracter.archs.descriptor import ArchDescriptor, StateDict, count_indexed
from extracter.archs.layout import main_memory_format
from extracter.archs.vgg import Relu11FromImage
from extracter.search import SearchSpec

LV1_STORAGE = ('stored', 'recomputed')  # how an encoded reference keeps relu1_1 (ReferenceFeatures.lv1)
SCALE = 4  # the one upscaling factor of the RefSR archs (and of the datasets and the inference engine)


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

    ``search``: relu3_1 of the down-up-sampled reference (the search keys; None where only the textures are kept,
    as the inference engine does once it has searched); ``lv1``/``lv2``/``lv3``: relu1_1, relu2_1, relu3_1 of the
    reference (the transferred textures), ``lv1`` either the map or a :class:`~extracter.archs.vgg.Relu11FromImage`
    (the normalised image it is recomputed from, patch by patch: the memory planner's choice for large references);
    ``key_blocks``: optionally the normalised key patches of the chunked search
    (:meth:`SearchTransfer.prepare_keys`), valid for the geometry they were made with. Several references are a
    list: a reference's id is its position in that list.
    """

    search: Optional[torch.Tensor]
    lv1: Union[torch.Tensor, Relu11FromImage]
    lv2: torch.Tensor
    lv3: torch.Tensor
    key_blocks: Optional[List[torch.Tensor]] = None


References = Union[ReferenceFeatures, Sequence[ReferenceFeatures]]


def search_stride_multiples(options: Mapping[str, Any]) -> Tuple[int, int]:
    """(LR side multiple, reference side multiple) of a RefSR network with an adjustable search geometry built from
    complete options: the search stride and 4x the stride."""
    stride = int(options['stride'])
    return stride, SCALE * stride


def unit_stride_multiples(options: Mapping[str, Any]) -> Tuple[int, int]:
    """The same for a fixed search geometry of stride 1 (TTSR's), whatever ``options`` hold."""
    return 1, SCALE


def read_main_network(state: StateDict) -> Dict[str, Any]:
    """``n_feats`` and ``num_res_blocks`` of the CSFI main network (``main.*``) a state dict holds."""
    n_feats = int(state['main.SFE.conv_head.weight'].shape[0])
    blocks = [count_indexed(state, f'main.{p}') for p in ('SFE.RBs', 'RB11', 'RB21', 'RB31')]
    return {'n_feats': n_feats, 'num_res_blocks': blocks}


# what the weights of a RefSR network do not determine, with what ``detect`` reports
REFSR_NOT_DETECTED: Tuple[Tuple[str, str], ...] = (
    ('res_scale', 'not stored: the constructor default 1.0 (as released)'),
    ('search_mode, chunk_size, key_chunk_size', 'how the search runs, not stored: constructor defaults'),
    ('dfe_requires_grad / lte_requires_grad', 'training only, not stored: constructor default'),
)


class RefSRNet(nn.Module):
    """Base class: subclasses state their :class:`~extracter.archs.descriptor.ArchDescriptor` (``@describe(...)``),
    hold ``search_transfer`` (a SearchTransfer), ``n_feats`` and the extractor named by
    ``descriptor.feature_extractor``, and implement ``_reconstruct`` (the main network, from the LR in [-1, 1] and
    the transferred textures).

    The RefSR contract, the paper-level steps the inference engine (:mod:`extracter.inference`) and the tiles call,
    each with the call's :class:`~extracter.search.spec.SearchSpec` (``spec=None``: the network's default):

    1. :meth:`search_spec` (a call's spec, checked against the architecture) and :meth:`size_multiples` (what the
       inputs are padded to), :meth:`check_inputs`;
    2. encode each reference for the search: :meth:`encode_keys`; the LR's queries: :meth:`search_features`;
    3. search the union of the references: :meth:`search` -> (scores, index) [N, top_k, L];
    4. encode each reference for the transfer: :meth:`encode_texture_features`;
    5. transfer and reconstruct an LR (or a tile of it, with its window of the search result):
       :meth:`forward_features` (:meth:`transfer`, then :meth:`reconstruct`).

    An architecture of another design implements the same steps (its own encodings, search and transfer).
    ``forward`` (training) is :meth:`encode_reference` followed by :meth:`forward_features`.
    """

    descriptor: ClassVar[ArchDescriptor]
    search_transfer: nn.Module
    n_feats: int

    def set_main_width(self, n_feats: int, num_res_blocks) -> None:
        """The main network's width and block counts ([shallow features, stage 1, stage 2, stage 3]), checked."""
        from extracter.archs.modules import parse_block_counts

        if n_feats < 2 or n_feats % 2:
            raise ValueError(f'n_feats must be a positive even number, got {n_feats}')
        self.n_feats = n_feats
        self.num_res_blocks = parse_block_counts(num_res_blocks, 4, 'num_res_blocks')

    # ------------------------------------------------------------------ facts (the descriptor's)
    def feature_extractor(self) -> nn.Module:
        """The VGG-19 texture extractor (EXTRACTER's DFE, TTSR's LTE)."""
        return getattr(self, self.descriptor.feature_extractor)

    def scale_of(self) -> int:
        return SCALE

    @property
    def min_tile_pad(self) -> int:
        """The tile padding below which tiles differ from the untiled result (``descriptor.min_tile_pad``)."""
        return self.descriptor.min_tile_pad

    @property
    def default_search_spec(self) -> SearchSpec:
        """The search this network runs when a call passes no spec: its constructor geometry and method."""
        return self.search_transfer.default_spec

    def search_spec(self, spec: Optional[SearchSpec] = None, **changes) -> SearchSpec:
        """The spec of one call: ``spec`` (default: :attr:`default_search_spec`) with ``changes``
        (:meth:`SearchSpec.replace`: ``method``, ``geometry``, block sizes, ...), checked against this architecture
        (EXTRACTER's dynamic window and stride: any geometry; TTSR: its own only)."""
        if spec is not None and not isinstance(spec, SearchSpec):
            raise TypeError(f'spec must be a SearchSpec (extracter.search.SearchSpec), got {type(spec).__name__}')
        base = self.default_search_spec if spec is None else spec
        spec = base.replace(**changes)
        default = self.default_search_spec
        if not self.descriptor.adjustable_geometry and spec.geometry != default.geometry:
            w, s, p = default.geometry
            raise ValueError(f'{type(self).__name__} has a fixed search geometry (window {w}, stride {s}, padding '
                             f'{p}); only EXTRACTER can change it')
        return self.search_transfer.check_spec(spec)

    def set_search_geometry(self, window: int, stride: int, padding: int) -> None:
        """Change the default search geometry of trained weights (EXTRACTER's dynamic window and stride; TTSR
        accepts only its own). A configuration step before use: concurrent callers pass a spec per call instead
        (:meth:`search_spec`)."""
        self.search_transfer.default_spec = self.search_spec(geometry=(window, stride, padding))

    def _reconstruct(self, lr_m11: torch.Tensor, S, T_lv3, T_lv2, T_lv1) -> torch.Tensor:
        raise NotImplementedError

    def set_search_mode(self, mode: Optional[str] = None, chunk_size: Optional[int] = None,
                        key_chunk_size: Optional[int] = None, cache_keys: Optional[bool] = None) -> None:
        """Change the default search method (``'dense'``: faithful; ``'chunked'``: bounded memory, same result;
        ...) and its block sizes; a configuration step, as :meth:`set_search_geometry`."""
        self.search_transfer.set_chunking(mode, chunk_size, key_chunk_size, cache_keys)

    def encode_reference(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor] = None,
                         tile_size: Optional[int] = None, lv1: str = 'stored') -> ReferenceFeatures:
        """Texture features of the reference ``ref`` [N,3,H,W] in [0, 1] (computed once, searched by every tile):
        :meth:`encode_search_keys` and :meth:`encode_textures` (``tile_size``, ``lv1``: see there)."""
        search = self.encode_search_keys(ref, ref_downup, tile_size)
        lv1_feat, lv2, lv3 = self.encode_textures(ref, tile_size, lv1)
        return ReferenceFeatures(search=search, lv1=lv1_feat, lv2=lv2, lv3=lv3)

    def encode_search_keys(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor] = None,
                           tile_size: Optional[int] = None) -> torch.Tensor:
        """relu3_1 of the down-up-sampled reference (made from ``ref`` when None): the search keys. ``tile_size``:
        VGG-19 runs in tiles of that many reference pixels (:meth:`TextureExtractor.encode_tiled`: the same features,
        one tile's transient memory)."""
        if ref_downup is None:
            ref_downup = make_ref_downup(ref)
        return self.feature_extractor().encode_tiled(ref_downup, tile_size, levels=(3,),
                                                     memory_format=torch.contiguous_format)[0]  # the search's layout

    def encode_textures(self, ref: torch.Tensor, tile_size: Optional[int] = None, lv1: str = 'stored'
                        ) -> Tuple[Union[torch.Tensor, Relu11FromImage], torch.Tensor, torch.Tensor]:
        """relu1_1, relu2_1 and relu3_1 of the reference (the transferred textures), VGG-19 in tiles of
        ``tile_size`` reference pixels when given. ``lv1``: ``'stored'`` (the relu1_1 map, 256 bytes per reference
        pixel) or ``'recomputed'`` (a :class:`Relu11FromImage`, 12 bytes per pixel; the transfer recomputes the
        pixels it gathers)."""
        if lv1 not in LV1_STORAGE:
            raise ValueError(f'lv1 storage must be one of {LV1_STORAGE}, got {lv1!r}')
        extractor = self.feature_extractor()
        if lv1 == 'stored':
            lv1_feat, lv2, lv3 = extractor.encode_tiled(ref, tile_size, levels=(1, 2, 3))
            return lv1_feat, lv2, lv3
        lv2, lv3 = extractor.encode_tiled(ref, tile_size, levels=(2, 3))
        return extractor.relu1_1_source(ref), lv2, lv3

    def encode_keys(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor] = None,
                    tile_size: Optional[int] = None, spec: Optional[SearchSpec] = None) -> ReferenceFeatures:
        """The contract's first step for a reference: what the search needs of it, and nothing else (its keys, and
        what ``spec``'s method prepares once per reference). The inference engine encodes the textures only after
        the search (:meth:`encode_texture_features`), so that the two never share memory."""
        spec = self.search_spec(spec)
        keys = self.encode_search_keys(ref, ref_downup, tile_size)
        return ReferenceFeatures(keys, None, None, None, spec.search_method.prepare(keys, spec))

    def encode_texture_features(self, ref: torch.Tensor, tile_size: Optional[int] = None, lv1: str = 'stored',
                                spec: Optional[SearchSpec] = None) -> ReferenceFeatures:
        """The contract's step after the search: what the transfer reads of a reference (its textures, in the
        layout ``spec``'s transfer reads fastest), without its search keys."""
        spec = self.search_spec(spec)
        textures = self.encode_textures(ref, tile_size, lv1)
        return ReferenceFeatures(None, *(self.search_transfer.transfer_layout(t, spec) for t in textures))

    def search_features(self, lr_up: torch.Tensor) -> torch.Tensor:
        """relu3_1 of the upsampled LR (the search queries), at the LR size."""
        return self.feature_extractor()(lr_up)[2].contiguous()  # the search's layout (NCHW)

    def search(self, lr_feat: torch.Tensor, refs: References, spec: Optional[SearchSpec] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k over the union of the references' patches (TTSR Eq. 4-5, 7): (scores, index) [N, top_k, L], the
        index running over the references' patches in order (see :meth:`SearchTransfer.search`). ``spec``: this
        call's search (default: the network's)."""
        refs = as_reference_list(refs)
        if any(r.search is None for r in refs):
            raise ValueError('an encoded reference without its search keys (only its textures) cannot be searched; '
                             'pass the search result (search=...) or encode it with encode_reference')
        return self.search_transfer.search(lr_feat, [r.search for r in refs], [r.key_blocks for r in refs], spec)

    def transfer(self, search: Tuple[torch.Tensor, torch.Tensor], lr_hw: Tuple[int, int], refs: References,
                 spec: Optional[SearchSpec] = None):
        """The soft attention and textures (lists over ranks, TTSR Eq. 6-7) of a search result for an LR of
        ``lr_hw`` pixels (relu3_1 is at the LR size)."""
        refs = as_reference_list(refs)
        return self.search_transfer.transfer(search[0], search[1], lr_hw, [r.lv1 for r in refs],
                                             [r.lv2 for r in refs], [r.lv3 for r in refs], spec)

    def forward_features(self, lr: torch.Tensor, lr_up: Optional[torch.Tensor], ref_feats: References,
                         return_aux: bool = False, search: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                         spec: Optional[SearchSpec] = None):
        """SR of ``lr`` [N,3,h,w] in [0, 1] (with its upsampled ``lr_up``) against one or several encoded references.
        No size checks: :meth:`forward` and :func:`extracter.inference.run_refsr` make them.

        ``search``: a precomputed (scores, index) [N, top_k, L] for this LR's patch grid (tiled inference searches
        the whole LR once); then ``lr_up`` is not used. With ``return_aux`` a dict that also holds the soft attention
        ``S``, the textures and the search result (``scores``, ``index``). ``spec``: this call's search (default:
        the network's)."""
        refs = as_reference_list(ref_feats)
        if search is None:
            search = self.search(self.search_features(lr_up), refs, spec)
        S, T_lv3, T_lv2, T_lv1 = self.transfer(search, tuple(lr.shape[-2:]), refs, spec)
        sr = self.reconstruct(lr, S, T_lv3, T_lv2, T_lv1)
        if return_aux:
            return {'sr': sr, 'S': S, 'T_lv3': T_lv3, 'T_lv2': T_lv2, 'T_lv1': T_lv1, 'scores': search[0],
                    'index': search[1]}
        return sr

    def reconstruct(self, lr: torch.Tensor, S: List[torch.Tensor], T_lv3: List[torch.Tensor],
                    T_lv2: List[torch.Tensor], T_lv1: List[torch.Tensor],
                    memory_format: Optional[torch.memory_format] = None) -> torch.Tensor:
        """The main network: SR [N,3,4h,4w] in [0, 1] (NCHW) from ``lr`` [N,3,h,w] in [0, 1] and the transfer's soft
        attention and textures (lists over the top-k ranks, converted in place to the layout used).

        ``memory_format``: the layout of the main network's activations, default :func:`main_memory_format` (NHWC
        for CPU inference). The result equals the NCHW one up to float rounding (~1e-7)."""
        fmt = main_memory_format(lr) if memory_format is None else memory_format
        if fmt is not torch.contiguous_format:
            lr = lr.contiguous(memory_format=fmt)
            for maps in (S, T_lv3, T_lv2, T_lv1):  # one at a time, so that the NCHW copies are freed as we go
                for i, t in enumerate(maps):
                    maps[i] = t.contiguous(memory_format=fmt)
        return ((self._reconstruct(lr * 2 - 1, S, T_lv3, T_lv2, T_lv1) + 1) / 2).contiguous()

    def size_multiples(self, spec: Optional[SearchSpec] = None) -> Tuple[int, int]:
        """(LR side multiple, reference side multiple) that the search geometry (``spec``'s, default the
        network's) needs."""
        stride = (self.default_search_spec if spec is None else spec).stride
        return stride, SCALE * stride

    required_multiples = size_multiples  # the earlier name, kept for callers

    def check_inputs(self, lr: torch.Tensor, ref: torch.Tensor, lr_up: Optional[torch.Tensor],
                     ref_downup: Optional[torch.Tensor], spec: Optional[SearchSpec] = None) -> None:
        check_image_pair(lr, ref, lr_up, ref_downup)
        lr_mult, ref_mult = self.size_multiples(spec)
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


def as_reference_list(refs: References) -> List[ReferenceFeatures]:
    """One encoded reference or several, as a list (a reference's id is its position)."""
    refs = [refs] if isinstance(refs, ReferenceFeatures) else list(refs)
    if not refs:
        raise ValueError('at least one encoded reference is needed')
    return refs
