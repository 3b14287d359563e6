"""LMDB packing (scripts/create_lmdb.py) and reading: identical samples to the folders, safety of the packer,
DataLoader workers, several datasets over one LMDB, lmdb's one-open-per-process rule."""

import os
import pickle
import random
import subprocess
import sys

import lmdb
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from extracter.data import lmdb_backend
from extracter.data.cufed5_dataset import CUFED5Dataset
from extracter.data.image_io import read_image
from extracter.data.lmdb_pack import PackError, cufed_jobs, pack, verify_lmdb
from extracter.data.refsr_train_dataset import RefSRTrainDataset
from tests.data_helpers import REPO_ROOT

LMDB = {'type': 'lmdb'}
TENSORS = ('gt', 'lq', 'lq_up', 'ref', 'ref_downup')


def _train(root, backend, suffix='', **kw):
    return RefSRTrainDataset(dataroot_gt=str(root / 'train' / f'input{suffix}'),
                             dataroot_ref=str(root / 'train' / f'ref{suffix}'), io_backend=backend, **kw)


def _assert_same(a, b):
    for k in TENSORS:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    for k in ('gt_path', 'ref_path'):
        assert os.path.basename(a[k]).split('.')[0] == os.path.basename(b[k]).split('.')[0]


def test_layout_and_meta_info(cufed_lmdb, cufed_root):
    for name in ('train/input.lmdb', 'train/ref.lmdb', 'test/CUFED5.lmdb'):
        assert (cufed_lmdb / name / 'data.mdb').is_file()
    lines = (cufed_lmdb / 'train' / 'ref.lmdb' / 'meta_info.txt').read_text().splitlines()
    assert lines[1] == '000001.png (160,120,3) 1'  # BasicSR's "key.png (h,w,c) compression" with h=160, w=120
    assert len(lines) == 6
    cufed5 = (cufed_lmdb / 'test' / 'CUFED5.lmdb' / 'meta_info.txt').read_text().splitlines()
    assert len(cufed5) == 18 and cufed5[0].startswith('000_0.png (130,98,3)')
    assert verify_lmdb(str(cufed_lmdb / 'test' / 'CUFED5.lmdb')) == 18
    # BasicSR's own reader decodes our records to the same pixels (cv2, BGR).
    from basicsr.utils import FileClient, imfrombytes
    lmdb_backend.close_all()  # BasicSR opens its own handle: ours must not be open at the same time
    client = FileClient('lmdb', db_paths=[str(cufed_lmdb / 'train' / 'ref.lmdb')], client_keys=['ref'])
    try:
        bgr = imfrombytes(client.get('000002', 'ref'), float32=False)
        np.testing.assert_array_equal(bgr[..., ::-1], read_image(cufed_root / 'train' / 'ref' / '000002.png'))
    finally:
        client.client._client['ref'].close()


def test_folder_and_lmdb_give_identical_samples(cufed_root, cufed_lmdb):
    disk, db = _train(cufed_root, None, gt_size=128, swap_prob=0.5), _train(cufed_lmdb, LMDB, '.lmdb', gt_size=128,
                                                                           swap_prob=0.5)
    assert len(disk) == len(db) == 6
    for i in range(len(disk)):
        random.seed(i)
        a = disk[i]
        random.seed(i)
        _assert_same(a, db[i])
    for level in (1, 5):
        d5 = CUFED5Dataset(dataroot=str(cufed_root / 'test' / 'CUFED5'), ref_level=level)
        l5 = CUFED5Dataset(dataroot=str(cufed_lmdb / 'test' / 'CUFED5.lmdb'), io_backend=LMDB, ref_level=level)
        for i in range(len(d5)):
            _assert_same(d5[i], l5[i])


def test_lmdb_refuses_a_second_open_in_one_process(cufed_lmdb):
    """What lmdb >= 2 does (the reason for lmdb_backend): a second open of one environment raises, even read-only."""
    path = str(cufed_lmdb / 'train' / 'input.lmdb')
    env = lmdb_backend.get_env(path)
    assert lmdb_backend.get_env(path) is env
    with pytest.raises(lmdb.Error, match='already open in this process'):
        lmdb.open(path, readonly=True, lock=False)


