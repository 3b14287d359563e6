"""The texture search as its own subsystem (TTSR Eq. 4-7, EXTRACTER Sec. 3, and our extensions).

- :mod:`.spec`: :class:`SearchSpec`, the settings of one search, passed with every call.
- :mod:`.base`: :class:`SearchMethod`, the contract of a search method, and the registry (:func:`get_method`,
  :func:`method_names`); :mod:`.methods`: the methods (``dense``, ``chunked``, ``approximate``, and optional ones
  such as ``faiss``), one module each.
- :func:`search_references`: the top-k over the union of several references' patches, with any method.
- :mod:`.transfer`: the transfer of the chosen patches (Eq. 6) and the overlap normalisation.
- :mod:`.choice`: ``auto``, the one function that picks a spec for an input (and says why).
- :mod:`.patches`: patch arithmetic shared by the methods (grids, inverse patch norms, the chunked search).

Nothing here imports the networks: a network holds its default spec and passes a spec down with every call.
"""

import itertools
from typing import Any, Optional, Sequence

import torch

from extracter.search import methods  # noqa: F401  (every method registers itself)
from extracter.search.base import SearchMethod, SearchResult, get_method, method_names, register_method
from extracter.search.spec import SearchSpec

__all__ = ['SearchMethod', 'SearchResult', 'SearchSpec', 'get_method', 'method_names', 'register_method',
           'search_references']


def search_references(query: torch.Tensor, keys: Sequence[torch.Tensor], spec: SearchSpec, top_k: int,
                      prepared: Optional[Sequence[Any]] = None) -> SearchResult:
    """Top-``top_k`` relevance of the LR patches of ``query`` against the patches of one or several reference key
    maps, with ``spec``'s method and geometry: (scores, index) [N, top_k, L], rank-sorted; the index runs over all
    references' patches in order (:func:`extracter.search.transfer.split_index`). ``prepared``: per reference, what
    :meth:`SearchMethod.prepare` made (or None).

    Several references (our extension): each reference's own top-k (a tiny one among several: all it has), then the
    top-k of their union, which is the union's top-k: exact whenever the method is."""
    keys = [keys] if isinstance(keys, torch.Tensor) else list(keys)
    if not keys:
        raise ValueError('at least one reference is needed')
    prepared = [None] * len(keys) if prepared is None else list(prepared)
    method = spec.search_method
    counts = [spec.patch_count(*k.shape[-2:]) for k in keys]
    if sum(counts) < top_k:
        raise ValueError(f'the reference has {sum(counts)} patches, fewer than top_k={top_k}')
    results = [method.search(query, k, spec, min(top_k, n), prep) for k, n, prep in zip(keys, counts, prepared)]
    if len(results) == 1:
        return results[0]
    offsets = [0, *itertools.accumulate(counts[:-1])]
    scores = torch.cat([r[0] for r in results], dim=1)
    index = torch.cat([r[1] + off for r, off in zip(results, offsets)], dim=1)
    top, pos = torch.topk(scores, top_k, dim=1, largest=True, sorted=True)
    return top, torch.gather(index, 1, pos)
