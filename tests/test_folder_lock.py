"""The lock on an output folder (extracter/utils/folder_lock.py), the all-or-none writes of several files and the PNG
check behind ``--skip-existing`` (extracter/utils/file_io.py, visualize.py): no network, no command line."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from extracter.utils import file_io, folder_lock
from extracter.utils.file_io import Terminated, atomic_write_all, written_before_failure
from extracter.utils.folder_lock import LOCK_NAME, FolderLock, FolderLockedError, LockInfo
from extracter.utils.visualize import png_problem, png_writer, save_png

DEAD_PID = 999999999  # larger than any pid_max


@pytest.fixture
def sleeper():
    """A live process of this host (its pid holds the other run's lock)."""
    proc = subprocess.Popen(['sleep', '60'])
    yield proc.pid
    proc.kill()
    proc.wait()


def other_lock(folder, pid, host=None, launch=None, command='infer.py -o out'):
    folder.mkdir(parents=True, exist_ok=True)
    info = LockInfo(pid, host or socket.gethostname(), '2024-05-01T12:00:03+00:00', command, launch)
    (folder / LOCK_NAME).write_text(info.text())
    return info


def lock(folder, **kw):
    notes = []
    return FolderLock(folder, 'test-command', log=notes.append, **kw), notes


def test_acquire_writes_who_and_release_removes_it_and_the_folders_made(tmp_path):
    folder = tmp_path / 'a' / 'b'
    held, _ = lock(folder)
    held.acquire()
    data = json.loads((folder / LOCK_NAME).read_text())
    assert data['pid'] == os.getpid() and data['host'] == socket.gethostname() and data['command'] == 'test-command'
    assert data['started'] and held.owned
    held.release()
    assert not (tmp_path / 'a').exists()  # made for the lock, left empty: removed
    existing = tmp_path / 'kept'
    existing.mkdir()
    held, _ = lock(existing)
    held.acquire()
    (existing / 'x_sr.png').write_bytes(b'output')
    held.release()
    assert sorted(p.name for p in existing.iterdir()) == ['x_sr.png']


def test_a_live_run_s_lock_is_refused_naming_the_folder_and_the_run(tmp_path, sleeper):
    other_lock(tmp_path, sleeper)
    held, _ = lock(tmp_path)
    with pytest.raises(FolderLockedError) as info:
        held.acquire()
    msg = str(info.value)
    assert str(tmp_path) in msg and f'process {sleeper} on {socket.gethostname()}' in msg
    assert 'since 2024-05-01T12:00:03' in msg and 'infer.py -o out' in msg and '--wait' in msg
    assert '\n' not in msg and json.loads((tmp_path / LOCK_NAME).read_text())['pid'] == sleeper


def test_a_stale_lock_of_this_host_is_taken_over_with_a_note(tmp_path):
    other_lock(tmp_path, DEAD_PID)
    held, notes = lock(tmp_path)
    held.acquire()
    assert held.owned and json.loads((tmp_path / LOCK_NAME).read_text())['pid'] == os.getpid()
    assert len(notes) == 1 and f'took over the lock of {tmp_path}' in notes[0] and str(DEAD_PID) in notes[0]
    held.release()
    assert list(tmp_path.iterdir()) == []  # nothing left beside it (the stale lock was renamed aside, removed)


def test_a_pid_reused_by_a_later_process_is_stale():
    me = LockInfo.mine('x')
    if me.proc_start is None:
        pytest.skip('no /proc here')
    assert not me.gone()
    assert LockInfo(me.pid, me.host, me.started, 'x', None, str(int(me.proc_start) + 1)).gone()


def test_another_host_s_lock_is_never_taken_over(tmp_path):
    other_lock(tmp_path, DEAD_PID, host='elsewhere-node')
    held, _ = lock(tmp_path)
    with pytest.raises(FolderLockedError, match='another host.*delete .*extracter.lock'):
        held.acquire()


def test_wait_takes_the_lock_once_the_other_run_ends(tmp_path, sleeper):
    other_lock(tmp_path, sleeper)
    threading.Timer(0.4, (tmp_path / LOCK_NAME).unlink).start()
    held, notes = lock(tmp_path, wait=30)
    t0 = time.monotonic()
    held.acquire()
    assert held.owned and time.monotonic() - t0 < 0.4 + folder_lock.POLL_MAX_S + 1
    assert len(notes) == 1 and notes[0].startswith(f'waiting for {tmp_path} (at most 30 s)')
    assert str(sleeper) in notes[0]
    held.release()
    # a bounded wait ends in the refusal
    other_lock(tmp_path, sleeper)
    held, _ = lock(tmp_path, wait=0.2)
    with pytest.raises(FolderLockedError, match=r'after waiting 0\.2 s'):
        held.acquire()


def test_the_processes_of_one_torchrun_launch_share_the_lock(tmp_path, sleeper, monkeypatch):
    for key, value in dict(WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='29533',
                           TORCHELASTIC_RUN_ID='abc').items():
        monkeypatch.setenv(key, value)
    launch = folder_lock.launch_id()
    assert launch.startswith('abc@127.0.0.1:29533') and socket.gethostname() in launch
    other_lock(tmp_path, sleeper, launch=launch)  # rank 0 made it
    held, _ = lock(tmp_path)
    held.acquire()
    assert not held.owned and held.joined.pid == sleeper
    held.release()
    assert (tmp_path / LOCK_NAME).exists()  # only its maker removes it
    other_lock(tmp_path, sleeper, launch='xyz@127.0.0.1:29533 on ' + socket.gethostname())  # another launch
    with pytest.raises(FolderLockedError):
        lock(tmp_path)[0].acquire()
    # a killed launch with the same key (plain torchrun: the same id and master every time): taken over, not joined
    other_lock(tmp_path, DEAD_PID, launch=launch)
    held, notes = lock(tmp_path)
    held.acquire()
    assert held.owned and held.joined is None and 'took over' in notes[0]
    held.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_archive_moves_the_lock_to_the_new_folder(tmp_path):
    folder = tmp_path / 'exp'
    folder.mkdir()
    (folder / 'net_g_2.pth').write_bytes(b'checkpoint')
    held, _ = lock(folder)
    held.acquire()
    held.archive(tmp_path / 'exp_archived')
    assert sorted(p.name for p in (tmp_path / 'exp_archived').iterdir()) == ['net_g_2.pth']
    assert json.loads((folder / LOCK_NAME).read_text())['pid'] == os.getpid()
    held.release()
    assert list(folder.iterdir()) == []


def test_an_unreadable_lock_is_refused_with_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_lock, 'READ_RETRY_S', 0.1)
    (tmp_path / LOCK_NAME).write_text('')
    with pytest.raises(FolderLockedError, match='cannot be read.*if no other run uses this folder, delete it'):
        lock(tmp_path)[0].acquire()


