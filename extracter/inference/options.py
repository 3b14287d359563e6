"""The inference section of the options: tiles, memory budget, search mode and geometry. One schema and one route for
training validation (``val:``), ``test.py`` (``val:``) and ``infer.py`` (its flags build the same object)::

    tile:                  # optional, LR pixels
      tile_size: 128       # may be left out when max_memory is given (the planner picks it)
      tile_pad: 16
    max_memory: 6G         # optional working-memory budget
    search:                # optional
      mode: chunked        # a search method (dense | chunked | approximate | faiss ...) or auto (approximate where the
                           # exact search is expensive)
      chunk_size: 4096     # optional, LR patches per block
      key_chunk_size: 8192 # optional, reference patches per block
      window: 12           # optional geometry switch for this run (EXTRACTER), all three together
      stride: 4
      padding: 4
      approximate:         # optional, the approximate search's settings (ApproximateSettings' fields)
        candidates: 16
        max_candidates: 2048

Types and ranges are checked here, and every error names the dotted key. The geometry applies to each inference
call and is restored afterwards (it never changes the network permanently).
"""

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from extracter.inference.memory_plan import parse_memory
from extracter.search import get_method, method_names
from extracter.search.methods.approximate import ApproximateSettings

# the registered search methods, and 'auto': approximate where the exact search is expensive (resolved per image)
SEARCH_MODES = method_names() + ('auto',)
TILE_KEYS = ('tile_size', 'tile_pad')
SEARCH_KEYS = ('mode', 'chunk_size', 'key_chunk_size', 'window', 'stride', 'padding', 'approximate')
APPROXIMATE_KEYS = tuple(f.name for f in dataclasses.fields(ApproximateSettings))
INFERENCE_KEYS = ('tile', 'max_memory', 'search')
RENAMED = {'search_geometry': 'search.{window,stride,padding}'}


class InferenceOptionError(ValueError):
    """A bad tile / max_memory / search option; the message names the dotted key."""


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InferenceOptionError(f'{key} must be an integer >= {minimum}, got {value!r}')
    if value < minimum:
        raise InferenceOptionError(f'{key} must be >= {minimum}, got {value}')
    return value


def _check_keys(block: Mapping[str, Any], allowed, prefix: str) -> None:
    unknown = [k for k in block if k not in allowed]
    if not unknown:
        return
    key = unknown[0]
    if key in RENAMED:
        raise InferenceOptionError(f'{prefix}{key} was renamed: use {prefix}{RENAMED[key]}')
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f'; allowed: {", ".join(allowed)}'
    where = f"option '{prefix.rstrip('.')}' has unknown keys" if prefix else 'unknown option keys'
    raise InferenceOptionError(f'{where} {sorted(map(str, unknown))}{hint}')


@dataclass
class SearchOptions:
    """``mode`` (None: the network's own, chunked under a budget; ``'auto'``: approximate where the exact search is
    expensive, else as None), block sizes, an optional geometry (window, stride, padding) for this run, and the
    approximate search's settings (None: the defaults)."""

    mode: Optional[str] = None
    chunk_size: Optional[int] = None
    key_chunk_size: Optional[int] = None
    geometry: Optional[Tuple[int, int, int]] = None
    approximate: Optional[ApproximateSettings] = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in SEARCH_MODES:
            raise InferenceOptionError(f'search.mode must be one of {", ".join(SEARCH_MODES)}, got {self.mode!r}')
        missing = None if self.mode in (None, 'auto') else get_method(self.mode).available()
        if missing is not None:
            raise InferenceOptionError(f'search.mode {self.mode}: {missing}')
        for key in ('chunk_size', 'key_chunk_size'):
            if getattr(self, key) is not None:
                _int(getattr(self, key), f'search.{key}', 1)
        if self.approximate is not None and not isinstance(self.approximate, ApproximateSettings):
            raise InferenceOptionError(f'search.approximate must be ApproximateSettings, got {self.approximate!r}')
        if self.geometry is not None:
            window, stride, padding = (int(g) for g in self.geometry)
            _int(stride, 'search.stride', 1)
            _int(padding, 'search.padding', 0)
            if window < stride or padding >= window:
                raise InferenceOptionError(f'search geometry needs window >= stride and padding < window, got '
                                           f'window={window} stride={stride} padding={padding}')
            self.geometry = (window, stride, padding)


