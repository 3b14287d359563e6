"""End to end on the tiny CPU options and a CUFED-layout fixture cut from ../shared/data: train.py, exact resume,
test.py's images and metrics table, clear refusals, and a 2-process torchrun on CPU (gloo)."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from basicsr.metrics import calculate_psnr, calculate_ssim

from extracter import test as test_entry
from extracter import train as train_entry
from extracter.models.base_model import load_checkpoint
from extracter.options.schema import load_yaml

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_thread')


def _train_yml(tmp_path: Path, cufed_root: Path, base: str = 'tiny_rec_cpu.yml', **train) -> Path:
    opt = load_yaml(str(REPO / 'options' / 'train' / base))
    opt['datasets']['train']['dataroot_gt'] = str(cufed_root / 'train' / 'input')
    opt['datasets']['train']['dataroot_ref'] = str(cufed_root / 'train' / 'ref')
    opt['datasets']['val']['dataroot'] = str(cufed_root / 'test' / 'CUFED5')
    opt['network_g']['n_feats'] = 8
    opt['train'].update(train)
    path = tmp_path / base
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def _run(path: Path, root: Path, *extra: str):
    return train_entry.train_pipeline(str(REPO), ['-opt', str(path), '--root_path', str(root), *extra])


def test_train_writes_basicsr_outputs_and_log_lines(tmp_path, cufed_root):
    root = tmp_path / 'root'
    opt = _run(_train_yml(tmp_path, cufed_root, total_iter=2), root)
    exp = root / 'experiments' / 'tiny_rec_cpu'
    assert (exp / 'models' / 'net_g_2.pth').is_file() and (exp / 'models' / 'net_g_latest.pth').is_file()
    state = load_checkpoint(str(exp / 'training_states' / '2.state'))
    assert state['iter'] == 2 and state['iter_in_epoch'] == 2
    assert set(load_checkpoint(str(exp / 'models' / 'net_g_latest.pth'))) == {'params'}
    log = next(exp.glob('train_tiny_rec_cpu_*.log')).read_text()
    line = re.search(r'iter:\s+2/2, lr:\(1\.000e-03,1\.000e-04\)\] \[[\d.]+ it/s, eta: [\d:]+, .*l_rec: ', log)
    assert line, log[-2000:]
    assert (exp / 'tiny_rec_cpu.yml').is_file()  # the options are copied beside the run
    assert opt['path']['experiments_root'] == str(exp)
    # a second start without --auto_resume or --overwrite refuses to touch the run
    with pytest.raises(FileExistsError, match='already exists; use --auto_resume'):
        _run(_train_yml(tmp_path, cufed_root, total_iter=2), root)


def test_all_losses_training_runs_critic_after_warm_up(tmp_path, cufed_root):
    root = tmp_path / 'root'
    _run(_train_yml(tmp_path, cufed_root, 'tiny_all_losses_cpu.yml', total_iter=3), root)
    exp = root / 'experiments' / 'tiny_all_losses_cpu'
    log = next(exp.glob('train_*.log')).read_text()
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r'iter:\s+(\d+)/3.*', log)}
    for it in (1, 2):
        assert 'warm-up: reconstruction only' in lines[it] and 'l_adv' not in lines[it]
    for key in ('l_rec', 'l_per', 'l_grd', 'l_adv', 'l_d', 'l_d_gp'):
        assert f'{key}: ' in lines[3]
    assert load_checkpoint(str(exp / 'models' / 'net_d_3.pth'))['params']
    state = load_checkpoint(str(exp / 'training_states' / '3.state'))
    assert len(state['optimizers']) == 2 and state['optimizers'][1]['param_groups'][0]['betas'] == (0.0, 0.9)
    assert set(load_checkpoint(str(exp / 'models' / 'net_g_3.pth'))) == {'params', 'params_ema'}


def test_resume_continues_identically(tmp_path, cufed_root):
    """4 iterations in one go == 2 iterations, stop, --auto_resume to 4 (mid-epoch: 3 iterations per epoch)."""
    path = _train_yml(tmp_path, cufed_root, total_iter=4, ema_decay=0.5)
    _run(path, tmp_path / 'a', '--force_yml', 'logger:save_checkpoint_freq=2')
    _run(path, tmp_path / 'b', '--force_yml', 'train:total_iter=2', 'logger:save_checkpoint_freq=2')
    _run(path, tmp_path / 'b', '--auto_resume', '--force_yml', 'logger:save_checkpoint_freq=2')
    models_a = tmp_path / 'a' / 'experiments' / 'tiny_rec_cpu' / 'models'
    models_b = tmp_path / 'b' / 'experiments' / 'tiny_rec_cpu' / 'models'
    a, b = load_checkpoint(str(models_a / 'net_g_4.pth')), load_checkpoint(str(models_b / 'net_g_4.pth'))
    for key in ('params', 'params_ema'):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    sa = load_checkpoint(str(models_a.parent / 'training_states' / '4.state'))
    sb = load_checkpoint(str(models_b.parent / 'training_states' / '4.state'))
    for pa, pb in zip(sa['optimizers'][0]['state'].values(), sb['optimizers'][0]['state'].values()):
        assert torch.equal(pa['exp_avg'], pb['exp_avg']) and torch.equal(pa['exp_avg_sq'], pb['exp_avg_sq'])
    assert sa['schedulers'] == sb['schedulers'] and sa['epoch'] == sb['epoch'] == 1


def test_test_py_writes_images_and_metrics_equal_to_basicsr(tmp_path, cufed_root):
    from extracter.archs.extracter_arch import Extracter

    opt = load_yaml(str(REPO / 'options' / 'test' / 'tiny_cufed5_cpu.yml'))
    net_opt = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    ckpt = tmp_path / 'net_g.pth'
    torch.manual_seed(3)
    torch.save({'params': Extracter(**net_opt).state_dict()}, ckpt)
    argv = ['-opt', str(REPO / 'options' / 'test' / 'tiny_cufed5_cpu.yml'), '--root_path', str(tmp_path),
            '--force_yml', f'datasets:test_1:dataroot={cufed_root / "test" / "CUFED5"}',
            f'path:pretrain_network_g={ckpt}']
    test_entry.test_pipeline(str(REPO), argv)
    results = tmp_path / 'results' / 'tiny_cufed5_cpu'
    with open(results / 'metrics_CUFED5_L1.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['image'] for r in rows] == ['000_0', '001_0', '002_0', 'mean']
    md = (results / 'metrics_CUFED5_L1.md').read_text()
    assert md.startswith('Protocol: CUFED5 ref_level 1: one reference, NNN_1.')  # every metrics file names it
    assert '| image | psnr_y_b4 | ssim_y_b4 | psnr_y_b0 | ssim_y_b0 | protocol |' in md
    assert 'psnr_y_b4: PSNR on Y (BT.601, BasicSR), border 4' in md
    for row in rows[:-1]:
        sr = cv2.imread(str(results / 'visualization' / 'CUFED5_L1' / f'{row["image"]}_tiny_cufed5_cpu.png'))
        hr = cv2.imread(str(cufed_root / 'test' / 'CUFED5' / f'{row["image"]}.png'))
        hr = hr[:sr.shape[0], :sr.shape[1]]  # the dataset crops HR to a multiple of 4 x stride
        assert sr.shape[0] % 8 == 0 and sr.shape[1] % 8 == 0
        for border in (4, 0):
            psnr = calculate_psnr(sr, hr, crop_border=border, test_y_channel=True)
            ssim = calculate_ssim(sr, hr, crop_border=border, test_y_channel=True)
            assert float(row[f'psnr_y_b{border}']) == pytest.approx(psnr, abs=5e-5)
            assert float(row[f'ssim_y_b{border}']) == pytest.approx(ssim, abs=5e-5)
    mean = sum(float(r['psnr_y_b4']) for r in rows[:-1]) / 3
    assert float(rows[-1]['psnr_y_b4']) == pytest.approx(mean, abs=1e-4)
    with pytest.raises(FileExistsError, match='pass --overwrite'):
        test_entry.test_pipeline(str(REPO), argv)


def test_cli_option_error_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / 'bad.yml'
    opt = load_yaml(str(REPO / 'options' / 'train' / 'tiny_rec_cpu.yml'))
    opt['train']['optim_g']['lrr'] = 1
    for ds, key in (('train', 'dataroot_gt'), ('train', 'dataroot_ref'), ('val', 'dataroot')):
        opt['datasets'][ds][key] = str(tmp_path)
    bad.write_text(yaml.safe_dump(opt))
    from extracter.train import main

    assert main(['-opt', str(bad), '--root_path', str(tmp_path)]) == 2  # a known error: exit status 2
    err = capsys.readouterr().err
    assert "error: " in err and "'train.optim_g.lrr'; did you mean 'lr'?" in err
    assert 'Traceback' not in err and not (tmp_path / 'experiments').exists()


def test_torchrun_two_cpu_processes_keep_identical_weights(tmp_path, cufed_root):
    path = _train_yml(tmp_path, cufed_root, total_iter=3)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'extracter' / 'train.py'), '-opt', str(path), '--launcher', 'pytorch', '--root_path',
           str(tmp_path / 'root')]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / 'root' / 'experiments' / 'tiny_rec_cpu'
    log = next(exp.glob('train_*.log')).read_text()
    assert 'world size: 2' in log
    assert 'net_g weights identical on all 2 ranks' in log
    assert load_checkpoint(str(exp / 'training_states' / '3.state'))['iter'] == 3