@pytest.mark.parametrize('stop', ['sigterm', 'ctrl-c', 'error'])
def test_the_lock_is_removed_on_sigterm_ctrl_c_and_errors(tmp_path, stop):
    folder = tmp_path / 'out'
    folder.mkdir()
    expected = {'sigterm': Terminated, 'ctrl-c': KeyboardInterrupt, 'error': ValueError}[stop]
    with pytest.raises(expected):
        with folder_lock.folder_lock(folder, 'x', log=lambda line: None):
            assert (folder / LOCK_NAME).exists()
            if stop == 'sigterm':
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the signal ends the block before this
            raise expected()
    assert list(folder.iterdir()) == []


def test_wait_seconds_flag():
    assert folder_lock.wait_seconds('2.5') == 2.5
    for bad in ('-1', 'soon', 'nan'):
        with pytest.raises(Exception, match='seconds >= 0'):
            folder_lock.wait_seconds(bad)


# ------------------------------------------------------------------------------ several files as one, whole PNGs
def test_atomic_write_all_writes_all_or_none(tmp_path):
    def fail(tmp):
        raise OSError(28, 'No space left on device')

    with pytest.raises(OSError):
        atomic_write_all([(tmp_path / 'a', lambda t: open(t, 'w').write('a')), (tmp_path / 'b', fail)])
    assert list(tmp_path.iterdir()) == []  # the first one's temporary file too
    atomic_write_all([(tmp_path / 'a', lambda t: open(t, 'w').write('a')),
                      (tmp_path / 'b', lambda t: open(t, 'w').write('b'))])
    assert (tmp_path / 'a').read_text() == 'a' and (tmp_path / 'b').read_text() == 'b'


def test_atomic_write_all_says_what_a_ctrl_c_between_renames_left(tmp_path, monkeypatch):
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(file_io.os, 'replace', replace)
    with pytest.raises(KeyboardInterrupt) as info:
        atomic_write_all([(tmp_path / n, lambda t: open(t, 'w').write('x')) for n in ('a', 'b', 'c')])
    monkeypatch.undo()
    assert written_before_failure(info.value) == [tmp_path / 'a']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a']


def test_png_problem_finds_cut_and_damaged_files(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    path = tmp_path / 'x.png'
    save_png(img, path)
    assert png_problem(path) is None
    png_writer(lambda: img[..., :1].repeat(3, 2))(str(tmp_path / 'y.png'))
    assert png_problem(tmp_path / 'y.png') is None
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) - 12, len(data) // 2, 20):
        (tmp_path / 'cut.png').write_bytes(data[:cut])
        assert 'truncated' in png_problem(tmp_path / 'cut.png')
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    (tmp_path / 'bad.png').write_bytes(bytes(damaged))
    assert 'corrupt' in png_problem(tmp_path / 'bad.png')
    (tmp_path / 'text.png').write_text('not a picture')
    assert png_problem(tmp_path / 'text.png') == 'not a PNG file'
    # a header chunk of the wrong length (its checksum right): corrupt, not a crash
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))
    (tmp_path / 'short.png').write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', b'\0' * 5) + chunk(b'IEND', b''))
    assert 'corrupt' in png_problem(tmp_path / 'short.png') and 'IHDR' in png_problem(tmp_path / 'short.png')
