"""One run at a time per output folder: a lock file in the folder while a run writes into it.

``infer.py`` (its ``-o`` folder), ``train.py`` (``experiments/<name>``) and ``test.py`` (``results/<name>``) hold a
lock on their output folder from before they look at what it holds until they end, so that two runs into one folder
cannot overwrite each other's results. The lock is the file ``<folder>/.extracter.lock``, created atomically
(``O_CREAT | O_EXCL``: of two runs that try at once, exactly one succeeds) and holding, as one line of JSON, the
process id, the host, the start time, the command and, under ``torchrun``, the launch (:func:`launch_id`).

- A second run into a locked folder is refused with one line naming the folder and the run that holds it
  (:class:`FolderLockedError`, an ``OSError``: exit status 2), or, with ``--wait [SECONDS]``, polls until the lock is
  gone (every 0.05 s at first, the interval doubling up to :data:`POLL_MAX_S`) and then takes it.
- A stale lock (this host, and its process is gone, or its id now belongs to a process started later) is taken over,
  with a note. A lock of another host is never taken over: a process on another machine cannot be checked; the
  message says which file to delete if that run is gone.
- The processes of one ``torchrun`` launch share one lock: the first creates it, the others find their own launch
  in it and join; only the creator removes it.
- The lock is removed when the run ends: normally, on an error, on Ctrl-C, and on SIGTERM/SIGHUP (the entry points run
  inside :func:`~extracter.utils.file_io.interruptible`, which turns those signals into an exception, so the
  ``finally`` that releases the lock runs). After a SIGKILL or a power cut it stays, and the next run takes it over.
- Folders made to hold the lock are removed again if they are left empty (a refused run leaves nothing behind).

Imports nothing of the package but :mod:`extracter.utils.file_io`.
"""

import argparse
import errno
import json
import math
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

from extracter.utils.file_io import (
    TEMP_SUFFIX,
    PathLike,
    ensure_folder,
    interruptible,
    pid_alive,
    signals_deferred,
    temp_prefix,
)

LOCK_NAME = '.extracter.lock'
POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0  # the longest pause between two looks at a lock waited for (--wait)
READ_RETRY_S = 2.0  # a lock is written right after it is created; one still unreadable after this is broken
_COMMAND_CHARS = 160  # of the command, in messages


class FolderLockedError(OSError):
    """The folder is in use by another run (or holds a lock file that cannot be read). Exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EBUSY, message)

    def __str__(self) -> str:
        return self.strerror


def _process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started (clock ticks since boot, from /proc; None where there is no /proc): tells a
    process from a later one that got the same id."""
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii', errors='replace') as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def launch_id() -> Optional[str]:
    """The ``torchrun`` launch this process belongs to (None outside one): the rendezvous run id with the master's
    address and port, which no two live launches share; with a loopback master (one machine) the host too."""
    env = os.environ
    try:
        world = int(env.get('WORLD_SIZE', '1'))
    except ValueError:
        return None
    addr, port = env.get('MASTER_ADDR'), env.get('MASTER_PORT')
    if world <= 1 or not addr or not port:
        return None
    key = f'{env.get("TORCHELASTIC_RUN_ID", "")}@{addr}:{port}'
    if addr in ('localhost', '::1') or addr.startswith('127.'):
        key += f' on {socket.gethostname()}'
    return key


