"""Atomic writes, no-overwrite checks and interruption safety for everything we save.

Every output is written to a temporary file (or folder) beside its destination and renamed onto it when complete, so
a destination holds either its previous content or the new one, never half of it. The temporary names follow one
pattern, ``.<name>.extracter-tmp-<host>-<pid>.<random>.tmp`` (``extracter-old`` for a replaced LMDB kept for a
moment),
so that they can be recognised later:

- on an exception, Ctrl-C, or SIGTERM/SIGHUP (a job scheduler's kill, a closed terminal) the temporary file is
  removed: :func:`interruptible` turns those signals into a :class:`Terminated` exception (a ``SystemExit``) while an
  atomic write is in progress, so the ``except BaseException`` cleanup runs;
- after a SIGKILL, a power cut or an out-of-memory kill nothing can run, so the next run calls
  :func:`clean_stale_temp_files` on its output folder: it removes the temporary files of processes of this host that
  no longer exist (and reports, without touching them, those of other hosts, which it cannot check).
"""

import errno
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]

TEMP_MARK = 'extracter'
TEMP_SUFFIX = '.tmp'  # kept at the end, where tools and .gitignore files look for it
_TEMP_RE = re.compile(r'^\.(?P<name>.+)\.extracter-(?P<kind>tmp|old)-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)'
                      r'(?:\.[A-Za-z0-9_]+)?(?:\.tmp)?$')
_MAX_NAME_IN_TEMP = 100  # file names are limited to 255 bytes; the temporary name adds about 40
_SIGNALS = tuple(getattr(signal, n) for n in ('SIGTERM', 'SIGHUP') if hasattr(signal, n))


def host_tag() -> str:
    """This machine's name as it appears in temporary names (letters, digits, ``_`` and ``-``)."""
    return re.sub(r'[^A-Za-z0-9_-]', '_', socket.gethostname().split('.')[0])[:40] or 'host'


def temp_prefix(path: PathLike, kind: str = 'tmp') -> str:
    """``.<name>.extracter-<kind>-<host>-<pid>.`` for ``path``: the start of its temporary files' names."""
    name = Path(path).name[:_MAX_NAME_IN_TEMP]
    return f'.{name}.{TEMP_MARK}-{kind}-{host_tag()}-{os.getpid()}.'


def parse_temp_name(name: str) -> Optional[Tuple[str, str, str, int]]:
    """``(target name, kind, host, pid)`` of one of our temporary names, or None for any other name."""
    m = _TEMP_RE.match(name)
    if not m:
        return None
    return m.group('name'), m.group('kind'), m.group('host'), int(m.group('pid'))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True  # cannot tell: keep its files
    return True


# --- interruption -----------------------------------------------------------------------------------------------------


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM or SIGHUP arrives inside :func:`interruptible`; exit status 128 + signal
    number, as a shell reports a process killed by that signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f'terminated by {signal.Signals(self.signum).name}'


class _Handler:
    """Our handler for one signal; ``previous`` is whatever was installed before it."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def __call__(self, signum, frame) -> None:
        if _state.deferring:
            _state.pending = signum  # inside a rename sequence: raise when it is complete
            return
        if callable(self.previous):
            # Someone else handles the signal too (e.g. a trainer saving a checkpoint): call it first. If it returns,
            # the process survives the signal, the write completes, and there is nothing to clean.
            self.previous(signum, frame)
            return
        raise Terminated(signum)


class _State(threading.local):
    deferring = 0
    pending: Optional[int] = None


_state = _State()


@contextmanager
def interruptible() -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP raise :class:`Terminated` (in the main thread), so cleanup code runs.

    Nests (an inner block inside an outer one changes nothing); a signal that is ignored (``SIG_IGN``, e.g. SIGHUP
    under ``nohup``) stays ignored; a Python handler installed before is called instead of raising (see
    :class:`_Handler`); the previous handlers are restored on exit. Outside the main thread, signals cannot be
    handled by Python, and the block does nothing."""
    installed = []
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            try:
                current = signal.getsignal(sig)
            except (ValueError, OSError):
                continue
            if isinstance(current, _Handler) or current == signal.SIG_IGN:
                continue
            handler = _Handler(current)
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):
                continue
            installed.append((sig, handler, current))
    try:
        yield
    finally:
        for sig, handler, previous in reversed(installed):
            if signal.getsignal(sig) is handler:  # not if someone installed theirs meanwhile
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGTERM/SIGHUP (as installed by :func:`interruptible`) until a sequence of renames is complete."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
        if not _state.deferring and _state.pending is not None:
            signum, _state.pending = _state.pending, None
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, None)
            elif handler != signal.SIG_IGN:  # ours was removed meanwhile: the default action is to end
                raise Terminated(signum)


