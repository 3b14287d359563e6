"""The search-and-transfer stage of the TTSR-family networks (TTSR Sec. 3.2-3.3, EXTRACTER Sec. 3) as a
parameter-free module: the network's default :class:`~extracter.search.spec.SearchSpec` (its constructor geometry and
search method), its ``top_k`` and overlap normalisation, over the search subsystem (:mod:`extracter.search`).

Relevance (TTSR Eq. 4): cosine similarity between L2-normalised unfolded patches q_i of the upsampled LR and k_j of
the down-up-sampled reference, both at VGG relu3_1: ``r_ij = <q_i / |q_i|, k_j / |k_j|>``. Hard attention (Eq. 5):
the indices of the top-k most relevant reference patches for every LR patch; soft attention (Eq. 7): their
relevance scores. Transfer (Eq. 6): :mod:`extracter.search.transfer`. The methods (dense: the faithful default;
chunked: the same result in bounded memory; approximate: large inputs; others registered in
:mod:`extracter.search.methods`) are described in their modules.

Every method takes ``spec=``: the settings of that call (None: the module's default spec). Nothing a call passes is
stored, so one network serves several threads with different specs.

EXTRACTER's released code passes padding and stride to ``unfold`` swapped in the search; that only works when
padding == stride (true for both released geometries, window 3s / stride s / padding s). We pass them in the right
order, which equals the original wherever the original works, and also allows other geometries.

Several references (our extension; neither paper does this): the top-k over the union of their patches
(:func:`extracter.search.search_references`); the index runs over the references' patches in order.
"""

from typing import List, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from extracter.search import SearchSpec, get_method, method_names, search_references
from extracter.search import transfer as transfer_ops
from extracter.search.methods.approximate import ApproximateSettings
from extracter.search.methods.exact import KeyBlocks, prepare_key_blocks
from extracter.search.spec import FEATURE_CHANNELS
from extracter.search.transfer import OVERLAP_NORMS, ComputedMap, split_index, transfer, transfer_layout

__all__ = ['EXACT_MODES', 'FEATURE_CHANNELS', 'OVERLAP_NORMS', 'SEARCH_MODES', 'SearchMode', 'SearchTransfer',
           'split_index']

SEARCH_MODES = method_names()  # every registered search method
EXACT_MODES = tuple(m for m in SEARCH_MODES if get_method(m).exact)
SearchMode = Literal[SEARCH_MODES]  # constructor annotations (the option schema checks the choice)
Maps = Union[torch.Tensor, Sequence[torch.Tensor]]
TextureMap = Union[torch.Tensor, ComputedMap]


