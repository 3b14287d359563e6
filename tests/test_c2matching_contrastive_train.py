"""C2-Matching's contrastive training stages (TeacherContrasModel, StudentContrasDistillationModel) on the tiny CPU
options and real photographs from ../shared/data: they start, step (the loss falls on a fixed batch), validate, save
and resume exactly through train.py's pipeline; wrong options are named in one line."""

from pathlib import Path

import pytest
import torch
import yaml

from extracter import train as train_entry
from extracter.models.base_model import load_checkpoint
from extracter.options.schema import load_yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures('one_thread')


def _yml(tmp_path: Path, shared_data: Path, base: str, path=None, **train) -> Path:
    opt = load_yaml(str(REPO / 'options' / 'train' / base))
    opt['datasets']['train']['dataroot_gt'] = str(shared_data / 'train' / 'bsd200')
    opt['datasets']['val']['dataroot_gt'] = str(shared_data / 'sisr' / 'Set5')
    opt['path'].update(path or {})
    opt['train'].update(train)
    out = tmp_path / base
    out.write_text(yaml.safe_dump(opt, sort_keys=False))
    return out


def _run(path: Path, root: Path, *extra: str):
    return train_entry.train_pipeline(str(REPO), ['-opt', str(path), '--root_path', str(root), *extra])


def _random_extractor(path: Path, seed: int) -> Path:
    from extracter.archs.c2_matching.contras_extractor import ContrasExtractorSep

    torch.manual_seed(seed)
    torch.save({'params': ContrasExtractorSep().state_dict()}, path)
    return path


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(str(a))['params'], load_checkpoint(str(b))['params']
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_stage1_trains_validates_and_resumes_exactly(tmp_path, shared_data):
    """4 iterations in one go == 2, stop, --auto_resume to 4; the weights move; validation logs the loss."""
    path = _yml(tmp_path, shared_data, 'tiny_c2matching_stage1_cpu.yml')
    _run(path, tmp_path / 'a', '--force_yml', 'val:val_freq=4')
    _run(path, tmp_path / 'b', '--force_yml', 'train:total_iter=2')
    _run(path, tmp_path / 'b', '--auto_resume')
    exp_a = tmp_path / 'a' / 'experiments' / 'tiny_c2matching_stage1_cpu'
    exp_b = tmp_path / 'b' / 'experiments' / 'tiny_c2matching_stage1_cpu'
    _assert_same_weights(exp_a / 'models' / 'net_g_4.pth', exp_b / 'models' / 'net_g_4.pth')
    w2, w4 = (load_checkpoint(str(exp_a / 'models' / f'net_g_{i}.pth'))['params'] for i in (2, 4))
    assert any(not torch.equal(w2[k], w4[k]) for k in w2)
    assert all(torch.isfinite(v).all() for v in w4.values())
    assert {k.split('.')[0] for k in w4} == {'feature_extraction_image1', 'feature_extraction_image2'}
    log = next(exp_a.glob('train_*.log')).read_text()
    assert 'l_con: ' in log and 'pos_dist: ' in log and 'l_kd' not in log
    assert 'Validation photos_tiny_val # l_con: ' in log
    state = load_checkpoint(str(exp_b / 'training_states' / '4.state'))
    assert state['iter'] == 4 and len(state['optimizers']) == 1


def test_stage2_distils_a_fixed_teacher_and_resumes_exactly(tmp_path, shared_data):
    teacher = _random_extractor(tmp_path / 'teacher.pth', seed=1)
    student0 = _random_extractor(tmp_path / 'student0.pth', seed=2)
    teacher_before = load_checkpoint(str(teacher))['params']
    path = _yml(tmp_path, shared_data, 'tiny_c2matching_stage2_cpu.yml',
                path={'pretrain_network_teacher': str(teacher), 'pretrain_network_g': str(student0)},
                total_iter=2)
    _run(path, tmp_path / 'a')
    _run(path, tmp_path / 'b', '--force_yml', 'train:total_iter=1')
    _run(path, tmp_path / 'b', '--auto_resume')
    exp_a = tmp_path / 'a' / 'experiments' / 'tiny_c2matching_stage2_cpu'
    exp_b = tmp_path / 'b' / 'experiments' / 'tiny_c2matching_stage2_cpu'
    _assert_same_weights(exp_a / 'models' / 'net_g_2.pth', exp_b / 'models' / 'net_g_2.pth')
    start, trained = load_checkpoint(str(student0))['params'], load_checkpoint(str(exp_a / 'models' /
                                                                                       'net_g_2.pth'))['params']
    assert all(not torch.equal(start[k], trained[k]) for k in start)  # every layer of the student learnt
    for name, value in load_checkpoint(str(teacher))['params'].items():
        assert torch.equal(value, teacher_before[name])
    log = next(exp_a.glob('train_*.log')).read_text()
    assert 'Loading ContrasExtractorSep from ' + str(teacher) in log
    assert 'l_con: ' in log and 'l_kd: ' in log


