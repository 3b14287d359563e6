"""The contract every texture search method implements, and their registry.

A search method finds, for every LR patch, the ``top_k`` most relevant reference patches under TTSR's relevance
(Eq. 4: the cosine of L2-normalised relu3_1 patches), their hard (Eq. 5) and soft (Eq. 7) attention: it returns
``(scores, index)``, each [N, top_k, L] and rank-sorted, ``scores`` being the exact relevances of the patches it
chose. How it finds them (every pair, in blocks, a reduced-dimension retrieval, an external index) is its own
affair, and so is the memory it needs, which it states for the planner (:meth:`SearchMethod.search_bytes`).

Methods are stateless: every setting comes with the call, in a :class:`~extracter.search.spec.SearchSpec`, so one
network serves any number of threads with different settings. A method registers itself by name with
:func:`register_method`; importing :mod:`extracter.search` imports :mod:`extracter.search.methods` (every module
there), so every method is registered before any lookup.
"""

from typing import Any, ClassVar, Dict, Hashable, Optional, Tuple

import torch

SearchSpec = Any  # extracter.search.spec.SearchSpec (which imports this module): the annotations' name for it

SearchResult = Tuple[torch.Tensor, torch.Tensor]  # (scores, index), each [N, top_k, L]
TRANSFERS = ('dense', 'index')  # how the chosen patches are transferred (extracter.search.transfer)


class SearchMethod:
    """One way to search. Subclasses set ``name``, ``exact`` and ``transfer`` and implement :meth:`search` and
    :meth:`search_bytes`.

    Class attributes:
        name: the name options and flags use (``search.mode``, ``--search``).
        exact: whether the result is the exact search's (ties aside).
        transfer: ``'dense'`` (unfold, gather, fold: the original code's, memory grows with the reference) or
            ``'index'`` (the chosen patches gathered by index, band by band or block by block: same result up to
            float rounding, bounded memory).
        uses_blocks: whether ``chunk_size`` / ``key_chunk_size`` bound its memory (the planner shrinks them to fit).
        caches_keys: whether ``cache_keys`` applies (the search then normalises the key patches once).
        trainable: whether training may use it: its scores carry the gradient to the feature extractor (the soft
            attention S of Eq. 7 multiplies the textures) and it is exact.
        description: one line for ``--help`` and the docs.
    """

    name: ClassVar[str]
    exact: ClassVar[bool]
    transfer: ClassVar[str] = 'index'
    uses_blocks: ClassVar[bool] = True
    caches_keys: ClassVar[bool] = False
    trainable: ClassVar[bool] = False
    description: ClassVar[str] = ''

    def prepare(self, keys: torch.Tensor, spec: SearchSpec) -> Any:
        """Work on one reference's keys that several searches of it may share (e.g. normalised key blocks); None
        when the method has none. What it returns is passed back to :meth:`search` as ``prepared``."""
        return None

    def prepare_key(self, spec: SearchSpec) -> Optional[Hashable]:
        """What :meth:`prepare`'s result depends on in ``spec`` (hashable), or None when it prepares nothing: the
        inference's cache of encoded references (:mod:`extracter.inference.reference_cache`) keys a reference's
        prepared keys by it. A method that overrides :meth:`prepare` overrides this too (tests/test_reference_cache.py
        checks every registered method), e.g. ``(self.name, spec.geometry, spec.key_chunk_size)``."""
        return None

    def search(self, query: torch.Tensor, keys: torch.Tensor, spec: SearchSpec, top_k: int,
               prepared: Any = None) -> SearchResult:
        """Top-``top_k`` reference patches of ``keys`` [N, C, H, W] (relu3_1 of the down-up-sampled reference) for
        every patch of ``query`` [N, C, h, w] (relu3_1 of the upsampled LR), patches as ``F.unfold`` makes them with
        ``spec``'s window, stride and padding. Returns (scores, index) [N, top_k, h'*w'], rank-sorted."""
        raise NotImplementedError

    def search_bytes(self, query_hw: Tuple[int, int], keys_hw: Tuple[int, int], channels: int,
                     spec: SearchSpec, top_k: int) -> int:
        """Peak transient bytes (float32) of one :meth:`search` of a ``query_hw`` map against a ``keys_hw`` map
        (relu3_1 sizes, batch 1), besides its inputs and its result."""
        raise NotImplementedError

    def prepared_bytes(self, keys_hw: Tuple[int, int], channels: int, spec: SearchSpec) -> int:
        """Bytes :meth:`prepare` keeps for one reference of ``keys_hw`` (relu3_1 size) under ``spec``."""
        return 0

    def is_exact_for(self, n_query: int, n_keys: int, spec: SearchSpec) -> bool:
        """Whether this search returns the exact result for these patch counts (an approximate method may run the
        exact search on small inputs)."""
        return self.exact

    def available(self) -> Optional[str]:
        """None when the method can run here, else why not (an optional package missing)."""
        return None

    def __repr__(self) -> str:
        return f'<search method {self.name!r}>'


_METHODS: Dict[str, SearchMethod] = {}


def register_method(cls):
    """Class decorator: register one instance of a :class:`SearchMethod` subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, SearchMethod)):
        raise TypeError(f'register_method takes a SearchMethod subclass, got {cls!r}')
    if cls.transfer not in TRANSFERS:
        raise ValueError(f'{cls.__name__}.transfer must be one of {TRANSFERS}, got {cls.transfer!r}')
    if cls.name in _METHODS and type(_METHODS[cls.name]) is not cls:
        raise KeyError(f'a search method named {cls.name!r} is already registered ({type(_METHODS[cls.name])})')
    _METHODS[cls.name] = cls()
    return cls


def method_names() -> Tuple[str, ...]:
    """The registered methods' names, in registration order (dense, chunked, approximate, then the others)."""
    return tuple(_METHODS)


def get_method(name: str) -> SearchMethod:
    """The method registered as ``name``; a ``ValueError`` listing the names otherwise."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f'search mode must be one of {", ".join(_METHODS)}, got {name!r}') from None
