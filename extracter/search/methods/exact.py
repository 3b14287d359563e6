"""The exact searches: every LR patch against every reference patch (TTSR Eq. 4-5, 7).

- ``dense`` (the faithful default, as the original code): the whole relevance matrix between all LR and all
  reference patches at once; memory grows with (LR patches x reference patches). Its transfer unfolds every
  reference patch (:mod:`extracter.search.transfer`), as the original does.
- ``chunked``: blocks of ``chunk_size`` LR patches against blocks of ``key_chunk_size`` reference patches with a
  running top-k; the same result up to float rounding (~1e-7), peak memory bounded by the block sizes.
"""

from dataclasses import dataclass
from typing import Any, Hashable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from extracter.search.base import SearchMethod, SearchResult, register_method
from extracter.search.patches import chunked_search, grid_size, inv_patch_norms, key_block

FLOAT = 4


@register_method
class DenseSearch(SearchMethod):
    name = 'dense'
    exact = True
    transfer = 'dense'
    uses_blocks = False
    trainable = True
    description = 'exact, the whole relevance matrix at once (the original code; memory grows with both sizes)'

    def search(self, query: torch.Tensor, keys: torch.Tensor, spec, top_k: int, prepared: Any = None
               ) -> SearchResult:
        k, s, p = spec.geometry
        q = F.normalize(F.unfold(query, kernel_size=k, padding=p, stride=s), dim=1)  # [N, C*k*k, L]
        kk = F.normalize(F.unfold(keys, kernel_size=k, padding=p, stride=s), dim=1)  # [N, C*k*k, Lr]
        relevance = torch.bmm(kk.transpose(1, 2), q)  # [N, Lr, L]
        return torch.topk(relevance, top_k, dim=1, largest=True, sorted=True)

    def search_bytes(self, query_hw: Tuple[int, int], keys_hw: Tuple[int, int], channels: int, spec,
                     top_k: int) -> int:
        k, s, p = spec.geometry
        d = channels * k * k
        lq = spec.patch_count(*query_hw)
        lk = spec.patch_count(*keys_hw)
        return FLOAT * (2 * d * (lq + lk) + 2 * lq * lk)


@dataclass(frozen=True)
class KeyBlocks:
    """The L2-normalised reference patches in blocks, and the geometry and block size they were made with (a search
    with another spec must not read them)."""

    blocks: List[torch.Tensor]
    geometry: Tuple[int, int, int]
    key_chunk_size: int

    def check(self, spec) -> List[torch.Tensor]:
        if (self.geometry, self.key_chunk_size) != (spec.geometry, spec.key_chunk_size):
            raise ValueError(f'the prepared key blocks were made with geometry {self.geometry} and key_chunk_size '
                             f'{self.key_chunk_size}; this search has {spec.geometry} and {spec.key_chunk_size}')
        return self.blocks


def prepare_key_blocks(keys: torch.Tensor, spec) -> KeyBlocks:
    """The L2-normalised reference patches in blocks of ``spec.key_chunk_size``, each [N, C*k*k, block]: made as
    :func:`~extracter.search.patches.chunked_search` makes them (the same padding, norms and
    :func:`~extracter.search.patches.key_block`), so a search given them is bit-identical to one without."""
    k, s, p = spec.geometry
    ref_pad = F.pad(keys, (p, p, p, p))
    _, gw = grid_size(*keys.shape[-2:], k, s, p)
    inv = inv_patch_norms(ref_pad, k, s)
    n_keys = inv.size(1)
    blocks = [key_block(ref_pad, inv, k, s, gw, j0, min(j0 + spec.key_chunk_size, n_keys))
              for j0 in range(0, n_keys, spec.key_chunk_size)]
    return KeyBlocks(blocks, spec.geometry, spec.key_chunk_size)


def key_blocks_bytes(keys_hw: Tuple[int, int], channels: int, spec) -> int:
    """Bytes :func:`prepare_key_blocks` keeps: each block holds the storage of the whole patch rows it touches (a
    block is a view of their unfolding, kept as made so that its products are those of the search)."""
    k, s, p = spec.geometry
    _, gw = spec.grid_size(*keys_hw)
    n_keys, kc = spec.patch_count(*keys_hw), spec.key_chunk_size
    rows = sum((min(j0 + kc, n_keys) - 1) // gw + 1 - j0 // gw for j0 in range(0, n_keys, kc))
    return FLOAT * channels * k * k * rows * gw


def chunked_search_bytes(query_hw: Tuple[int, int], keys_hw: Tuple[int, int], channels: int, spec) -> int:
    """Peak transient bytes of the chunked search: both maps padded (copies), one squared for the patch norms,
    then one block of queries, one of keys and their relevances."""
    k, s, p = spec.geometry
    d = channels * k * k
    _, gw = spec.grid_size(*query_hw)
    _, rgw = spec.grid_size(*keys_hw)
    q = min(spec.chunk_size, spec.patch_count(*query_hw))
    kc = min(spec.key_chunk_size, spec.patch_count(*keys_hw))
    (h, w), (rh, rw) = query_hw, keys_hw
    padded = FLOAT * channels * ((h + 2 * p) * (w + 2 * p) + (rh + 2 * p) * (rw + 2 * p))
    return padded + max(FLOAT * channels * max(h * w, rh * rw),
                        FLOAT * (2 * d * (q + 2 * gw) + 2 * d * (kc + 2 * rgw) + 3 * q * kc))


@register_method
class ChunkedSearch(SearchMethod):
    name = 'chunked'
    exact = True
    caches_keys = True
    trainable = True
    description = 'exact, in blocks with a running top-k (bounded memory, the same result)'

    def prepare(self, keys: torch.Tensor, spec) -> Optional[KeyBlocks]:
        """With ``spec.cache_keys``: the reference's normalised key blocks (:func:`prepare_key_blocks`), made once
        and searched by every LR image or tile that uses this reference (the inference's cache of encoded
        references keeps them with the keys); None otherwise."""
        return prepare_key_blocks(keys, spec) if spec.cache_keys else None

    def prepare_key(self, spec) -> Optional[Hashable]:
        return (self.name, spec.geometry, spec.key_chunk_size) if spec.cache_keys else None

    def search(self, query: torch.Tensor, keys: torch.Tensor, spec, top_k: int, prepared: Any = None
               ) -> SearchResult:
        """``prepared``: :class:`KeyBlocks` made with this spec (or None). With ``spec.cache_keys`` and more than one
        block of LR patches the key blocks are made here, once, for this search (the planner counts them). The
        result is bit-identical with or without them."""
        blocks = prepared.check(spec) if isinstance(prepared, KeyBlocks) else prepared
        if blocks is None and spec.cache_keys and spec.patch_count(*query.shape[-2:]) > spec.chunk_size:
            blocks = prepare_key_blocks(keys, spec).blocks
        return chunked_search(query, keys, *spec.geometry, top_k, spec.chunk_size, spec.key_chunk_size, blocks)

    def search_bytes(self, query_hw, keys_hw, channels, spec, top_k) -> int:
        return chunked_search_bytes(query_hw, keys_hw, channels, spec)

    def prepared_bytes(self, keys_hw: Tuple[int, int], channels: int, spec) -> int:
        """The cached normalised key blocks (``spec.cache_keys``): 202 MB (193 MiB) for a 720x480 reference at 3/1/1
        (relu3_1 180x120, 21,600 patches of 3x3x256, and two rows more where the 8192-patch blocks end mid-row)."""
        return key_blocks_bytes(keys_hw, channels, spec) if spec.cache_keys else 0
