"""Single-image SR (DRCT) through the training and testing pipelines: options/train/drct_demo_cpu.yml with a tiny
DRCT on a CUFED-layout fixture cut from ../shared/data (BasicSR checkpoints, validation PSNR/SSIM on the EMA weights,
exact resume, a 2-process torchrun), the shipped DRCT test options through test.py on real Set5 crops, and the
option checks (model/architecture pairing, scale, tile's place)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.metrics import calculate_psnr
from basicsr.models import build_model
from basicsr.utils import tensor2img
from PIL import Image

from extracter import test as test_entry
from extracter import train as train_entry
from extracter.archs.drct_arch import DRCT
from extracter.data.noref_dataset import NoRefTestDataset
from extracter.inference.engine import run_sisr
from extracter.models.base_model import load_checkpoint
from extracter.options.schema import OptionError, load_yaml, validate_options

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / 'options' / 'train' / 'drct_demo_cpu.yml'
# a DRCT of a few thousand parameters with the demo's structure: window 4 (LR crops of 8 = 32 / 4), 2 groups
TINY_NET = dict(img_size=8, window_size=4, depths=[2, 2], embed_dim=12, num_heads=[2, 2], gc=4, mlp_ratio=2)

pytestmark = pytest.mark.usefixtures('one_thread')


def _train_yml(tmp_path: Path, cufed_root: Path, validate: bool = True, **train) -> Path:
    opt = load_yaml(str(DEMO))
    ds = opt['datasets']
    ds['train'].update(dataroot_gt=str(cufed_root / 'train' / 'input'), dataroot_ref=str(cufed_root / 'train' / 'ref'),
                       gt_size=32, ref_size=32, num_worker_per_gpu=0, batch_size_per_gpu=2)
    ds['val']['dataroot'] = str(cufed_root / 'train' / 'input')  # six 160x160 photos
    opt['network_g'].update(TINY_NET)
    opt['train'].update(warmup_iter=-1, **train)
    opt['train']['scheduler']['periods'] = [opt['train']['total_iter']]
    opt['val']['val_freq'] = 2 if validate else 1000
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    path = tmp_path / 'drct_demo_cpu.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def _run(path: Path, root: Path, *extra: str):
    return train_entry.train_pipeline(str(REPO), ['-opt', str(path), '--root_path', str(root), *extra])


def test_demo_options_build_the_described_network():
    """The shipped demo YAML: a DRCT at width 60 with 4 groups and window 8, whose LR crops fit the window."""
    opt = load_yaml(str(DEMO))
    net_opt = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    net = DRCT(**net_opt)
    assert (net.embed_dim, len(net.layers), net.window_size) == (60, 4, 8)
    assert opt['datasets']['train']['gt_size'] // opt['scale'] % net.pad_multiple() == 0
    assert opt['network_g']['img_size'] == opt['datasets']['train']['gt_size'] // opt['scale']
    assert opt['model_type'] == 'SISRModel' and opt['train']['ema_decay'] > 0
    assert opt['train']['scheduler']['periods'] == [opt['train']['total_iter']]


def test_drct_trains_validates_on_ema_and_saves_basicsr_checkpoints(tmp_path, cufed_root):
    root = tmp_path / 'root'
    _run(_train_yml(tmp_path, cufed_root, total_iter=2), root)
    exp = root / 'experiments' / 'drct_demo_cpu'
    ckpt = load_checkpoint(str(exp / 'models' / 'net_g_2.pth'))
    assert set(ckpt) == {'params', 'params_ema'}
    net = DRCT(**TINY_NET, upscale=4, upsampler='pixelshuffle')
    net.load_state_dict(ckpt['params_ema'], strict=True)  # the original's layout: loads strictly
    assert DRCT.descriptor.detect(ckpt)['embed_dim'] == 12
    state = load_checkpoint(str(exp / 'training_states' / '2.state'))
    assert state['iter'] == 2 and len(state['optimizers']) == 1
    log = next(exp.glob('train_drct_demo_cpu_*.log')).read_text()
    assert 'type: DRCT' in log and 'l_rec: ' in log
    assert 'Validation Set5' in log and '# psnr_y_b4: ' in log and '# ssim_y_b4: ' in log

    # the logged validation PSNR is BasicSR's, on the EMA weights, through run_sisr (pad to the window, crop back)
    net.eval()
    ds = NoRefTestDataset(dataroot=str(cufed_root / 'train' / 'input'))
    values = []
    for i in range(len(ds)):
        sample = ds[i]
        sr = run_sisr(net, sample['lq'][None])
        values.append(calculate_psnr(tensor2img([sr]), tensor2img([sample['gt'][None]]), crop_border=4,
                                     test_y_channel=True))
    logged = float(log.split('# psnr_y_b4: ')[-1].split()[0])
    assert logged == pytest.approx(sum(values) / len(values), abs=1e-4)


def test_drct_resume_continues_identically(tmp_path, cufed_root):
    """4 iterations in one go == 2, stop, --auto_resume to 4 (3 iterations per epoch: resumes mid-epoch)."""
    path = _train_yml(tmp_path, cufed_root, validate=False, total_iter=4)
    _run(path, tmp_path / 'a')
    _run(path, tmp_path / 'b', '--force_yml', 'train:total_iter=2')
    _run(path, tmp_path / 'b', '--auto_resume')
    a = load_checkpoint(str(tmp_path / 'a' / 'experiments' / 'drct_demo_cpu' / 'models' / 'net_g_4.pth'))
    b = load_checkpoint(str(tmp_path / 'b' / 'experiments' / 'drct_demo_cpu' / 'models' / 'net_g_4.pth'))
    for key in ('params', 'params_ema'):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    init = DRCT(**TINY_NET, upscale=4, upsampler='pixelshuffle').state_dict()
    assert any(not torch.equal(init[k], a['params'][k]) for k in init if k.endswith('weight'))


def test_model_and_architecture_must_agree(tmp_path, cufed_root):
    opt = load_yaml(str(_train_yml(tmp_path, cufed_root, total_iter=2)))
    opt.update(is_train=False, device=torch.device('cpu'), dist=False)
    with pytest.raises(ValueError, match='model_type RefSRModel needs a reference-based network; network_g.type DRCT'):
        build_model(dict(opt, model_type='RefSRModel'))
    ext = {'type': 'Extracter', 'num_res_blocks': '1+1+1+1', 'num_grad_blocks': '1+1+1+1', 'n_feats': 8,
           'dfe_init': 'random'}
    with pytest.raises(ValueError, match='model_type SISRModel needs a single-image network; .* use model_type '
                                         'RefSRModel'):
        build_model(dict(opt, network_g=ext))


def test_training_crops_must_fit_the_window(tmp_path, cufed_root):
    path = _train_yml(tmp_path, cufed_root, validate=False, total_iter=1)
    with pytest.raises(ValueError, match=r'training LR patches of 6x6 .* window 4: make datasets.train.gt_size a '
                                         r'multiple of 16'):
        _run(path, tmp_path / 'r', '--force_yml', 'datasets:train:gt_size=24', 'datasets:train:ref_size=24')


def test_torchrun_two_cpu_processes_train_drct(tmp_path, cufed_root):
    path = _train_yml(tmp_path, cufed_root, validate=False, total_iter=2)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'extracter' / 'train.py'), '-opt', str(path), '--launcher', 'pytorch', '--root_path',
           str(tmp_path / 'root')]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / 'root' / 'experiments' / 'drct_demo_cpu'
    log = next(exp.glob('train_*.log')).read_text()
    assert 'world size: 2' in log and 'net_g weights identical on all 2 ranks' in log
    assert set(load_checkpoint(str(exp / 'models' / 'net_g_latest.pth'))) == {'params', 'params_ema'}


@pytest.fixture(scope='module')
def paired_set5(shared_data, tmp_path_factory):
    """Two Set5 images in BasicSR's paired layout (GTmod4 crops of 76x92 and their PIL-bicubic x4 LR, 19x23: not a
    multiple of the window)."""
    from extracter.data import degradations as deg
    from extracter.data.image_io import read_image

    root = tmp_path_factory.mktemp('Set5')
    for sub in ('GTmod4', 'LRbicx4'):
        (root / sub).mkdir()
    for name in sorted(os.listdir(shared_data / 'sisr' / 'Set5'))[:2]:
        hr = read_image(shared_data / 'sisr' / 'Set5' / name)[40:116, 30:122]
        Image.fromarray(hr).save(root / 'GTmod4' / name)
        Image.fromarray(deg.make_lq(hr)).save(root / 'LRbicx4' / name)
    return root


def _test_yml(tmp_path: Path, name: str, dataset: dict, weights: Path) -> Path:
    opt = load_yaml(str(REPO / 'options' / 'test' / name))
    first = next(iter(opt['datasets'].values()))
    opt['datasets'] = {'test_1': dict(first, **dataset)}
    opt['network_g'].update(TINY_NET)
    opt['path']['pretrain_network_g'] = str(weights)
    opt['num_gpu'] = 0
    opt['val']['pbar'] = False
    path = tmp_path / name
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def _png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_test_py_runs_the_drct_test_options(tmp_path, paired_set5):
    """options/test/DRCT_SRx4.yml, DRCT_tile_example.yml and DRCT_SRx4_LR.yml (a tiny DRCT in their network_g) on
    paired Set5 crops: metrics equal BasicSR's on the saved images, the EMA weights are used, tiles match."""
    net = DRCT(**TINY_NET, upscale=4, upsampler='pixelshuffle')
    ema = DRCT(**TINY_NET, upscale=4, upsampler='pixelshuffle')
    weights = tmp_path / 'drct.pth'
    torch.save({'params': net.state_dict(), 'params_ema': ema.state_dict()}, weights)
    paired = {'dataroot_gt': str(paired_set5 / 'GTmod4'), 'dataroot_lq': str(paired_set5 / 'LRbicx4')}
    names = sorted(os.listdir(paired_set5 / 'GTmod4'))
    results = {}
    for yml, dataset in (('DRCT_SRx4.yml', paired), ('DRCT_tile_example.yml', paired),
                         ('DRCT_SRx4_LR.yml', {'dataroot_lq': paired['dataroot_lq']})):
        opt = test_entry.test_pipeline(str(REPO), ['-opt', str(_test_yml(tmp_path, yml, dataset, weights)),
                                                   '--root_path', str(tmp_path)])
        vis = tmp_path / 'results' / opt['name'] / 'visualization' / opt['datasets']['test_1']['name']
        results[yml] = {n: _png(vis / f'{Path(n).stem}_{opt["name"]}.png') for n in names}
        if yml == 'DRCT_SRx4.yml':
            rows = {r['image']: r for r in csv.DictReader(open(tmp_path / 'results' / opt['name'] /
                                                               'metrics_Set5.csv'))}
    ema.eval()
    for n in names:
        gt = _png(paired_set5 / 'GTmod4' / n)
        sr = results['DRCT_SRx4.yml'][n]
        assert sr.shape == gt.shape == (76, 92, 3)
        assert float(rows[Path(n).stem]['psnr']) == pytest.approx(calculate_psnr(sr, gt, 4, test_y_channel=True),
                                                                  abs=1e-4)
        lq = torch.from_numpy(cv2.imread(str(paired_set5 / 'LRbicx4' / n))[..., ::-1].copy()).permute(2, 0, 1)
        expected = run_sisr(ema, lq[None].float() / 255)  # the EMA weights, padded to the window, cropped back
        assert np.abs(tensor2img([expected]).astype(int) - sr.astype(int)).max() <= 1
        # the tile example: tiles of 128 with 32 of context cover these small LR images in one tile: identical
        assert np.array_equal(results['DRCT_tile_example.yml'][n], sr)
        assert np.array_equal(results['DRCT_SRx4_LR.yml'][n], sr)  # LR only, no metrics: same pictures


def test_scale_must_match_the_network_and_tile_lives_under_val():
    opt = load_yaml(str(REPO / 'options' / 'test' / 'DRCT_SRx4.yml'))
    validate_options(opt, is_train=False, source='t.yml', check_files=False)
    x2 = dict(opt, network_g=dict(opt['network_g'], upscale=2))
    with pytest.raises(OptionError, match=r'scale: 4 disagrees with network_g \(DRCT upscales x2\)'):
        validate_options(x2, is_train=False, source='t.yml', check_files=False)
    validate_options(dict(x2, scale=2), is_train=False, source='t.yml', check_files=False)  # DRCT x2 with x2 data
    ext = load_yaml(str(REPO / 'options' / 'test' / 'set14.yml'))
    with pytest.raises(OptionError, match=r'scale: 2 disagrees with network_g \(Extracter upscales x4\)'):
        validate_options(dict(ext, scale=2), is_train=False, source='t.yml', check_files=False)
    with pytest.raises(OptionError, match=r't.yml: tile: the tile options live under val \(val.tile'):
        validate_options(dict(opt, tile={'tile_size': 64, 'tile_pad': 8}), is_train=False, source='t.yml',
                         check_files=False)