# --- writing ----------------------------------------------------------------------------------------------------------


def refuse_overwrite(path: PathLike, overwrite: bool, flag: str = '--overwrite') -> None:
    """Raise if ``path`` exists and ``overwrite`` is not set; a folder where a file is to go is always an error."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f'{path} is a folder; give the path of a file to write')
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(errno.EEXIST, f'{path} already exists; pass {flag} to replace it')


def ensure_folder(folder: PathLike) -> None:
    """``mkdir -p``, with errors that name the folder (and the file in the way, if any)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = Path(folder)
        while not blocker.exists() and blocker != blocker.parent:
            blocker = blocker.parent
        raise NotADirectoryError(errno.ENOTDIR, f'cannot write into {folder}: {blocker} is a file, not a folder') \
            from err
    except OSError as err:
        raise OSError(err.errno, f'cannot write into {folder}: {err.strerror}') from err


def check_writable(folder: PathLike) -> None:
    """Make sure files can be created in ``folder`` (or, if it does not exist yet, in its nearest existing parent,
    where it would be made) before any work: a file in the way is a ``NotADirectoryError`` naming it, a read-only
    place a ``PermissionError`` / ``OSError`` naming the folder. Tested by creating and removing one of our
    temporary files (so also a read-only mount, or root on a read-only file system, is found); nothing is left."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():  # a dangling link: makedirs would fail on it
            raise NotADirectoryError(errno.ENOTDIR, f'cannot write into {folder}: {probe} is a broken link')
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f'cannot write into {folder}: {probe} is a file, not a folder')
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(folder / 'write-test'), suffix=TEMP_SUFFIX, dir=probe)
    except OSError as err:
        where = folder if probe == folder else f'{folder} (checked {probe}, where it would be made)'
        raise OSError(err.errno, f'cannot write into {where}: {err.strerror}') from err
    os.close(fd)
    os.remove(tmp)


def _mkstemp_in(folder: Path, prefix: str) -> str:
    ensure_folder(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=folder)
    except OSError as err:  # the folder's name, not the temporary file's, says what is wrong
        raise OSError(err.errno, f'cannot write into {folder}: {err.strerror}') from err
    os.close(fd)
    return tmp


def _refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f'{path} is a folder; give the path of a file to write')


def _usual_permissions(tmp: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file in the target folder, then rename it onto ``path``.

    A crash mid-write leaves the previous file (if any) intact; the temporary file
    (``.<name>.extracter-tmp-<host>-<pid>.<random>.tmp``) is removed on an exception, Ctrl-C, SIGTERM or SIGHUP.
    """
    path = Path(path)
    _refuse_folder(path)
    with interruptible():
        tmp = _mkstemp_in(path.parent, temp_prefix(path))
        try:
            write(tmp)
            _usual_permissions(tmp)
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise


def atomic_write_all(files: Sequence[Tuple[PathLike, Callable[[str], None]]]) -> None:
    """Write several files as one, e.g. the pictures of one image: each ``write(tmp_path)`` to a temporary file
    first, then all renamed onto their paths in one go, with SIGTERM/SIGHUP held back until the last rename
    (:func:`signals_deferred`). An exception, Ctrl-C or SIGTERM while the files are written leaves none of them (the
    temporary files are removed); only a Ctrl-C or a failure between two renames (microseconds) or a SIGKILL can
    leave some: the exception then carries the paths already in place (:func:`written_before_failure`)."""
    staged: List[Tuple[str, Path]] = []
    with interruptible():
        try:
            for path, write in files:
                path = Path(path)
                _refuse_folder(path)
                staged.append((_mkstemp_in(path.parent, temp_prefix(path)), path))
                write(staged[-1][0])
                _usual_permissions(staged[-1][0])
            with signals_deferred():
                for tmp, path in staged:
                    os.replace(tmp, path)
        except BaseException as err:
            placed = [path for tmp, path in staged if not os.path.lexists(tmp)]
            for tmp, _ in staged:
                _remove_quietly(tmp)
            if placed:
                err.extracter_written = placed
            raise


def written_before_failure(err: BaseException) -> List[Path]:
    """The files :func:`atomic_write_all` had put in place when ``err`` stopped it (usually none)."""
    return list(getattr(err, 'extracter_written', ()))


LEFT_NOTHING = 'temporary files were removed, no partly written file was left'


def set_left_behind(err: BaseException, note: str) -> None:
    """Say on an interruption (Ctrl-C, :class:`Terminated`) what the run left, for the command line's message."""
    err.extracter_left = note


def left_behind(err: BaseException) -> str:
    """What an interrupted run left (:func:`set_left_behind`), by default :data:`LEFT_NOTHING`."""
    return getattr(err, 'extracter_left', None) or LEFT_NOTHING


def atomic_torch_save(obj, path: PathLike) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: PathLike, text: str) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)

    atomic_write(path, _write)


# --- cleaning up after a killed run -----------------------------------------------------------------------------------


@dataclass
class StaleReport:
    """What :func:`clean_stale_temp_files` found: paths removed, old LMDBs put back, and paths left (live or foreign
    processes), each with the reason."""

    removed: List[str] = field(default_factory=list)
    restored: List[str] = field(default_factory=list)
    kept: List[Tuple[str, str]] = field(default_factory=list)

    def lines(self) -> List[str]:
        out = [f'removed stale temporary {p}' for p in self.removed]
        out += [f'restored {p} (a replacement was interrupted)' for p in self.restored]
        out += [f'left {p} ({why})' for p, why in self.kept]
        return out


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def clean_stale_temp_files(folder: PathLike, remove: bool = True,
                           log: Optional[Callable[[str], None]] = None) -> StaleReport:
    """Find our temporary files and folders in ``folder`` (not below it) left by killed processes and, with
    ``remove``, delete them. Only entries of this host whose process is gone are touched; others are reported in
    ``kept``. An ``extracter-old`` folder (an LMDB being replaced when the process died) is put back at its name if
    that name is free, else removed. A missing folder is fine (nothing to clean)."""
    report = StaleReport()
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return report
    me, here = os.getpid(), host_tag()
    for name in names:
        parsed = parse_temp_name(name)
        if parsed is None:
            continue
        target, kind, host, pid = parsed
        path = os.path.join(folder, name)
        if host != here:
            report.kept.append((path, f'written on host {host}; cannot tell whether its process {pid} is running'))
            continue
        if pid == me or pid_alive(pid):
            report.kept.append((path, f'process {pid} is still running'))
            continue
        if not remove:
            report.kept.append((path, f'stale (process {pid} is gone); not removed'))
            continue
        dst = os.path.join(folder, target)
        try:
            if kind == 'old' and not os.path.lexists(dst):
                os.replace(path, dst)
                report.restored.append(dst)
            else:
                _remove(path)
                report.removed.append(path)
        except FileNotFoundError:  # another run cleaned it at the same time
            continue
        except OSError as err:
            report.kept.append((path, f'stale, but could not be removed: {err.strerror or err}'))
    if log is not None:
        for line in report.lines():
            log(line)
    return report
