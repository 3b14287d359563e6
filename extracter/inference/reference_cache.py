"""Encoded references reused within a run: :class:`ReferenceCache`.

A folder of video frames that share one reference, or a gallery run whose LR images share some of their chosen
references, would otherwise encode every reference again for every LR image: its search keys (VGG-19 relu3_1 of the
down-up-sampled reference, with what the search method prepares of them, :meth:`RefSRNet.encode_keys`) and its
textures (relu1_1/2_1/3_1, :meth:`RefSRNet.encode_texture_features`). :func:`~extracter.inference.engine.run_refsr`
takes a cache per call (``reference_cache=``) and looks both up in it, separately; the result is bit-identical to
encoding again (the cached tensors are the ones the encoding made, and nothing downstream writes into them).

What an entry is keyed by (everything that changes the encoding):

- the reference's content: a BLAKE2b digest of the padded reference tensor and of its padded down-up-sampled
  version (absent: made from the reference, so the first digest covers it), with their shapes and dtypes. Content,
  not a file name: two LR images padded differently, or a file changed on disk, never share an entry;
- the device and dtype (in the digest);
- keys: what the search method's :meth:`~extracter.search.base.SearchMethod.prepare` depends on,
  :meth:`~extracter.search.base.SearchMethod.prepare_key` (None for the methods that prepare nothing: then every
  method shares the keys; the keys themselves do not depend on the search spec, only on the padded reference). The
  chunked search prepares its normalised key blocks with ``cache_keys`` (``('chunked', geometry,
  key_chunk_size)``), which :func:`~extracter.inference.engine.run_refsr` sets with a cache where they fit: the
  search then no longer rebuilds them for every LR image (bit-identical: the blocks are made by the very ops the
  search makes them with);
- textures: how relu1_1 is kept (``lv1``: stored or recomputed, :data:`~extracter.archs.refsr_base.LV1_STORAGE`)
  and the layout the method's transfer reads (``index`` or ``dense``, :func:`extracter.search.transfer.by_index`).

The tile size of the main network is not part of the key: the encodings never see it (the references are encoded
in tiles of the constant ``ENCODE_TILE``; tests/test_reference_cache.py checks tiled runs against untiled entries).
A cache serves one network with unchanged weights (it binds to the first network it sees and refuses another).

Memory: entries are counted in bytes from their tensors (each storage once) and the least recently used go first.
The cap is ``max_bytes`` (default :data:`DEFAULT_CACHE_BYTES`); under a working-memory budget the cache gets only
what the memory plan leaves: at most ``budget - plan.estimate`` during a call (the plan is made for the image as
without a cache; whatever the cache holds is counted on top of it, so the run stays within ``max_memory``; where
nothing is left, nothing is kept and the run encodes as without a cache).

Thread safety: a cache is per run (one folder, one video), never global; its own bookkeeping is locked, so that
threads sharing one run's cache are safe (the web page's jobs each have their own or none).
"""

import dataclasses
import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Optional, Tuple

import torch

from extracter.inference.memory_plan import format_bytes, parse_memory

# without a budget: ~12 encoded 720x480 references (169 MiB each, relu1_1 stored), ~5 with the chunked search's key
# blocks (193 MiB more each at 3/1/1)
DEFAULT_CACHE_BYTES = 2 * 2 ** 30
KINDS = ('keys', 'textures')


def tensor_digest(*tensors: Optional[torch.Tensor]) -> str:
    """A BLAKE2b digest of the tensors' shapes, dtypes, devices and bytes (None counts as absent)."""
    h = hashlib.blake2b(digest_size=20)
    for t in tensors:
        if t is None:
            h.update(b'none;')
            continue
        h.update(f'{tuple(t.shape)}|{t.dtype}|{t.device.type};'.encode())
        flat = t.detach().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).cpu().numpy().data if flat.numel() else b'')
    return h.hexdigest()


