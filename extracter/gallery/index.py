"""The gallery index: one descriptor per gallery image, computed once and kept while the file is unchanged.

Format (one file, written atomically; no pickle anywhere): an ``.npz`` read with ``allow_pickle=False`` holding
``descriptors`` (float16 [N, D]), ``stats`` (int64 [N, 2]: file size and mtime in ns), ``hw`` (int32 [N, 2]: the
image's height and width) and ``meta`` (the UTF-8 bytes of a JSON object: ``format``, ``recipe``, ``model``,
``root``, ``names``, the files' paths relative to ``root``, and ``skipped``: files that could not be described, with
their stats and why, so that they are not read again until they change).

Where: ``--gallery-index PATH``, or by default ``$XDG_CACHE_HOME/extracter/gallery/<digest>.npz`` (``~/.cache`` when
unset), the digest taken over the gallery's absolute path, the model's identity and the recipe; never inside the
gallery (a read-only gallery works). Updates take a lock beside the index (``PATH.lock``, ``fcntl.flock``): a second
run waits, then finds the index up to date. Under torchrun, rank 0 holds the lock, the files to describe are shared
out by rank (every WORLD_SIZE-th, as the folder inference shares its inputs), the descriptors gathered through the
process group, and rank 0 writes the index.
"""

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from extracter.archs.refsr_base import RefSRNet
from extracter.data.image_io import ImageReadError, is_image_file, read_image
from extracter.gallery.descriptor import DESCRIPTOR_DIM, RECIPE, describe_image, model_identity, stack_descriptors
from extracter.utils.file_io import atomic_write

INDEX_FORMAT = 1
MIN_SIDE = 32  # smaller images are skipped: too small to offer texture (relu3_1 would be under 8 x 8)


class GalleryError(ValueError):
    """A gallery that cannot be used (no images, none readable, an index inside it)."""