def test_the_loss_falls_on_a_fixed_batch(tmp_path, shared_data):
    from extracter.data.contrastive_dataset import ContrastiveWarpDataset
    from extracter.models.contrastive_model import TeacherContrasModel

    opt = load_yaml(str(REPO / 'options' / 'train' / 'tiny_c2matching_stage1_cpu.yml'))
    opt.update(is_train=True, dist=False, rank=0, world_size=1, device=torch.device('cpu'),
               path={'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states')})
    torch.manual_seed(0)
    model = TeacherContrasModel(opt)
    ds = ContrastiveWarpDataset(dataroot_gt=str(shared_data / 'train' / 'bsd200'), gt_size=64, fit='random_crop',
                                warp_window=64, fixed_warps=True)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    model.feed_data(batch)
    losses = []
    for it in range(1, 9):
        model.optimize_parameters(it)
        losses.append(model.get_current_log()['l_total'])
        assert not model.skipped_steps
    assert all(map(lambda v: v == v and v < 10, losses))
    assert losses[-1] < losses[0] - 0.04, losses  # seed 0: 1.128 -> 1.027 (seeds 1, 2: -0.06, -0.10)


def _cli_error(tmp_path, capsys, path: Path) -> str:
    from extracter.train import main

    assert main(['-opt', str(path), '--root_path', str(tmp_path / 'root')]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err and not (tmp_path / 'root' / 'experiments').exists()
    return err


def test_wrong_options_are_named(tmp_path, capsys, shared_data):
    stage2 = _yml(tmp_path, shared_data, 'tiny_c2matching_stage2_cpu.yml', path={'pretrain_network_teacher': None})
    assert 'path.pretrain_network_teacher: missing: stage 2 distils the stage-1 teacher' in _cli_error(
        tmp_path, capsys, stage2)
    sr_loss = _yml(tmp_path, shared_data, 'tiny_c2matching_stage1_cpu.yml',
                   pixel_opt={'type': 'L1Loss', 'loss_weight': 1.0})
    assert 'train.pixel_opt: TeacherContrasModel trains with train.contrastive_opt only' in _cli_error(
        tmp_path, capsys, sr_loss)
    opt = load_yaml(str(sr_loss))
    del opt['train']['pixel_opt'], opt['train']['contrastive_opt']
    sr_loss.write_text(yaml.safe_dump(opt))
    assert 'train.contrastive_opt is missing' in _cli_error(tmp_path, capsys, sr_loss)
    opt['train']['contrastive_opt'] = {'type': 'ContrastiveCorrespondenceLoss', 'temprature': 0.1}
    sr_loss.write_text(yaml.safe_dump(opt))
    assert "'train.contrastive_opt.temprature'; did you mean 'temperature'?" in _cli_error(tmp_path, capsys, sr_loss)
    opt['train']['contrastive_opt'] = {'type': 'ContrastiveCorrespondenceLoss'}
    opt['network_g'] = {'type': 'TTSR'}
    sr_loss.write_text(yaml.safe_dump(opt))
    assert 'TTSR is a super-resolution network: use model_type RefSRModel' in _cli_error(tmp_path, capsys, sr_loss)


def test_both_branches_start_from_the_vgg16_file(tmp_path):
    """path.init_vgg16: torchvision's VGG-16 ``features`` weights (here random, in its key layout) in both branches,
    the original's ``vgg16(pretrained=True)``."""
    from extracter.models.contrastive_model import TeacherContrasModel

    g = torch.Generator().manual_seed(0)
    layers = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256)}
    vgg = {}
    for index, (out_ch, in_ch) in layers.items():
        vgg[f'{index}.weight'] = torch.randn(out_ch, in_ch, 3, 3, generator=g)
        vgg[f'{index}.bias'] = torch.randn(out_ch, generator=g)
    torch.save(vgg, tmp_path / 'vgg16.pth')
    opt = load_yaml(str(REPO / 'options' / 'train' / 'tiny_c2matching_stage1_cpu.yml'))
    opt.update(is_train=True, dist=False, rank=0, world_size=1, device=torch.device('cpu'),
               path={'init_vgg16': str(tmp_path / 'vgg16.pth')})
    state = TeacherContrasModel(opt).net_g.state_dict()
    names = {0: 'conv1_1', 2: 'conv1_2', 5: 'conv2_1', 7: 'conv2_2', 10: 'conv3_1'}
    for branch in ('feature_extraction_image1', 'feature_extraction_image2'):
        for index, name in names.items():
            for kind in ('weight', 'bias'):
                assert torch.equal(state[f'{branch}.model.{name}.{kind}'], vgg[f'{index}.{kind}'])
