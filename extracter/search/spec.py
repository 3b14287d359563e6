"""How one search runs: :class:`SearchSpec`, frozen and hashable, passed with every call (never stored on a shared
network: one network serves several threads with different specs).

A network states its own default spec (its constructor geometry, the faithful dense search); the inference engine
derives each call's spec from it (:meth:`SearchSpec.replace`), and the memory planner fills in the block sizes.
"""

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Tuple

from extracter.search.base import SearchMethod, get_method
from extracter.search.methods.approximate import ApproximateSettings
from extracter.search.patches import grid_size

DEFAULT_CHUNK, DEFAULT_KEY_CHUNK = 4096, 8192
LEVEL_FACTORS = {3: 1, 2: 2, 1: 4}  # relu3_1, relu2_1 (x2), relu1_1 (x4)
FEATURE_CHANNELS = {3: 256, 2: 128, 1: 64}  # VGG-19 relu3_1, relu2_1, relu1_1: the maps searched and transferred
KEYS_DOWNSCALE = 4  # relu3_1 is at 1/4 of the image it is computed from (VGG-19's two poolings)


def _int(value, name: str, least: int) -> int:
    """``value`` as an int (any integer type: int, NumPy's), at least ``least``; a ValueError naming it otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise ValueError(f'{name} must be an integer >= {least}, got {value!r}') from None
    if value < least:
        raise ValueError(f'{name} must be an integer >= {least}, got {value!r}')
    return value


@dataclass(frozen=True)
class SearchSpec:
    """The settings of one texture search.

    Attributes:
        method: a registered search method (:func:`~extracter.search.base.method_names`: ``dense``, ``chunked``,
            ``approximate``, ...).
        window, stride, padding: the patch geometry at relu3_1 (x2 and x4 at relu2_1 and relu1_1).
        chunk_size: LR patches per search block (chunked, approximate retrieval, the index transfer's bands).
        key_chunk_size: reference patches per search block (chunked).
        cache_keys: chunked: normalise the reference patches once per search and keep them.
        approximate: the approximate search's :class:`ApproximateSettings`.
    """

    method: str = 'dense'
    window: int = 3
    stride: int = 1
    padding: int = 1
    chunk_size: int = DEFAULT_CHUNK
    key_chunk_size: int = DEFAULT_KEY_CHUNK
    cache_keys: bool = False
    approximate: ApproximateSettings = field(default_factory=ApproximateSettings)

    def __post_init__(self) -> None:
        get_method(self.method)  # a ValueError naming the registered methods
        for name, label, least in (('window', 'search window', 1), ('stride', 'search stride', 1),
                                   ('padding', 'search padding', 0), ('chunk_size', 'chunk sizes: chunk_size', 1),
                                   ('key_chunk_size', 'chunk sizes: key_chunk_size', 1)):
            object.__setattr__(self, name, _int(getattr(self, name), label, least))  # frozen: normalised here, once
        if self.window < self.stride:
            raise ValueError(f'search geometry needs window >= stride >= 1, got window={self.window} '
                             f'stride={self.stride}')
        if self.padding >= self.window:
            raise ValueError(f'search geometry needs 0 <= padding < window, got padding={self.padding} '
                             f'window={self.window}')
        if self.cache_keys not in (True, False):  # bool, or 0 / 1 of any integer type
            raise ValueError(f'cache_keys must be true or false, got {self.cache_keys!r}')
        object.__setattr__(self, 'cache_keys', bool(self.cache_keys))
        if not isinstance(self.approximate, ApproximateSettings):
            raise TypeError(f'approximate must be ApproximateSettings, got {type(self.approximate).__name__}')

    @property
    def search_method(self) -> SearchMethod:
        return get_method(self.method)

    @property
    def geometry(self) -> Tuple[int, int, int]:
        return self.window, self.stride, self.padding

    def replace(self, **changes) -> 'SearchSpec':
        """A copy with ``changes`` (None values are ignored: "keep this one"); ``geometry=(w, s, p)`` sets all
        three."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if 'geometry' in changes:
            changes['window'], changes['stride'], changes['padding'] = (int(g) for g in changes.pop('geometry'))
        return dataclasses.replace(self, **changes) if changes else self

    def level_geometry(self, level: int) -> Tuple[int, int, int]:
        """(window, stride, padding) at relu3_1 (level 3), relu2_1 (level 2, x2) or relu1_1 (level 1, x4)."""
        f = LEVEL_FACTORS[level]
        return self.window * f, self.stride * f, self.padding * f

    def grid_size(self, h: int, w: int) -> Tuple[int, int]:
        """Patch positions along each side of a relu3_1 map of size h x w."""
        return grid_size(h, w, self.window, self.stride, self.padding)

    def patch_count(self, h: int, w: int) -> int:
        gh, gw = self.grid_size(h, w)
        return gh * gw

    def describe(self) -> str:
        extra = f', chunk {self.chunk_size} x {self.key_chunk_size}' if self.method != 'dense' else ''
        return f'{self.method} search, window {self.window} / stride {self.stride} / padding {self.padding}{extra}'