@dataclass
class GalleryIndex:
    """The descriptors of a gallery's images (see the module docstring); ``names`` relative to ``root``."""

    root: str
    model: str
    names: List[str] = field(default_factory=list)
    stats: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    hw: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    descriptors: np.ndarray = field(default_factory=lambda: np.zeros((0, DESCRIPTOR_DIM), np.float16))
    skipped: List[Tuple[str, int, int, str]] = field(default_factory=list)  # (name, size, mtime_ns, why)
    recipe: str = RECIPE

    def __len__(self) -> int:
        return len(self.names)

    @property
    def paths(self) -> List[str]:
        return [os.path.join(self.root, n) for n in self.names]

    def save(self, path: os.PathLike) -> None:
        meta = {'format': INDEX_FORMAT, 'recipe': self.recipe, 'model': self.model, 'root': self.root,
                'names': self.names, 'skipped': [list(s) for s in self.skipped]}

        def write(tmp: str) -> None:
            with open(tmp, 'wb') as f:
                np.savez(f, descriptors=self.descriptors.astype(np.float16), stats=self.stats.astype(np.int64),
                         hw=self.hw.astype(np.int32), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)

    @classmethod
    def load(cls, path: os.PathLike) -> 'GalleryIndex':
        """The index at ``path``; a ValueError saying why for a file that is not one (its caller rebuilds it)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data['meta']).decode())
                arrays = {k: np.array(data[k]) for k in ('descriptors', 'stats', 'hw')}
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
            raise ValueError(f'{path} is not a gallery index ({type(err).__name__}: {err})') from None
        if not isinstance(meta, dict) or meta.get('format') != INDEX_FORMAT:
            raise ValueError(f'{path}: gallery index format {meta.get("format") if isinstance(meta, dict) else "?"}, '
                             f'this version reads format {INDEX_FORMAT}')
        n = len(meta['names'])
        if arrays['descriptors'].shape[0] != n or arrays['stats'].shape != (n, 2) or arrays['hw'].shape != (n, 2):
            raise ValueError(f'{path}: gallery index arrays do not match its {n} names')
        return cls(root=meta['root'], model=meta['model'], names=list(meta['names']), recipe=meta['recipe'],
                   skipped=[tuple(s) for s in meta['skipped']], **arrays)

    def subset(self, keep: Sequence[int]) -> 'GalleryIndex':
        keep = list(keep)
        return GalleryIndex(self.root, self.model, [self.names[i] for i in keep], self.stats[keep], self.hw[keep],
                            self.descriptors[keep], list(self.skipped), self.recipe)


@dataclass
class IndexStats:
    """What an update did (public, for the command line's report and the tests): images ``described`` now,
    ``reused`` from the stored index, entries ``removed`` (files gone or changed), files ``skipped`` (each ``path:
    why``, listed at the end of a run), ``notes`` (an index rebuilt, and why), where the index is, and the seconds
    spent describing."""

    path: str = ''
    described: int = 0
    reused: int = 0
    removed: int = 0
    skipped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0


def cache_folder() -> Path:
    """The user's cache folder for indexes: ``$XDG_CACHE_HOME/extracter/gallery`` (``~/.cache`` when unset)."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'extracter' / 'gallery'


def default_index_path(gallery: os.PathLike, model: str) -> Path:
    """Where the index of ``gallery`` for the model of identity ``model`` goes by default."""
    key = f'{os.path.abspath(gallery)}\n{model}\n{RECIPE}'.encode()
    return cache_folder() / f'{hashlib.sha256(key).hexdigest()[:24]}.npz'


def list_gallery(gallery: os.PathLike) -> List[str]:
    """The image files of a gallery folder and its sub-folders (hidden ones left out), relative, sorted."""
    root = os.fspath(gallery)
    if not os.path.isdir(root):
        raise GalleryError(f'gallery {root}: ' + ('is a file, give a folder of photos' if os.path.exists(root)
                                                  else 'no such folder'))
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        rel = os.path.relpath(folder, root)
        names += [os.path.normpath(os.path.join(rel, f)) for f in files
                  if is_image_file(f) and not f.startswith('.')]
    return sorted(names)


def _stat(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


@contextlib.contextmanager
def index_lock(index_path: os.PathLike) -> Iterator[None]:
    """The exclusive lock of an index (``PATH.lock`` beside it; ``fcntl.flock``, released when the process ends):
    one update at a time, a second waits."""
    lock_path = Path(f'{index_path}.lock')
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(lock_path, 'a+') as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def check_index_place(gallery: os.PathLike, index_path: os.PathLike) -> None:
    """The index never goes inside the gallery (it would change the gallery, and a read-only gallery would fail)."""
    gal, idx = Path(gallery).resolve(), Path(index_path).resolve()
    if idx == gal or gal in idx.parents:
        raise GalleryError(f'gallery index {index_path} is inside the gallery {gallery}; give a path outside it '
                           '(the default is under the cache folder)')


def _load_matching(index_path: Path, root: str, model: str, notes: List[str]) -> Optional[GalleryIndex]:
    """The stored index if it was made by this model and recipe (else None, with a note: it is rebuilt)."""
    if not index_path.exists():
        return None
    try:
        old = GalleryIndex.load(index_path)
    except ValueError as err:
        notes.append(f'{err}; rebuilding it')
        return None
    if old.recipe != RECIPE or old.model != model:
        what = f'descriptor recipe {old.recipe!r}' if old.recipe != RECIPE else f'another model ({old.model[:12]})'
        notes.append(f'gallery index {index_path} was made with {what}; rebuilding it for this one')
        return None
    if old.root != root:
        notes.append(f'gallery index {index_path} was made for the gallery {old.root}; rebuilding it for {root}')
        return None
    return old


Describe = Callable[[str], Tuple[np.ndarray, Tuple[int, int]]]


def _describe_files(describe: Describe, paths: Sequence[str], min_side: int, show: bool
                    ) -> List[Tuple[Optional[np.ndarray], Tuple[int, int], str]]:
    """(descriptor or None, (h, w), why not) per file, with a progress bar and ETA."""
    from tqdm import tqdm

    out = []
    for path in tqdm(paths, desc='gallery index', unit='img', disable=not show or not paths, leave=False):
        try:
            desc, hw = describe(path)
        except (ImageReadError, OSError, ValueError) as err:
            msg = str(err)
            out.append((None, (0, 0), msg[len(path) + 2:] if msg.startswith(f'{path}: ') else msg))
            continue
        if min(hw) < min_side:
            out.append((None, hw, f'too small ({hw[1]} x {hw[0]}, under {min_side} pixels a side)'))
        else:
            out.append((desc, hw, ''))
    return out


def image_describer(net: RefSRNet, device: str = 'cpu') -> Describe:
    """Read a file and describe it: (descriptor, (height, width))."""
    def describe(path: str) -> Tuple[np.ndarray, Tuple[int, int]]:
        rgb = read_image(path)
        return describe_image(net, rgb, device), rgb.shape[:2]

    return describe


def _shared(obj, world: int):
    """Rank 0's ``obj`` on every process (torch.distributed, when several share the work)."""
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(part: list, world: int) -> List[list]:
    """Every process' ``part``, in rank order (torch.distributed when ``world`` > 1)."""
    if world <= 1:
        return [part]
    import torch.distributed as dist

    parts: List[list] = [[] for _ in range(world)]
    dist.all_gather_object(parts, part)
    return parts


def update_index(net: RefSRNet, gallery: os.PathLike, index_path: Optional[os.PathLike] = None, device: str = 'cpu',
                 rank: int = 0, world: int = 1, progress: bool = True, min_side: int = MIN_SIDE,
                 describe: Optional[Describe] = None) -> Tuple[GalleryIndex, IndexStats]:
    """The index of ``gallery`` for ``net``, brought up to date: files added or changed (size, mtime_ns) are
    described, files gone are dropped, the rest is reused; an index of another model or recipe is rebuilt (a
    note). Unreadable or tiny files are skipped (``stats.skipped``), never stopping the run; a gallery without a
    usable image is a :class:`GalleryError`. Under torchrun (``world`` > 1, the process group initialised) every
    process calls it: see the module docstring. ``describe``: how a file is described (default: read it and
    :func:`describe_image`)."""
    root = os.path.abspath(gallery)
    names = list_gallery(root)
    if not names:
        raise GalleryError(f'gallery {gallery}: no images (extensions png, jpg, ...) in it or its sub-folders')
    with torch.no_grad():
        model = model_identity(net)
    index_path = Path(index_path) if index_path is not None else default_index_path(root, model)
    check_index_place(root, index_path)
    stats = IndexStats(path=str(index_path))
    lock = index_lock(index_path) if rank == 0 else contextlib.nullcontext()
    with lock:
        plan = None
        if rank == 0:
            plan = _plan(index_path, root, model, names)
        old, keep, todo, kept_skips, notes = _shared(plan, world)
        stats.notes = notes
        describe = describe or image_describer(net, device)
        start = time.perf_counter()
        mine = todo[rank::world]
        parts = gathered(_describe_files(describe, [os.path.join(root, n) for n in mine], min_side,
                                        progress and rank == 0), world)
        results = [None] * len(todo)
        for r, part in enumerate(parts):
            for j, res in enumerate(part):
                results[r + j * world] = res
        stats.seconds = time.perf_counter() - start
        index = _merged(old, keep, todo, results, kept_skips, root, model, stats)
        changed = old is None or stats.removed or todo or len(kept_skips) != len(old.skipped)
        if rank == 0 and changed:
            index.save(index_path)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the index is written before anyone reads it again
    stats.skipped = [f'{os.path.join(root, s[0])}: {s[3]}' for s in index.skipped]
    if not len(index):
        raise GalleryError(f'gallery {gallery}: none of its {len(names)} image file(s) could be used:\n  ' +
                           '\n  '.join(stats.skipped))
    return index, stats


def _plan(index_path: Path, root: str, model: str, names: List[str]):
    """What to reuse and what to describe: (old index, its rows kept, names to describe, skips kept, notes)."""
    notes: List[str] = []
    old = _load_matching(index_path, root, model, notes)
    current = {}
    for n in names:
        try:
            current[n] = _stat(os.path.join(root, n))
        except OSError:
            continue  # gone since the listing
    keep, known = [], set()
    if old is not None:
        for i, n in enumerate(old.names):
            if n in current and tuple(int(v) for v in old.stats[i]) == current[n]:
                keep.append(i)
                known.add(n)
    kept_skips = [s for s in (old.skipped if old is not None else [])
                  if s[0] in current and (int(s[1]), int(s[2])) == current[s[0]]]
    known |= {s[0] for s in kept_skips}
    todo = [n for n in names if n in current and n not in known]
    return old, keep, todo, kept_skips, notes


def _merged(old: Optional[GalleryIndex], keep: List[int], todo: List[str], results, kept_skips, root: str,
            model: str, stats: IndexStats) -> GalleryIndex:
    """The kept rows of ``old`` and the newly described files, sorted by name."""
    rows = []  # (name, stats, hw, descriptor)
    if old is not None:
        rows = [(old.names[i], tuple(old.stats[i]), tuple(old.hw[i]), old.descriptors[i]) for i in keep]
        stats.removed = len(old) - len(keep)
    stats.reused = len(rows)
    skipped = list(kept_skips)
    for name, (desc, hw, why) in zip(todo, results):
        try:
            st = _stat(os.path.join(root, name))
        except OSError:
            continue
        if desc is None:
            skipped.append((name, st[0], st[1], why))
        else:
            rows.append((name, st, hw, desc))
            stats.described += 1
    rows.sort(key=lambda r: r[0])
    return GalleryIndex(root=root, model=model, names=[r[0] for r in rows],
                        stats=np.array([r[1] for r in rows], np.int64).reshape(-1, 2),
                        hw=np.array([r[2] for r in rows], np.int32).reshape(-1, 2),
                        descriptors=stack_descriptors([r[3] for r in rows]),
                        skipped=sorted(skipped))


def index_files(net: RefSRNet, paths: Sequence[str], device: str = 'cpu', min_side: int = MIN_SIDE
                ) -> Tuple[GalleryIndex, List[str]]:
    """An index of loose files kept in memory only (the web page's uploads): (index, the files skipped and why)."""
    results = _describe_files(image_describer(net, device), list(paths), min_side, False)
    rows = [(os.path.abspath(p), r) for p, r in zip(paths, results) if r[0] is not None]
    skipped = [f'{p}: {r[2]}' for p, r in zip(paths, results) if r[0] is None]
    index = GalleryIndex(root='/', model=model_identity(net), names=[p for p, _ in rows],
                         stats=np.zeros((len(rows), 2), np.int64),
                         hw=np.array([r[1] for _, r in rows], np.int32).reshape(-1, 2),
                         descriptors=stack_descriptors([r[0] for _, r in rows]))
    return index, skipped
