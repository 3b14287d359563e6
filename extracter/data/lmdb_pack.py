"""Packing image folders into LMDBs in BasicSR's layout, safely (used by ``scripts/create_lmdb.py``).

Each LMDB is built in a temporary folder beside its destination, then verified (record count, and every record
decoded and compared with a checksum of the pixels that were encoded), and only then moved into place. A failure
anywhere (an unreadable image, a missing pair, a full disk, Ctrl-C, SIGTERM) leaves no LMDB at the destination
and removes the temporary folders (``.<name>.lmdb.extracter-tmp-<host>-<pid>.<random>.tmp``); an existing LMDB is
replaced only with ``overwrite=True``, and a run killed outright (SIGKILL) leaves a temporary folder that the next
run in that folder removes (:func:`extracter.utils.file_io.clean_stale_temp_files`). Records are lossless PNGs of the
uint8 RGB image as :func:`extracter.data.image_io.read_image` reads it (EXIF orientation applied, greyscale
expanded, ...), so reading from the LMDB gives the same pixels as reading the folder.
"""

import os
import re
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import lmdb

from extracter.data.image_io import ImageReadError, decode_image_bytes, encode_png, list_images, read_image
from extracter.utils.file_io import (
    TEMP_SUFFIX,
    clean_stale_temp_files,
    ensure_folder,
    interruptible,
    signals_deferred,
    temp_prefix,
)

COMMIT_EVERY = 500
MIN_MAP_SIZE = 64 << 20  # initial LMDB map size; it grows (doubling) when full


class PackError(RuntimeError):
    """Packing failed; ``problems`` lists every file or pair at fault."""

    def __init__(self, message: str, problems: Sequence[str]) -> None:
        super().__init__(message + ''.join(f'\n  {p}' for p in problems))
        self.problems = list(problems)


@dataclass
class PackJob:
    """One LMDB to build: ``files`` maps keys to image paths."""

    dst: str
    files: Dict[str, str]
    tmp: str = ''
    count: int = 0
    checksums: Dict[str, Tuple[Tuple[int, int, int], int]] = field(default_factory=dict)


def folder_files(folder: str) -> Dict[str, str]:
    """key (file name without extension) -> path, for the images of ``folder``; duplicate stems are an error."""
    files: Dict[str, str] = {}
    dup = []
    for name in list_images(folder):
        key = os.path.splitext(name)[0]
        if key in files:
            dup.append(f'{os.path.join(folder, name)}: same key {key!r} as {files[key]}')
        files[key] = os.path.join(folder, name)
    if dup:
        raise PackError(f'{folder}: image names must be unique without their extension', dup)
    return files


def check_pairs(input_files: Dict[str, str], ref_files: Dict[str, str]) -> List[str]:
    """CUFED train: every input needs a reference of the same name and vice versa."""
    problems = [f'{p}: no reference with this name' for k, p in sorted(input_files.items()) if k not in ref_files]
    problems += [f'{p}: no input (HR) image with this name' for k, p in sorted(ref_files.items())
                 if k not in input_files]
    return problems


def check_cufed5(files: Dict[str, str]) -> List[str]:
    """CUFED5: ``NNN_0`` with ``NNN_1`` .. ``NNN_5`` for every group, nothing else."""
    groups: Dict[str, set] = {}
    problems = []
    for key, path in sorted(files.items()):
        m = re.fullmatch(r'(.+)_([0-5])', key)
        if not m:
            problems.append(f'{path}: not a CUFED5 name (NNN_0 .. NNN_5)')
            continue
        groups.setdefault(m.group(1), set()).add(int(m.group(2)))
    for group, levels in sorted(groups.items()):
        missing = sorted(set(range(6)) - levels)
        if missing:
            problems.append(f'group {group}: missing {", ".join(f"{group}_{i}" for i in missing)}')
    return problems


def _progress(iterable, total: int, desc: str, show: bool):
    if not show:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit='img', file=sys.stderr)


