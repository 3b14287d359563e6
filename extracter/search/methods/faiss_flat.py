"""``faiss``: the exact search with faiss' inner-product index (the optional package ``faiss-cpu``,
``pip install 'extracter[faiss]'``).

TTSR's relevance (Eq. 4) is the inner product of L2-normalised patches, which is what faiss' ``IndexFlatIP`` finds
the top-k of. The reference patches are indexed in blocks of ``key_chunk_size`` (one index a block), the LR patches
searched in blocks of ``chunk_size``, and the per-block top-k merged: the exact search's result (ties aside) in the
chunked search's memory. faiss works on CPU arrays: tensors on another device are searched on the CPU and the result
returned to their device.
"""

from typing import Any, Optional

import torch
import torch.nn.functional as F

from extracter.search.base import SearchMethod, SearchResult, register_method
from extracter.search.methods.exact import chunked_search_bytes
from extracter.search.patches import grid_size, merge_topk, patch_range

INSTALL = "needs the optional package faiss-cpu (pip install 'extracter[faiss]')"


def _blocks(x: torch.Tensor, spec, size: int):
    """(start, L2-normalised patches [count, C*k*k] as float32 numpy) of one map [C, H, W], ``size`` at a time."""
    k, s, p = spec.geometry
    x_pad = F.pad(x[None], (p, p, p, p))
    gh, gw = grid_size(*x.shape[-2:], k, s, p)
    for j0 in range(0, gh * gw, size):
        j1 = min(j0 + size, gh * gw)
        patches = F.normalize(patch_range(x_pad, k, s, gw, j0, j1)[0], dim=0)  # as the dense search's (Eq. 4)
        yield j0, patches.t().contiguous().float().numpy()


@register_method
class FaissSearch(SearchMethod):
    name = 'faiss'
    exact = True
    description = "exact, with faiss' inner-product index (optional faiss-cpu)"

    def available(self) -> Optional[str]:
        try:
            import faiss  # noqa: F401
        except ImportError:
            return INSTALL
        return None

    def search(self, query: torch.Tensor, keys: torch.Tensor, spec, top_k: int, prepared: Any = None
               ) -> SearchResult:
        import faiss

        device = query.device
        query, keys = query.detach().cpu(), keys.detach().cpu()
        n_query = spec.patch_count(*query.shape[-2:])
        scores = torch.empty(query.size(0), top_k, n_query)
        index = torch.empty(query.size(0), top_k, n_query, dtype=torch.long)
        for b in range(query.size(0)):
            best_s = best_i = None
            for j0, key_block in _blocks(keys[b], spec, spec.key_chunk_size):
                found_s, found_i = [], []
                flat = faiss.IndexFlatIP(key_block.shape[1])
                flat.add(key_block)
                kb = min(top_k, key_block.shape[0])
                for _, query_block in _blocks(query[b], spec, spec.chunk_size):
                    s_np, i_np = flat.search(query_block, kb)
                    found_s.append(torch.from_numpy(s_np))
                    found_i.append(torch.from_numpy(i_np) + j0)
                best_s, best_i = merge_topk(best_s, best_i, torch.cat(found_s), torch.cat(found_i), top_k, dim=1)
            scores[b], index[b] = best_s.t(), best_i.t()
        return scores.to(device=device, dtype=query.dtype), index.to(device)

    def search_bytes(self, query_hw, keys_hw, channels, spec, top_k) -> int:
        # one block of normalised keys (and faiss' copy), one of queries, their top-k, the running top-k
        return chunked_search_bytes(query_hw, keys_hw, channels, spec) + 8 * 3 * top_k * spec.patch_count(*query_hw)