def default_command() -> str:
    return shlex.join([os.path.basename(sys.argv[0] or 'python')] + sys.argv[1:])


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says: who holds the folder."""

    pid: int
    host: str
    started: str
    command: str
    launch: Optional[str] = None
    proc_start: Optional[str] = None

    @classmethod
    def mine(cls, command: str) -> 'LockInfo':
        return cls(os.getpid(), socket.gethostname(), datetime.now().astimezone().isoformat(timespec='seconds'),
                   command, launch_id(), _process_start(os.getpid()))

    def text(self) -> str:
        return json.dumps(asdict(self)) + '\n'

    @classmethod
    def parse(cls, text: str) -> Optional['LockInfo']:
        """The lock of ``text``, or None if it is not (yet) a complete lock."""
        try:
            data = json.loads(text)
            return cls(int(data['pid']), str(data['host']), str(data['started']), str(data.get('command', '')),
                       data.get('launch'), data.get('proc_start'))
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        command = self.command if len(self.command) <= _COMMAND_CHARS else self.command[:_COMMAND_CHARS] + '...'
        return f'process {self.pid} on {self.host} since {self.started} ({command})'

    def gone(self) -> bool:
        """Whether the run that made this lock has certainly ended: of this host, and its process id is free or now
        belongs to a process started later. A lock of another host is never gone: it cannot be checked."""
        if self.host != socket.gethostname():
            return False
        if not pid_alive(self.pid):
            return True
        now = _process_start(self.pid)
        return self.proc_start is not None and now is not None and now != self.proc_start


def _read_lock(path: Path) -> Optional[LockInfo]:
    """The lock at ``path`` (None if there is none any more), waiting a moment for one being written."""
    give_up = time.monotonic() + READ_RETRY_S
    while True:
        try:
            text = path.read_text(encoding='utf-8', errors='replace')
        except FileNotFoundError:
            return None
        info = LockInfo.parse(text)
        if info is not None:
            return info
        if time.monotonic() >= give_up:
            raise FolderLockedError(f'{path.parent} holds a lock file that cannot be read ({path}: '
                                    f'{text[:60]!r}); if no other run uses this folder, delete it')
        time.sleep(0.05)


def _make_folders(folder: Path) -> List[Path]:
    """``mkdir -p folder``; returns the folders it made, the outermost first."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    ensure_folder(folder)
    return missing[::-1]