def _write(job: PackJob, compress_level: int, show_progress: bool) -> List[str]:
    """Write ``job`` into ``job.tmp``; returns the unreadable files (nothing is kept in that case by the caller)."""
    problems = []
    total_bytes = sum(os.path.getsize(p) for p in job.files.values())
    map_size = max(MIN_MAP_SIZE, total_bytes * 8)
    env = lmdb.open(job.tmp, map_size=map_size, subdir=True, readonly=False, meminit=False, map_async=True)
    meta_lines = []
    try:
        txn = env.begin(write=True)
        keys = sorted(job.files)
        for i, key in enumerate(_progress(keys, len(keys), f'pack {os.path.basename(job.dst)}', show_progress)):
            try:
                img = read_image(job.files[key])
            except ImageReadError as err:
                problems.append(str(err))
                continue
            data = encode_png(img, compress_level)
            job.checksums[key] = (img.shape, zlib.crc32(img.tobytes()))
            while True:
                try:
                    txn.put(key.encode('ascii'), data)
                    break
                except lmdb.MapFullError:  # grow the map and redo the uncommitted part
                    txn.abort()
                    map_size *= 2
                    env.set_mapsize(map_size)
                    txn = env.begin(write=True)
                    for k in keys[i - (i % COMMIT_EVERY):i]:
                        if k in job.checksums:
                            txn.put(k.encode('ascii'), encode_png(read_image(job.files[k]), compress_level))
            h, w, c = img.shape
            meta_lines.append(f'{key}.png ({h},{w},{c}) {compress_level}\n')
            if (i + 1) % COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
        env.sync(True)
    finally:
        env.close()
    with open(os.path.join(job.tmp, 'meta_info.txt'), 'w', encoding='utf-8') as f:
        f.writelines(meta_lines)
    return problems


def verify_lmdb(path: str, expected: Optional[Dict[str, Tuple[Tuple[int, int, int], int]]] = None,
                show_progress: bool = False) -> int:
    """Check an LMDB: record count equals meta_info's, every record decodes to its meta_info shape and, with
    ``expected`` (key -> (shape, crc32 of the pixels)), to exactly those pixels. Returns the record count."""
    from extracter.data.lmdb_backend import read_meta_info

    meta = read_meta_info(path)
    problems = []
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False)
    except lmdb.Error as err:
        raise PackError(f'{path}: not a readable LMDB ({err})', []) from err
    try:
        entries = env.stat()['entries']
        if entries != len(meta):
            problems.append(f'{path}: {entries} records but meta_info.txt lists {len(meta)}')
        if expected is not None and set(expected) != {k for k, _, _ in meta}:
            problems.append(f'{path}: meta_info.txt keys differ from the packed images')
        with env.begin() as txn:
            for key, shape, _ in _progress(meta, len(meta), f'verify {os.path.basename(path)}', show_progress):
                data = txn.get(key.encode('ascii'))
                if data is None:
                    problems.append(f'{path}: record {key} listed in meta_info.txt is missing')
                    continue
                try:
                    img = decode_image_bytes(bytes(data), f'{path}:{key}')
                except ImageReadError as err:
                    problems.append(str(err))
                    continue
                if img.shape != tuple(shape):
                    problems.append(f'{path}: record {key} decodes to {img.shape}, meta_info says {shape}')
                elif expected is not None and expected[key] != (img.shape, zlib.crc32(img.tobytes())):
                    problems.append(f'{path}: record {key} does not decode to the pixels that were packed')
    finally:
        env.close()
    if problems:
        raise PackError(f'{path}: verification failed', problems)
    return len(meta)


def _replace_dir(tmp: str, dst: str) -> None:
    """Move the finished ``tmp`` folder to ``dst``, replacing an existing ``dst`` (the caller checked overwrite).

    The two renames are not interrupted by SIGTERM (it is acted on after them); after a SIGKILL between them, the old
    LMDB waits as ``.<name>.extracter-old-<host>-<pid>`` and the next run puts it back."""
    old = None
    with signals_deferred():
        if os.path.lexists(dst):
            old = os.path.join(os.path.dirname(dst), temp_prefix(dst, 'old').rstrip('.'))
            os.replace(dst, old)
        os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)


