"""An output folder through the command lines: an image's outputs are complete or absent (``--skip-existing`` makes
an incomplete or damaged one again; an interruption says what it left), and one run at a time writes into a folder
(``infer.py -o``, ``experiments/<name>``, ``results/<name>``; ``--wait``; stale locks; the page's job folders).

In the style of tests/test_bad_inputs_cli.py, whose small world (weights, images, option files) and helpers are
reused: exit status, one ``error:`` line naming the culprit, no traceback, nothing changed outside the outputs.
Everything runs in-process; the other run holding a lock is a ``sleep`` process (its pid) or a dead pid.
"""

import json
import os
import shutil
import socket
import subprocess
import threading

import pytest

import tests.test_bad_inputs_cli as battery
from extracter.utils.folder_lock import LOCK_NAME, LockInfo
from extracter.utils.visualize import png_problem
from tests.test_bad_inputs_cli import assert_refused, call, infer_args, infer_main, option_file, run_refused, snapshot

# the battery's fixtures: its small world (module scope) and its autouse settings
world = battery.world
_one_thread = battery._one_thread
_restore_image_settings = battery._restore_image_settings

DEAD_PID = 999999999
KINDS = ('sr', 'bicubic', 'compare')


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(['sleep', '60'])
    yield proc.pid
    proc.kill()
    proc.wait()


def make_lock(folder, pid, command='infer.py --lr other -o out'):
    folder.mkdir(parents=True, exist_ok=True)
    info = LockInfo(pid, socket.gethostname(), '2024-05-01T12:00:03+00:00', command)
    (folder / LOCK_NAME).write_text(info.text())


def outputs(out):
    return sorted(p.name for p in out.iterdir())


@pytest.fixture
def folder_run(world, tmp_path, capsys):
    """A finished run over a folder of two inputs (a.png, b.png): (its arguments, its output folder)."""
    lr = tmp_path / 'lr'
    shutil.copytree(world['img'] / 'lr', lr)
    args = infer_args(world, tmp_path, lr=lr)
    rc, _, err = call(infer_main(), args, capsys)
    assert rc == 0, err
    out = tmp_path / 'out'
    assert outputs(out) == sorted(f'{s}_{k}.png' for s in 'ab' for k in KINDS)  # no lock file left
    return args, out


# ---------------------------------------------------------------------------------- 1. complete or absent
def test_skip_existing_finishes_an_image_left_with_some_of_its_outputs(folder_run, capsys):
    args, out = folder_run
    (out / 'b_compare.png').unlink()  # killed between b's files
    run_refused(infer_main(), args, capsys, out, '5 output file(s)', '--skip-existing')  # 5 exist: the flags are needed
    before = snapshot(out)
    rc, text, err = call(infer_main(), args + ['--skip-existing'], capsys)
    assert rc == 0, err
    assert 'made again (--skip-existing): b.png: b_compare.png is missing' in err
    assert 'skipped 1 input(s)' in text and 'wrote 3 files for 1 image(s)' in text
    after = snapshot(out)
    assert all(after[p] == h for p, h in before.items() if '/a_' in p)  # a's outputs were not touched
    assert outputs(out) == sorted(f'{s}_{k}.png' for s in 'ab' for k in KINDS)