def held_bytes(obj: Any, _seen: Optional[set] = None) -> int:
    """Bytes of the tensor storages ``obj`` holds (tensors, lists, tuples, dicts, dataclasses and plain objects,
    recursively; each storage counted once, whole: a view keeps its whole storage alive)."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = (storage.data_ptr(), obj.device.type)
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, (list, tuple)):
        return sum(held_bytes(v, seen) for v in obj)
    if isinstance(obj, dict):
        return sum(held_bytes(v, seen) for v in obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(held_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if isinstance(obj, (str, bytes, int, float, bool, type)) or obj is None:
        return 0
    try:
        fields = vars(obj)
    except TypeError:  # no attribute dictionary (slots, builtins)
        return 0
    return sum(held_bytes(v, seen) for v in fields.values())


@dataclass(frozen=True)
class CacheStats:
    """A cache's counters: ``hits``/``misses`` by kind (``keys``, ``textures``), entries dropped to stay within the
    cap (``evictions``) or never kept because they alone exceed what the call allowed (``not_kept``), what it holds
    now, and the seconds spent encoding (misses) and digesting references (every lookup)."""

    hits: Dict[str, int]
    misses: Dict[str, int]
    evictions: int
    not_kept: int
    entries: int
    bytes: int
    max_bytes: int
    encode_seconds: float
    digest_seconds: float

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    @property
    def total_misses(self) -> int:
        return sum(self.misses.values())

    def describe(self) -> str:
        parts = ', '.join(f'{k} {self.hits[k]} reused / {self.misses[k]} encoded' for k in KINDS)
        return (f'encoded references: {parts}; {self.entries} kept ({format_bytes(self.bytes)} of '
                f'{format_bytes(self.max_bytes)}), {self.evictions} evicted')


class ReferenceCache:
    """Encoded references of one run, least recently used out first (see the module's docstring).

    Args:
        max_bytes: the cap (bytes, or ``'2G'`` as ``--max-memory`` takes it); None: :data:`DEFAULT_CACHE_BYTES`;
            0 keeps nothing (every lookup encodes; the statistics still count, as a benchmark's baseline).
    """

    def __init__(self, max_bytes=None) -> None:
        self.max_bytes: int = DEFAULT_CACHE_BYTES if max_bytes is None else (
            0 if max_bytes == 0 else parse_memory(max_bytes))
        self._entries: OrderedDict[Tuple[Hashable, ...], Tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._net: Optional[weakref.ref] = None
        self._hits = dict.fromkeys(KINDS, 0)
        self._misses = dict.fromkeys(KINDS, 0)
        self._evictions = self._not_kept = 0
        self._encode_s = self._digest_s = 0.0

    # ------------------------------------------------------------------ what the engine calls
    def reference_id(self, ref: torch.Tensor, ref_downup: Optional[torch.Tensor]) -> str:
        """The content key of a padded reference (and its padded down-up-sampled version, if given)."""
        t0 = time.perf_counter()
        digest = tensor_digest(ref, ref_downup)
        with self._lock:
            self._digest_s += time.perf_counter() - t0
        return digest

    def bind(self, net: torch.nn.Module) -> None:
        """Tie the cache to ``net`` (the first network it serves); another network is refused."""
        with self._lock:
            bound = None if self._net is None else self._net()
            if bound is None:
                self._net = weakref.ref(net)
            elif bound is not net:
                raise ValueError('a ReferenceCache serves one network: make one per run (per network)')

    def trim(self, limit: Optional[int] = None) -> None:
        """Drop the least recently used entries until the cache holds at most ``limit`` bytes (default: its cap)."""
        with self._lock:
            self._trim(self._limit(limit))

    def get(self, kind: str, key: Tuple[Hashable, ...], make: Callable[[], Any], limit: Optional[int] = None) -> Any:
        """The entry of ``kind`` under ``key``, or ``make()``'s result, kept if it fits within ``limit`` bytes (the
        call's share: default the cap; never above it), the least recently used dropped to make room."""
        if kind not in KINDS:
            raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
        full = (kind,) + tuple(key)
        with self._lock:
            found = self._entries.get(full)
            if found is not None:
                self._entries.move_to_end(full)
                self._hits[kind] += 1
                return found[0]
            self._misses[kind] += 1
        t0 = time.perf_counter()
        value = make()
        spent = time.perf_counter() - t0
        size = held_bytes(value)
        with self._lock:
            self._encode_s += spent
            limit = self._limit(limit)
            if size > limit:
                self._not_kept += 1
                self._trim(limit)
                return value
            if full in self._entries:  # another thread made it meanwhile
                self._bytes -= self._entries.pop(full)[1]
            self._trim(limit - size)
            self._entries[full] = (value, size)
            self._bytes += size
        return value

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(dict(self._hits), dict(self._misses), self._evictions, self._not_kept,
                              len(self._entries), self._bytes, self.max_bytes, self._encode_s, self._digest_s)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    # ------------------------------------------------------------------ internals (called with the lock held)
    def _limit(self, limit: Optional[int]) -> int:
        return self.max_bytes if limit is None else max(0, min(int(limit), self.max_bytes))

    def _trim(self, limit: int) -> None:
        while self._entries and self._bytes > limit:
            _, (_, size) = self._entries.popitem(last=False)
            self._bytes -= size
            self._evictions += 1
