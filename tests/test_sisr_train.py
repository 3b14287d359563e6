"""Single-image SR (DRCT) through the training pipeline: options/train/drct_demo_cpu.yml with a tiny DRCT on a
CUFED-layout fixture cut from ../shared/data: BasicSR checkpoints, validation PSNR/SSIM on the EMA weights, exact
resume, and the model/architecture pairing."""

from pathlib import Path

import pytest
import torch
import yaml
from basicsr.metrics import calculate_psnr
from basicsr.models import build_model
from basicsr.utils import tensor2img

from extracter import train as train_entry
from extracter.archs.drct_arch import DRCT
from extracter.data.noref_dataset import NoRefTestDataset
from extracter.inference.engine import run_sisr
from extracter.models.refsr_model import load_checkpoint
from extracter.utils.options import load_yaml

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
    assert DRCT.options_from_state_dict(ckpt)['embed_dim'] == 12
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