def test_skip_existing_makes_a_truncated_output_again(folder_run, capsys):
    args, out = folder_run
    data = (out / 'a_sr.png').read_bytes()
    (out / 'a_sr.png').write_bytes(data[:len(data) // 2])  # cut short (a full disk, another tool killed)
    rc, _, err = call(infer_main(), args + ['--skip-existing'], capsys)
    assert rc == 0, err
    assert 'made again (--skip-existing): a.png: a_sr.png is truncated' in err
    assert (out / 'a_sr.png').read_bytes() == data and png_problem(out / 'a_sr.png') is None


def test_ctrl_c_says_no_image_was_left_partly_written(world, tmp_path, capsys, monkeypatch):
    from extracter.inference import folder

    real, calls = folder.super_resolve, []

    def interrupt_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(folder, 'super_resolve', interrupt_second)
    rc, _, err = call(infer_main(), infer_args(world, tmp_path, lr=world['img'] / 'lr'), capsys)
    assert_refused(rc, err, 'interrupted (Ctrl-C)', 'no input was left partly written', '1 input(s) done',
                   '--skip-existing', status=130)
    assert outputs(tmp_path / 'out') == [f'a_{k}.png' for k in ('bicubic', 'compare', 'sr')]


def test_ctrl_c_between_two_renames_names_what_was_left(world, tmp_path, capsys, monkeypatch):
    from extracter.utils import file_io

    real, calls = os.replace, []

    def interrupt_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(file_io.os, 'replace', interrupt_second_rename)
    args = infer_args(world, tmp_path)
    rc, _, err = call(infer_main(), args, capsys)
    monkeypatch.undo()
    out = tmp_path / 'out'
    assert_refused(rc, err, 'a.png was left partly written', str(out / 'a_sr.png'),
                   '(a_bicubic.png, a_compare.png missing)', status=130)
    assert outputs(out) == ['a_sr.png']  # no temporary file, no lock
    rc, _, err = call(infer_main(), args + ['--skip-existing'], capsys)
    assert rc == 0 and 'a_bicubic.png is missing' in err, err
    assert outputs(out) == sorted(f'a_{k}.png' for k in KINDS)


# ---------------------------------------------------------------------------------- 2. one run per folder
def test_a_folder_in_use_by_another_run_is_refused(world, tmp_path, capsys, sleeper):
    make_lock(tmp_path / 'out', sleeper)
    run_refused(infer_main(), infer_args(world, tmp_path), capsys, tmp_path, f'{tmp_path / "out"} is in use',
                f'process {sleeper} on {socket.gethostname()}', 'since 2024-05-01T12:00:03', '--wait')


def test_a_stale_lock_is_taken_over_and_the_run_s_lock_removed(world, tmp_path, capsys):
    make_lock(tmp_path / 'out', DEAD_PID)
    rc, _, err = call(infer_main(), infer_args(world, tmp_path), capsys)
    assert rc == 0, err
    assert f'took over the lock of {tmp_path / "out"}: process {DEAD_PID}' in err
    assert outputs(tmp_path / 'out') == sorted(f'a_{k}.png' for k in KINDS)


def test_wait_runs_once_the_other_run_ends(world, tmp_path, capsys, sleeper):
    make_lock(tmp_path / 'out', sleeper)
    threading.Timer(0.5, (tmp_path / 'out' / LOCK_NAME).unlink).start()
    rc, _, err = call(infer_main(), infer_args(world, tmp_path, '--wait', '60'), capsys)
    assert rc == 0, err
    assert f'waiting for {tmp_path / "out"} (at most 60 s): in use by process {sleeper}' in err
    assert outputs(tmp_path / 'out') == sorted(f'a_{k}.png' for k in KINDS)


def test_the_lock_is_removed_after_an_error(world, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'a_sr.png').write_bytes(b'the user\'s picture')
    run_refused(infer_main(), infer_args(world, tmp_path), capsys, tmp_path, 'a_sr.png')  # lock gone: no change
    run_refused(infer_main(), infer_args(world, tmp_path / 'new', lr=world['img'] / 'mid_header'), capsys, tmp_path,
                'b.png', 'nothing was written')
    assert not (tmp_path / 'new').exists()  # the folder made for the lock is removed with it


def test_train_and_test_refuse_a_locked_folder(world, tmp_path, capsys, sleeper):
    from extracter.test import main as test_main
    from extracter.train import main as train_main

    root = tmp_path / 'root'
    exp = root / 'experiments' / 'tiny_rec_cpu'
    make_lock(exp, sleeper, 'train.py -opt other.yml')
    path = option_file(world, tmp_path, 'train')
    run_refused(train_main, ['-opt', path, '--root_path', root], capsys, tmp_path, f'{exp} is in use',
                f'process {sleeper}', 'train.py -opt other.yml')
    res = root / 'results' / 'tiny_cufed5_cpu'
    make_lock(res, sleeper, 'test.py -opt other.yml')
    path = option_file(world, tmp_path, 'test')
    run_refused(test_main, ['-opt', path, '--root_path', root], capsys, tmp_path, f'{res} is in use',
                f'process {sleeper}', 'test.py -opt other.yml')


def test_train_resumes_and_archives_after_the_first_run_ended(world, tmp_path, capsys):
    from extracter.train import main as train_main

    root = tmp_path / 'root'
    path = option_file(world, tmp_path, 'train')
    rc, _, err = call(train_main, ['-opt', path, '--root_path', root], capsys)
    assert rc == 0, err
    exp = root / 'experiments' / 'tiny_rec_cpu'
    assert not (exp / LOCK_NAME).exists()
    more = option_file(world, tmp_path, 'train', ('train.total_iter', 3))
    rc, _, err = call(train_main, ['-opt', more, '--root_path', root, '--auto_resume'], capsys)  # the next run
    assert rc == 0, err
    assert (exp / 'models' / 'net_g_3.pth').is_file() and not (exp / LOCK_NAME).exists()
    rc, _, err = call(train_main, ['-opt', path, '--root_path', root, '--overwrite'], capsys)
    assert rc == 0, err
    archived = [p for p in (root / 'experiments').iterdir() if p.name.startswith('tiny_rec_cpu_archived_')]
    assert len(archived) == 1 and (archived[0] / 'models' / 'net_g_3.pth').is_file()
    assert not any(p.name == LOCK_NAME for folder in (exp, archived[0]) for p in folder.iterdir())


def test_page_job_folders_never_collide(tmp_path, monkeypatch):
    from extracter.app import jobs

    runner = jobs.JobRunner(tmp_path, max_memory='1G')
    tokens = iter(['aaaaaa', 'aaaaaa', 'bbbbbb'])
    monkeypatch.setattr(jobs.secrets, 'token_hex', lambda n: next(tokens))
    monkeypatch.setattr(jobs.time, 'strftime', lambda fmt: '20240501-120003')
    first_id, first = runner._new_job_folder()
    runner._count = 0  # a second page process sharing the folder: the same count, second and token
    second_id, second = runner._new_job_folder()
    assert first != second and first.is_dir() and second.is_dir() and second_id.endswith('bbbbbb')
    assert json.dumps(sorted(p.name for p in runner.jobs_dir.iterdir())) == json.dumps([first_id, second_id])