@dataclass
class FolderLock:
    """The lock on one folder; :meth:`acquire`, then :meth:`release` in a ``finally`` (or use :func:`folder_lock`).

    ``wait``: None refuses a locked folder at once; a number of seconds (``math.inf``: no limit) waits for it.
    ``log``: where notes go (a taken-over stale lock, waiting); stderr by default."""

    folder: Path
    command: Optional[str] = None
    wait: Optional[float] = None
    log: Optional[Callable[[str], None]] = None
    owned: bool = field(default=False, init=False)  # this process made the lock file (and removes it)
    joined: Optional[LockInfo] = field(default=None, init=False)  # the lock of this torchrun launch, made by another
    made: List[Path] = field(default_factory=list, init=False)  # folders made for the lock

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.path = self.folder / LOCK_NAME
        self.info = LockInfo.mine(self.command or default_command())
        if self.log is None:
            self.log = lambda line: print(line, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> 'FolderLock':
        self.made = _make_folders(self.folder)
        try:
            self._acquire()
        except BaseException:
            self._remove_made_folders()
            raise
        return self

    def _acquire(self) -> None:
        deadline = None if self.wait is None else time.monotonic() + self.wait
        delay, announced = POLL_FIRST_S, False
        while not self._create():
            other = _read_lock(self.path)
            if other is None:  # released meanwhile
                continue
            if self.info.launch is not None and other.launch == self.info.launch and not other.gone():
                self.joined = other  # a process of this launch took it (a dead launch's lock is taken over below)
                return
            if other.gone():
                self._take_over(other)
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is None or left <= 0:
                raise FolderLockedError(self._refusal(other))
            if not announced:
                limit = '' if math.isinf(self.wait) else f' (at most {self.wait:g} s)'
                self.log(f'waiting for {self.folder}{limit}: in use by {other.describe()}')
                announced = True
            time.sleep(min(delay, left))
            delay = min(2 * delay, POLL_MAX_S)

    def _create(self) -> bool:
        """Make the lock file; False if there is one."""
        data = self.info.text().encode('utf-8')
        with signals_deferred():  # SIGTERM/SIGHUP wait: a lock file must never be left empty
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except FileNotFoundError:  # the folder was removed meanwhile (a run that made it ended)
                self.made += _make_folders(self.folder)
                return self._create()
            except OSError as err:
                raise OSError(err.errno, f'cannot write into {self.folder}: {err.strerror}') from err
            try:
                while data:
                    data = data[os.write(fd, data):]
            except BaseException:
                os.close(fd)
                os.remove(self.path)
                raise
            os.close(fd)
        self.owned = True
        return True

    def _take_over(self, stale: LockInfo) -> None:
        """Remove a stale lock. It is first renamed aside and read again: if another run replaced it meanwhile (it
        took the stale lock over first), that run's lock is put back."""
        aside = self.folder / f'{temp_prefix(self.path)}stale{TEMP_SUFFIX}'
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = LockInfo.parse(aside.read_text(encoding='utf-8', errors='replace'))
        if moved == stale:
            os.remove(aside)
            self.log(f'took over the lock of {self.folder}: {stale.describe()} is no longer running')
            return
        try:
            os.link(aside, self.path)  # put back; fails if a third run locked the folder meanwhile (theirs stays)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not self.path.exists():
                os.replace(aside, self.path)
                return
        os.remove(aside)

    def _refusal(self, other: LockInfo) -> str:
        waited = '' if self.wait is None else f' (still, after waiting {self.wait:g} s)'
        if other.host == socket.gethostname():
            what = 'wait for it with --wait, or stop it'
        else:
            what = (f'it runs on another host, which cannot be checked from here: wait for it with --wait, or if it '
                    f'is no longer running, delete {self.path}')
        return f'{self.folder} is in use by another run{waited}: {other.describe()}; {what}'

    # ------------------------------------------------------------------ while held
    def archive(self, archived: PathLike) -> None:
        """Rename the locked folder to ``archived`` (``--overwrite`` of train.py/test.py) and lock the new, empty
        folder made at its name; the lock file that went along is removed."""
        if not self.owned:
            raise RuntimeError(f'{self.folder}: only the run that made the lock archives the folder')
        with signals_deferred():
            os.rename(self.folder, archived)
            self.owned = False
            try:
                ensure_folder(self.folder)
                if not self._create():  # another run made the folder and locked it in between
                    raise FolderLockedError(self._refusal(_read_lock(self.path) or self.info))
            finally:
                try:
                    os.remove(Path(archived) / LOCK_NAME)
                except FileNotFoundError:
                    pass

    # ------------------------------------------------------------------ giving it back
    def release(self) -> None:
        """Remove the lock if this process made it (and it is still ours), then the folders made for it if they are
        empty. Never raises: it runs in ``finally`` blocks, where it must not hide the error being raised."""
        with signals_deferred():
            if self.owned:
                self.owned = False
                try:
                    if _read_lock(self.path) == self.info:
                        os.remove(self.path)
                except (OSError, FolderLockedError) as err:
                    self.log(f'warning: could not remove the lock {self.path}: {err}')
            self._remove_made_folders()

    def _remove_made_folders(self) -> None:
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:  # not empty (outputs, another run's lock) or gone
                break
        self.made = []


@contextmanager
def folder_lock(folder: PathLike, command: Optional[str] = None, wait: Optional[float] = None,
                log: Optional[Callable[[str], None]] = None) -> Iterator[FolderLock]:
    """Hold the lock on ``folder`` for the block; SIGTERM/SIGHUP inside it end the block (and release the lock)."""
    lock = FolderLock(Path(folder), command, wait, log)
    with interruptible():
        lock.acquire()
        try:
            yield lock
        finally:
            lock.release()


def wait_seconds(text: str) -> float:
    """``--wait``'s value: seconds >= 0 (``inf``: no limit)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f'expected a number of seconds >= 0, got {text!r}')
    return value


def add_wait_argument(parser: argparse.ArgumentParser, folder: str) -> None:
    """``--wait [SECONDS]`` of a command that locks ``folder``."""
    parser.add_argument('--wait', nargs='?', type=wait_seconds, const=math.inf, default=None, metavar='SECONDS',
                        help=f'if another run is writing into {folder}, wait until it ends (at most SECONDS; default '
                             'no limit) instead of refusing')


def command_line(program: str, argv: Sequence[str]) -> str:
    """How a lock names a command run in-process with ``argv``."""
    return shlex.join([program] + [str(a) for a in argv])