def test_two_datasets_over_one_lmdb_in_one_process(cufed_lmdb):
    """Train and validation datasets sharing one LMDB, and the same LMDB reached through a symlink."""
    train = _train(cufed_lmdb, LMDB, '.lmdb')
    val = _train(cufed_lmdb, LMDB, '.lmdb', use_hflip=False, use_vflip=False, use_rot=False)
    link = cufed_lmdb / 'link'
    if not link.exists():
        os.symlink(cufed_lmdb / 'train', link)
    other = RefSRTrainDataset(dataroot_gt=str(link / 'input.lmdb'), dataroot_ref=str(link / 'ref.lmdb'),
                              io_backend=LMDB, use_hflip=False, use_vflip=False, use_rot=False)
    for i in range(3):
        train[i]
        _assert_same(val[i], other[i])


@pytest.mark.parametrize('context', ['fork', pytest.param('spawn', marks=pytest.mark.slow)])
def test_dataloader_workers_read_lmdb(cufed_lmdb, context):
    """Workers started by fork after the parent opened the LMDB re-open it; spawn workers get a pickled dataset."""
    ds = _train(cufed_lmdb, LMDB, '.lmdb', use_hflip=False, use_vflip=False, use_rot=False)
    ds[0]  # the parent process opens the environments first
    ref = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context=context, shuffle=False)
    got = [s for b in loader for s in _unbatch(b)]
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        _assert_same(a, b)


def _unbatch(batch):
    n = len(batch['gt_path'])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def test_forked_child_reopens_its_own_environment(cufed_lmdb):
    path = str(cufed_lmdb / 'test' / 'CUFED5.lmdb')
    parent_env = lmdb_backend.get_env(path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must get a fresh handle that reads
        try:
            env = lmdb_backend.get_env(path)
            ok = env is not parent_env and len(lmdb_backend.read_bytes(path, '000_0')) > 100
            os.write(w, b'1' if ok else b'0')
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b'1'
    assert lmdb_backend.get_env(path) is parent_env  # the parent's handle is untouched
    assert len(lmdb_backend.read_bytes(path, '000_1')) > 100


def test_distributed_sampling_and_pickling(cufed_lmdb):
    """Under distributed training each rank reads its shard; the dataset pickles without an LMDB handle."""
    ds = _train(cufed_lmdb, LMDB, '.lmdb', use_hflip=False, use_vflip=False, use_rot=False)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    _assert_same(ds[1], clone[1])
    shards = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(6))


def test_missing_key_and_bad_folder_errors(cufed_lmdb, tmp_path):
    with pytest.raises(KeyError, match="no record with key 'nope'"):
        lmdb_backend.read_bytes(str(cufed_lmdb / 'train' / 'input.lmdb'), 'nope')
    with pytest.raises(FileNotFoundError, match='missing meta_info.txt'):
        (tmp_path / 'x.lmdb').mkdir()
        (tmp_path / 'x.lmdb' / 'data.mdb').write_bytes(b'')
        RefSRTrainDataset(dataroot_gt=str(tmp_path / 'x.lmdb'), dataroot_ref=str(tmp_path / 'x.lmdb'),
                          io_backend=LMDB)


def _copy_cufed(src, dst):
    import shutil
    shutil.copytree(src / 'train', dst / 'train')
    shutil.copytree(src / 'test', dst / 'test')
    return dst


def test_packer_refuses_existing_and_overwrites_on_request(cufed_root, tmp_path):
    out = tmp_path / 'out'
    jobs = lambda: cufed_jobs(str(cufed_root), str(out), ['cufed5'])  # noqa: E731
    pack(jobs(), show_progress=False, log=lambda m: None)
    data = out / 'test' / 'CUFED5.lmdb' / 'data.mdb'
    before = (data.stat().st_mtime_ns, data.stat().st_size)
    with pytest.raises(PackError, match='refusing to touch existing LMDB'):
        pack(jobs(), show_progress=False, log=lambda m: None)
    assert (data.stat().st_mtime_ns, data.stat().st_size) == before
    pack(jobs(), overwrite=True, show_progress=False, log=lambda m: None)
    assert verify_lmdb(str(out / 'test' / 'CUFED5.lmdb')) == 18
    assert sorted(os.listdir(out / 'test')) == ['CUFED5.lmdb']  # no temporary or old folders left