def pack(jobs: Sequence[PackJob], compress_level: int = 1, overwrite: bool = False, show_progress: bool = True,
         log: Callable[[str], None] = print) -> Dict[str, int]:
    """Build every LMDB of ``jobs`` all-or-nothing: each is written to a temporary folder and verified; only when
    all succeeded are they moved to their destinations. Returns destination -> record count."""
    if not 0 <= compress_level <= 9:
        raise ValueError(f'compress_level must be 0..9, got {compress_level}')
    for parent in sorted({os.path.dirname(os.path.abspath(job.dst)) for job in jobs}):
        clean_stale_temp_files(parent, log=log)  # before looking at what exists: an interrupted replacement is undone
    existing = [j.dst for j in jobs if os.path.lexists(j.dst)]
    if existing and not overwrite:
        raise PackError('refusing to touch existing LMDB(s); pass --overwrite to replace them', existing)
    for job in jobs:
        if not job.dst.endswith('.lmdb'):
            raise ValueError(f'{job.dst}: an LMDB folder name must end with .lmdb (BasicSR checks it)')
        if not job.files:
            raise PackError(f'{job.dst}: nothing to pack', [])
        for key in job.files:
            if not key.isascii() or ' ' in key:
                raise PackError(f'{job.dst}: LMDB keys must be ASCII without spaces', [job.files[key]])
    problems: List[str] = []
    with interruptible():  # SIGTERM/SIGHUP raise, so the finally below removes the temporary folders
        try:
            _pack(jobs, compress_level, show_progress, log, problems)
            return {job.dst: job.count for job in jobs}
        finally:
            for job in jobs:
                if job.tmp and os.path.isdir(job.tmp):
                    shutil.rmtree(job.tmp, ignore_errors=True)


def _pack(jobs: Sequence[PackJob], compress_level: int, show_progress: bool, log: Callable[[str], None],
          problems: List[str]) -> None:
    for job in jobs:
        parent = os.path.dirname(os.path.abspath(job.dst))
        ensure_folder(parent)
        try:
            job.tmp = tempfile.mkdtemp(prefix=temp_prefix(job.dst), suffix=TEMP_SUFFIX, dir=parent)
        except OSError as err:
            raise OSError(err.errno, f'cannot write into {parent}: {err.strerror}') from err
        log(f'packing {len(job.files)} images into {job.dst}')
        try:
            problems += _write(job, compress_level, show_progress)
        except lmdb.Error as err:  # a full disk, a file system LMDB cannot map, ...
            raise PackError(f'{job.dst}: writing the LMDB (in {job.tmp}) failed: {err}', []) from err
    if problems:
        raise PackError('unreadable image(s); no LMDB was written', problems)
    for job in jobs:
        job.count = verify_lmdb(job.tmp, job.checksums, show_progress)
        if job.count != len(job.files):
            raise PackError(f'{job.dst}: {job.count} records for {len(job.files)} images', [])
    with signals_deferred():  # all LMDBs are replaced, or none: SIGTERM is acted on after the last one
        for job in jobs:
            _replace_dir(job.tmp, job.dst)
            log(f'wrote {job.dst}: {job.count} records, verified')


def cufed_jobs(cufed_root: str, out_root: Optional[str] = None, sets: Sequence[str] = ('train', 'cufed5')
               ) -> List[PackJob]:
    """The LMDBs of CUFED: ``train/input.lmdb`` + ``train/ref.lmdb`` (pairs checked) and ``test/CUFED5.lmdb``
    (groups checked), under ``out_root`` (default: ``cufed_root``), mirroring the folders they come from."""
    out_root = out_root or cufed_root
    jobs, problems = [], []
    if 'train' in sets:
        inp = folder_files(os.path.join(cufed_root, 'train', 'input'))
        ref = folder_files(os.path.join(cufed_root, 'train', 'ref'))
        problems += check_pairs(inp, ref)
        jobs += [PackJob(os.path.join(out_root, 'train', 'input.lmdb'), inp),
                 PackJob(os.path.join(out_root, 'train', 'ref.lmdb'), ref)]
    if 'cufed5' in sets:
        files = folder_files(os.path.join(cufed_root, 'test', 'CUFED5'))
        problems += check_cufed5(files)
        jobs.append(PackJob(os.path.join(out_root, 'test', 'CUFED5.lmdb'), files))
    if problems:
        raise PackError('CUFED is incomplete; no LMDB was written', problems)
    return jobs