def _as_list(x: Maps) -> List[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


class SearchTransfer(nn.Module):
    """Search & transfer with a default :class:`SearchSpec`; parameter-free.

    Args:
        window, stride, padding: the default search geometry at relu3_1 (x2 and x4 at relu2_1 and relu1_1).
        top_k: reference patches kept per LR patch (a fact of the network: its main network takes top_k textures).
        overlap_norm: ``'exact'`` or ``'ttsr'`` (see :mod:`extracter.search.transfer`).
        mode: the default search method (``'dense'``, ``'chunked'``, ``'approximate'``, ...).
        chunk_size, key_chunk_size, cache_keys, approximate: the default spec's block sizes, key caching and
            approximate settings (see :class:`SearchSpec`).
    """

    def __init__(self, window: int = 3, stride: int = 1, padding: int = 1, top_k: int = 1,
                 overlap_norm: str = 'exact', mode: str = 'dense', chunk_size: int = 4096,
                 key_chunk_size: int = 8192, cache_keys: bool = False,
                 approximate: Optional[ApproximateSettings] = None) -> None:
        super().__init__()
        if overlap_norm not in OVERLAP_NORMS:
            raise ValueError(f'overlap_norm must be one of {OVERLAP_NORMS}, got {overlap_norm!r}')
        if top_k < 1:
            raise ValueError(f'top_k must be >= 1, got {top_k}')
        self.top_k = int(top_k)
        self.overlap_norm = overlap_norm
        self.default_spec = self.check_spec(SearchSpec(
            mode, int(window), int(stride), int(padding), int(chunk_size), int(key_chunk_size), bool(cache_keys),
            approximate or ApproximateSettings()))

    # ------------------------------------------------------------------ the default spec
    def check_spec(self, spec: SearchSpec) -> SearchSpec:
        """``spec`` if this module can run it (TTSR's overlap normalisation has one geometry), else ValueError."""
        if not isinstance(spec, SearchSpec):
            raise TypeError(f'spec must be a SearchSpec, got {type(spec).__name__}')
        if self.overlap_norm == 'ttsr' and spec.geometry != (3, 1, 1):
            raise ValueError("overlap_norm='ttsr' is TTSR's fixed geometry: window 3, stride 1, padding 1")
        return spec

    def spec(self, spec: Optional[SearchSpec] = None) -> SearchSpec:
        """The spec a call runs with: ``spec`` (checked), or the default."""
        return self.default_spec if spec is None else self.check_spec(spec)

    def set_geometry(self, window: int, stride: int, padding: int) -> None:
        """Change the default geometry (a configuration step, before use: not for concurrent callers, who pass
        ``spec=`` instead)."""
        self.default_spec = self.check_spec(self.default_spec.replace(geometry=(window, stride, padding)))

    def set_chunking(self, mode: Optional[str] = None, chunk_size: Optional[int] = None,
                     key_chunk_size: Optional[int] = None, cache_keys: Optional[bool] = None,
                     approximate: Optional[ApproximateSettings] = None) -> None:
        """Change the default method and its settings (None keeps a value); a configuration step, as
        :meth:`set_geometry`."""
        self.default_spec = self.check_spec(self.default_spec.replace(
            method=mode, chunk_size=chunk_size, key_chunk_size=key_chunk_size, cache_keys=cache_keys,
            approximate=approximate))

    # the default spec's fields, read-only
    window = property(lambda self: self.default_spec.window)
    stride = property(lambda self: self.default_spec.stride)
    padding = property(lambda self: self.default_spec.padding)
    mode = property(lambda self: self.default_spec.method)
    chunk_size = property(lambda self: self.default_spec.chunk_size)
    key_chunk_size = property(lambda self: self.default_spec.key_chunk_size)
    cache_keys = property(lambda self: self.default_spec.cache_keys)
    approximate = property(lambda self: self.default_spec.approximate)

    def extra_repr(self) -> str:
        return f'top_k={self.top_k}, overlap_norm={self.overlap_norm}, default={self.default_spec}'

    def level_geometry(self, level: int, spec: Optional[SearchSpec] = None) -> Tuple[int, int, int]:
        """(window, stride, padding) at relu3_1 (level 3), relu2_1 (level 2, x2) or relu1_1 (level 1, x4)."""
        return self.spec(spec).level_geometry(level)

    def grid_size(self, h: int, w: int, spec: Optional[SearchSpec] = None) -> Tuple[int, int]:
        """Number of patch positions along each side of a relu3_1 map of size h x w."""
        return self.spec(spec).grid_size(h, w)

    def patch_counts(self, ref_maps: Maps, spec: Optional[SearchSpec] = None) -> List[int]:
        """Number of search patches of each reference map (relu3_1)."""
        spec = self.spec(spec)
        return [spec.patch_count(*feat.shape[-2:]) for feat in _as_list(ref_maps)]

    # ------------------------------------------------------------------ search (Eq. 4, 5, 7)
    def prepare_keys(self, ref_feat: torch.Tensor, spec: Optional[SearchSpec] = None) -> KeyBlocks:
        """The normalised key blocks of the chunked search for ``spec``'s geometry and ``key_chunk_size`` (default:
        the module's), to reuse across searches of this reference with that spec (e.g. tiles)."""
        return prepare_key_blocks(ref_feat, self.spec(spec))

    def search(self, lr_feat: torch.Tensor, ref_feat: Maps, key_blocks=None,
               spec: Optional[SearchSpec] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-k relevance of the LR patches against the patches of one reference map or of several (their union).
        Returns scores and reference-patch indices, both [N, top_k, H*W] (rank-sorted); with several references
        the index runs over all their patches in order (:func:`split_index`). ``key_blocks``: per reference, what
        :meth:`prepare_keys` made, or None (one reference: its own)."""
        if isinstance(ref_feat, torch.Tensor):
            key_blocks = [key_blocks]
        return search_references(lr_feat, _as_list(ref_feat), self.spec(spec), self.top_k, key_blocks)

    def search_dense(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor, top_k: Optional[int] = None,
                     spec: Optional[SearchSpec] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The faithful search (the whole relevance matrix), with the default geometry unless ``spec``."""
        spec = self.spec(spec).replace(method='dense')
        return spec.search_method.search(lr_feat, ref_feat, spec, top_k or self.top_k)

    def search_chunked(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor, key_blocks=None,
                       top_k: Optional[int] = None, spec: Optional[SearchSpec] = None
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The exact blocked search (the default spec's block sizes unless ``spec``)."""
        spec = self.spec(spec).replace(method='chunked')
        return spec.search_method.search(lr_feat, ref_feat, spec, top_k or self.top_k, key_blocks)

    def search_approximate(self, lr_feat: torch.Tensor, ref_feat: torch.Tensor,
                           top_k: Optional[int] = None, spec: Optional[SearchSpec] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The approximate search (the default spec's settings unless ``spec``)."""
        spec = self.spec(spec).replace(method='approximate')
        return spec.search_method.search(lr_feat, ref_feat, spec, top_k or self.top_k)

    # ------------------------------------------------------------------ transfer (Eq. 6)
    def divisor(self, level: int, out_hw: Tuple[int, int], like: torch.Tensor,
                spec: Optional[SearchSpec] = None) -> torch.Tensor:
        """Per-pixel overlap count of the folded patches [1, 1, H, W], or TTSR's constant."""
        return transfer_ops.divisor(self.spec(spec), self.overlap_norm, level, out_hw, like)

    def transfer_level(self, value: Maps, index: torch.Tensor, level: int, out_hw: Tuple[int, int],
                       divisor: Optional[torch.Tensor] = None, scratch=None,
                       spec: Optional[SearchSpec] = None) -> torch.Tensor:
        """One level of the transfer (see :func:`extracter.search.transfer.transfer_level`)."""
        spec = self.spec(spec)
        if divisor is None:
            divisor = self.divisor(level, out_hw, transfer_ops.tensor_like(transfer_ops.as_list(value)[0]), spec)
        return transfer_ops.transfer_level(spec, value, index, level, out_hw, divisor, scratch)

    def blocks_apply(self, values: Sequence[TextureMap], level: int, spec: Optional[SearchSpec] = None) -> bool:
        """Whether the block transfer serves this level (:func:`extracter.search.transfer.blocks_apply`)."""
        return transfer_ops.blocks_apply(self.spec(spec), values, level)

    def transfer_layout(self, value: TextureMap, spec: Optional[SearchSpec] = None) -> TextureMap:
        """A reference texture map in the layout the transfer reads fastest (see
        :func:`extracter.search.transfer.transfer_layout`)."""
        return transfer_layout(self.spec(spec), value)

    def transfer(self, scores: torch.Tensor, index: torch.Tensor, lr_hw: Tuple[int, int], ref_lv1: Maps,
                 ref_lv2: Maps, ref_lv3: Maps, spec: Optional[SearchSpec] = None):
        """Soft attention and textures (lists over ranks) from a search result [N, top_k, L] for an LR of
        ``lr_hw`` (relu3_1 size); see :func:`extracter.search.transfer.transfer`."""
        return transfer(self.spec(spec), self.overlap_norm, self.top_k, scores, index, lr_hw, ref_lv1, ref_lv2,
                        ref_lv3)

    def forward(self, lr_lv3: torch.Tensor, refsr_lv3: torch.Tensor, ref_lv1: torch.Tensor,
                ref_lv2: torch.Tensor, ref_lv3: torch.Tensor, key_blocks: Optional[List[torch.Tensor]] = None,
                spec: Optional[SearchSpec] = None):
        """Returns lists over the top-k ranks: S [N, 1, h', w'] (soft attention on the patch grid) and the textures
        T_lv3 [N, 256, h, w], T_lv2 [N, 128, 2h, 2w], T_lv1 [N, 64, 4h, 4w]. ``key_blocks``: what
        :meth:`prepare_keys` made for ``refsr_lv3``, to reuse across calls (e.g. tiles)."""
        scores, index = self.search(lr_lv3, refsr_lv3, key_blocks, spec)
        return self.transfer(scores, index, tuple(lr_lv3.shape[-2:]), ref_lv1, ref_lv2, ref_lv3, spec)