@dataclass
class InferenceOptions:
    """How one inference runs; :meth:`run_kwargs` gives :func:`extracter.inference.run_refsr`'s arguments."""

    tile_size: Optional[int] = None
    tile_pad: Optional[int] = None
    max_memory: Any = None
    search: SearchOptions = field(default_factory=SearchOptions)

    def __post_init__(self) -> None:
        if self.tile_size is not None:
            _int(self.tile_size, 'tile.tile_size', 1)
        if self.tile_pad is not None:
            _int(self.tile_pad, 'tile.tile_pad', 0)
        if self.tile_pad is not None and self.tile_size is None and self.max_memory is None:
            raise InferenceOptionError('tile.tile_pad without tile.tile_size needs max_memory (the planner then picks '
                                       'the tile size)')
        if self.max_memory is not None:
            try:
                parse_memory(self.max_memory)  # its message starts with the key: 'max_memory must ...'
            except ValueError as err:
                raise InferenceOptionError(str(err)) from None

    @classmethod
    def from_mapping(cls, opt: Optional[Mapping[str, Any]], prefix: str = '',
                     ignore: Tuple[str, ...] = ()) -> 'InferenceOptions':
        """Parse the ``tile`` / ``max_memory`` / ``search`` keys of ``opt`` (e.g. the ``val`` section; its other keys
        are listed in ``ignore``). Errors name ``prefix`` + the key."""
        opt = opt or {}
        try:
            _check_keys({k: v for k, v in opt.items() if k not in ignore}, INFERENCE_KEYS, prefix)
            tile = opt.get('tile')
            tile_size = tile_pad = None
            if tile is not None:
                if not isinstance(tile, Mapping):
                    raise InferenceOptionError(f"tile must be a mapping with 'tile_size' and 'tile_pad', got {tile!r}")
                _check_keys(tile, TILE_KEYS, prefix + 'tile.')
                tile_size, tile_pad = tile.get('tile_size'), tile.get('tile_pad')
            search = opt.get('search') or {}
            if not isinstance(search, Mapping):
                raise InferenceOptionError(f'search must be a mapping, got {search!r}')
            _check_keys(search, SEARCH_KEYS, prefix + 'search.')
            approximate = search.get('approximate')
            if approximate is not None:
                if not isinstance(approximate, Mapping):
                    raise InferenceOptionError(f'search.approximate must be a mapping, got {approximate!r}')
                _check_keys(approximate, APPROXIMATE_KEYS, prefix + 'search.approximate.')
                try:
                    approximate = ApproximateSettings(**approximate)
                except ValueError as err:
                    raise InferenceOptionError(f'search.approximate.{err}') from None
            geometry = [search.get(k) for k in ('window', 'stride', 'padding')]
            if any(g is not None for g in geometry) and any(g is None for g in geometry):
                raise InferenceOptionError('search needs window, stride and padding together for a geometry switch')
            for key, g in zip(('window', 'stride', 'padding'), geometry):
                if g is not None:
                    _int(g, f'search.{key}', 0)
            return cls(tile_size=tile_size, tile_pad=tile_pad, max_memory=opt.get('max_memory'),
                       search=SearchOptions(mode=search.get('mode'), chunk_size=search.get('chunk_size'),
                                            key_chunk_size=search.get('key_chunk_size'),
                                            geometry=tuple(geometry) if geometry[0] is not None else None,
                                            approximate=approximate))
        except InferenceOptionError as err:
            msg = str(err)
            if prefix and not msg.startswith(('option ', 'unknown option key', prefix)):
                msg = f'{prefix}{msg}'  # the dataclass checks name the key without the section
            raise InferenceOptionError(msg) from None

    def run_kwargs(self) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {}
        if self.tile_size is not None or self.tile_pad is not None:
            tile = {}
            if self.tile_size is not None:
                tile['tile_size'] = self.tile_size
            tile['tile_pad'] = self.tile_pad if self.tile_pad is not None else 0
            kwargs['tile'] = tile
        if self.max_memory is not None:
            kwargs['max_memory'] = self.max_memory
        s = self.search
        if s.mode is not None:
            kwargs['search_mode'] = s.mode
        if s.chunk_size is not None:
            kwargs['chunk_size'] = s.chunk_size
        if s.key_chunk_size is not None:
            kwargs['key_chunk_size'] = s.key_chunk_size
        if s.geometry is not None:
            kwargs['search_geometry'] = s.geometry
        if s.approximate is not None:
            kwargs['approximate'] = s.approximate
        return kwargs
