"""Reading BasicSR-layout LMDBs safely in one process, in DataLoader workers and under distributed training.

Layout (BasicSR's ``make_lmdb_from_imgs``): ``<name>.lmdb/data.mdb`` (+ ``lock.mdb``) whose records are encoded
images (PNG) keyed by the image name without extension, and ``<name>.lmdb/meta_info.txt`` with one line per record,
``<key>.png (h,w,c) <compression level>``.

What lmdb 3.0.0 (py-lmdb) actually does, found by experiment (see ``tests/test_data_lmdb.py``, which checks it):

- A second ``lmdb.open`` of the same environment in one process raises ``lmdb.Error: The environment ... is already
  open in this process``, whatever the flags (``readonly``, ``lock=False``) and whatever the path used to reach it: the
  guard keys on the (device, inode) of ``data.mdb`` and ``lock.mdb`` (``lmdb/_envid.py``), so a symlinked path is
  refused too. Closing the first environment makes the path openable again. So two datasets over one LMDB (train
  and validation sharing it, or BasicSR's own ``LmdbBackend`` beside ours) must share one environment object.
- After ``os.fork`` (DataLoader workers with the default ``fork`` start method) the child inherits the parent's
  registry of open environments: re-opening in the child raises the same error. The inherited handle still reads
  in a quick test, but LMDB's documentation forbids using an environment across ``fork()``. Closing the inherited
  handle in the child (which unmaps only the child's copy; the parent's handle keeps working) and opening again
  works. With the ``spawn``/``forkserver`` start methods the child starts clean.

Hence this module keeps a per-process cache of read-only environments keyed by the real path of the LMDB folder and
owning pid. A lookup from another pid (a forked child) closes the inherited handle and re-opens it. Environments are
opened ``readonly=True, lock=False, readahead=False`` (no lock file is written, no read-ahead of random records), as
BasicSR does. Datasets hold only the path and open lazily in ``__getitem__``, so they pickle (``spawn`` workers,
distributed launches) without carrying a handle.
"""

import os
import threading
from typing import Dict, List, Tuple

import lmdb

_LOCK = threading.Lock()
_ENVS: Dict[str, Tuple[int, 'lmdb.Environment']] = {}


def _real(path: str) -> str:
    return os.path.realpath(os.fspath(path))


def check_lmdb_folder(path: str) -> None:
    """A clear error unless ``path`` is an LMDB folder in BasicSR's layout."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{path}: no such LMDB folder')
    for name in ('data.mdb', 'meta_info.txt'):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f'{path}: not an LMDB in BasicSR layout (missing {name})')


def get_env(path: str) -> 'lmdb.Environment':
    """The read-only environment of LMDB folder ``path`` for the calling process (opened once per process)."""
    key = _real(path)
    pid = os.getpid()
    with _LOCK:
        entry = _ENVS.get(key)
        if entry is not None:
            owner, env = entry
            if owner == pid:
                return env
            # Inherited over fork(): LMDB handles must not cross fork. Closing it frees the path in this process.
            try:
                env.close()
            except lmdb.Error:
                pass
            del _ENVS[key]
        check_lmdb_folder(path)
        try:
            env = lmdb.open(key, readonly=True, lock=False, readahead=False, meminit=False, max_readers=2048)
        except lmdb.Error as err:
            raise RuntimeError(f'{path}: cannot open LMDB ({err}). If another library opened this LMDB in this '
                               'process, read it through extracter.data.lmdb_backend.get_env instead.') from err
        _ENVS[key] = (pid, env)
        return env


def close_all() -> None:
    """Close every environment this process opened (e.g. before deleting or rewriting an LMDB)."""
    with _LOCK:
        pid = os.getpid()
        for owner, env in _ENVS.values():
            if owner == pid:
                env.close()
        _ENVS.clear()


def read_bytes(path: str, key: str) -> bytes:
    """The record ``key`` of LMDB folder ``path``; a missing key is an error naming both."""
    env = get_env(path)
    with env.begin(write=False) as txn:
        data = txn.get(key.encode('ascii'))
    if data is None:
        raise KeyError(f'{path}: no record with key {key!r}')
    return bytes(data)


def parse_meta_line(line: str, meta_path: str, lineno: int) -> Tuple[str, Tuple[int, int, int], int]:
    """``'000_0.png (160,160,3) 1'`` -> (key '000_0', (h, w, c), compression level)."""
    try:
        name, rest = line.rsplit(' (', 1)
        shape_str, level = rest.split(') ')
        h, w, c = (int(v) for v in shape_str.split(','))
        key = name[:-4] if name.lower().endswith('.png') else os.path.splitext(name)[0]
        return key, (h, w, c), int(level)
    except ValueError as err:
        raise ValueError(f'{meta_path}:{lineno}: malformed meta_info line {line!r} '
                         '(expected "<key>.png (h,w,c) <level>")') from err


def read_meta_info(path: str) -> List[Tuple[str, Tuple[int, int, int], int]]:
    """All entries of ``<path>/meta_info.txt`` in file order."""
    check_lmdb_folder(path)
    meta_path = os.path.join(path, 'meta_info.txt')
    with open(meta_path, encoding='utf-8') as f:
        return [parse_meta_line(line.rstrip('\n'), meta_path, i + 1) for i, line in enumerate(f) if line.strip()]