def test_packer_reports_missing_pairs_and_unreadable_files(cufed_root, tmp_path):
    root = _copy_cufed(cufed_root, tmp_path / 'CUFED')
    os.remove(root / 'train' / 'ref' / '000002.png')
    os.remove(root / 'test' / 'CUFED5' / '001_4.png')
    with pytest.raises(PackError) as err:
        cufed_jobs(str(root), str(tmp_path / 'out'))
    assert 'train/input/000002.png: no reference with this name' in str(err.value)
    assert 'group 001: missing 001_4' in str(err.value)
    assert not (tmp_path / 'out').exists()
    # Unreadable files: every one is named and no LMDB (nor a temporary folder) is left behind.
    root = _copy_cufed(cufed_root, tmp_path / 'CUFED2')
    (root / 'train' / 'ref' / '000003.png').write_bytes(b'garbage')
    (root / 'train' / 'input' / '000005.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    with pytest.raises(PackError) as err:
        pack(cufed_jobs(str(root), str(tmp_path / 'out2'), ['train', 'cufed5']), show_progress=False,
             log=lambda m: None)
    msg = str(err.value)
    assert 'train/ref/000003.png' in msg and 'train/input/000005.png' in msg and 'no LMDB was written' in msg
    leftovers = sorted(os.path.join(d, f) for d, ds, fs in os.walk(tmp_path / 'out2') for f in ds + fs)
    assert leftovers == [os.path.join(tmp_path / 'out2', 'test'), os.path.join(tmp_path / 'out2', 'train')]


def _cli(*args):
    cmd = [sys.executable, str(REPO_ROOT / 'scripts' / 'create_lmdb.py'), '--no-progress', *args]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))  # this checkout's package, whichever one is installed
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_create_lmdb_script_main(cufed_root, tmp_path, capsys):
    """The command line's main(): packs and verifies, then refuses to overwrite (exit status 2, reason on stderr)."""
    from extracter.tools.create_lmdb import main

    args = ['--no-progress', '--folder', str(cufed_root / 'train' / 'ref'), '--lmdb', str(tmp_path / 'ref.lmdb')]
    assert main(args) == 0
    assert f'wrote {tmp_path / "ref.lmdb"}: 6 records, verified' in capsys.readouterr().out
    assert main(args) == 2
    assert 'refusing to touch existing LMDB' in capsys.readouterr().err
    assert main(args + ['--overwrite']) == 0
    assert main(['--no-progress', '--cufed', str(cufed_root), '--sets', 'nope']) == 2
    assert '--sets takes train and/or cufed5' in capsys.readouterr().err


@pytest.mark.slow
def test_create_lmdb_script_cli(cufed_root, tmp_path):
    """The script as a process (starting Python with torch takes seconds on a loaded machine)."""
    res = _cli('--folder', str(cufed_root / 'train' / 'ref'), '--lmdb', str(tmp_path / 'ref.lmdb'))
    assert res.returncode == 0, res.stderr
    assert f'wrote {tmp_path / "ref.lmdb"}: 6 records, verified' in res.stdout
    assert verify_lmdb(str(tmp_path / 'ref.lmdb')) == 6


@pytest.mark.slow
def test_create_lmdb_script_cli_refuses_and_reports(cufed_root, tmp_path):
    """Exit status 2 with the reason on stderr: an existing LMDB without --overwrite, a missing pair."""
    _cli('--folder', str(cufed_root / 'train' / 'ref'), '--lmdb', str(tmp_path / 'ref.lmdb'))
    res = _cli('--folder', str(cufed_root / 'train' / 'ref'), '--lmdb', str(tmp_path / 'ref.lmdb'))
    assert res.returncode == 2 and '--overwrite' in res.stderr
    root = _copy_cufed(cufed_root, tmp_path / 'CUFED')
    os.remove(root / 'train' / 'input' / '000001.png')
    res = _cli('--cufed', str(root), '--sets', 'train')
    assert res.returncode == 2 and 'train/ref/000001.png: no input (HR) image with this name' in res.stderr
    assert not (root / 'train' / 'input.lmdb').exists()


def test_packer_grows_a_full_map(cufed_root, tmp_path, monkeypatch):
    """A map too small for the data (estimate off, e.g. for JPEG sources) is grown, and the result still verifies."""
    from extracter.data import lmdb_pack

    monkeypatch.setattr(lmdb_pack, 'MIN_MAP_SIZE', 1)
    monkeypatch.setattr(lmdb_pack, 'COMMIT_EVERY', 4)
    monkeypatch.setattr(lmdb_pack.os.path, 'getsize', lambda p: 1)  # estimate: 8 bytes in total
    dst = tmp_path / 'CUFED5.lmdb'
    files = lmdb_pack.folder_files(str(cufed_root / 'test' / 'CUFED5'))
    counts = pack([lmdb_pack.PackJob(str(dst), files)], show_progress=False, log=lambda m: None)
    assert counts == {str(dst): 18}
    assert verify_lmdb(str(dst)) == 18
