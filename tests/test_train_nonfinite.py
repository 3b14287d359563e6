"""Diverging training stops (docs/errors.md, "Non-finite values in training"): inf/NaN options are refused with the
key; a step whose loss terms or gradients are not finite is skipped (generator and critic), the EMA never takes
non-finite weights, training stops with exit status 2 after ``train.nonfinite_patience`` consecutive such iterations
naming the iteration, the terms and the last good checkpoint, no checkpoint with non-finite weights is written, and
the run resumes from the named checkpoint."""

import os
import re
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml

from extracter import train as train_entry
from extracter.models.base_model import load_checkpoint
from extracter.models.nonfinite import NonFiniteError, SkippedStep
from extracter.models.refsr_model import RefSRModel
from extracter.options.schema import load_yaml
from extracter.registry import basicsr_registry
from tests.test_train_model import _batch, _opt

REPO = Path(__file__).resolve().parents[1]
NAN = float('nan')

pytestmark = pytest.mark.usefixtures('one_thread')

ALL_LOSSES = dict(rec_only_iter=0, net_d_iters=2, ema_decay=0.5,
                  perceptual_opt={'type': 'PerceptualRelu51Loss', 'loss_weight': 1e-2, 'init': 'random'},
                  gradient_opt={'type': 'GradientDensityLoss', 'loss_weight': 1e-3},
                  gan_opt={'type': 'WGANGPLoss', 'loss_weight': 1e-3, 'gp_weight': 10},
                  optim_d={'type': 'Adam', 'lr': 1e-4, 'betas': [0, 0.9]})


def _state(net: torch.nn.Module):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finite(state) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _step(model, it, batch=None):
    model.feed_data(batch or _batch())
    model.optimize_parameters(it)
    return model.skipped_steps


# ------------------------------------------------------------------------------------------------- the model's steps
def test_a_non_finite_loss_skips_the_generator_step_and_the_ema(tmp_path, monkeypatch):
    model = RefSRModel(_opt(tmp_path, ema_decay=0.5))
    g, ema = _state(model.net_g), _state(model.net_g_ema)
    real = model.cri_pix.forward
    monkeypatch.setattr(model.cri_pix, 'forward', lambda *a, **k: real(*a, **k) * NAN)
    skipped = _step(model, 1)
    assert skipped == [SkippedStep('generator', ['l_rec', 'l_total'])]
    assert skipped[0].describe() == 'non-finite l_rec, l_total (generator)'
    assert _same(g, _state(model.net_g)) and _same(ema, _state(model.net_g_ema))
    assert model.optimizer_g.state_dict()['state'] == {}  # Adam's moments never saw the step
    assert all(p.grad is None for p in model.net_g.parameters())
    monkeypatch.undo()
    assert _step(model, 2) == []  # finite again: the step is taken, the EMA follows
    assert not _same(g, _state(model.net_g)) and not _same(ema, _state(model.net_g_ema))


def test_a_non_finite_gradient_skips_the_step(tmp_path):
    model = RefSRModel(_opt(tmp_path))
    g = _state(model.net_g)
    param = next(p for p in model.net_g.parameters() if p.requires_grad)
    handle = param.register_hook(lambda grad: grad * NAN)
    skipped = _step(model, 1)
    assert skipped == [SkippedStep('generator', [], gradient=True)]
    assert skipped[0].describe() == 'non-finite gradient (generator)'
    assert _same(g, _state(model.net_g)) and model.optimizer_g.state_dict()['state'] == {}
    assert all(v == v for v in model.get_current_log().values())  # the losses themselves were finite
    handle.remove()
    assert _step(model, 2) == []


def test_a_non_finite_critic_loss_skips_only_the_critic_steps(tmp_path, monkeypatch):
    model = RefSRModel(_opt(tmp_path, **ALL_LOSSES))
    d, g = _state(model.net_d), _state(model.net_g)
    real = model.cri_gan.discriminator_loss

    def nan_penalty(*args):
        l_d, wdist, gp, d_real = real(*args)
        return l_d + gp * NAN, wdist, gp * NAN, d_real

    monkeypatch.setattr(model.cri_gan, 'discriminator_loss', nan_penalty)
    skipped = _step(model, 1)
    assert skipped == [SkippedStep('critic', ['l_d', 'l_d_gp'])] * 2  # both critic steps, not the generator's
    assert _same(d, _state(model.net_d)) and model.optimizer_d.state_dict()['state'] == {}
    assert not _same(g, _state(model.net_g)) and _finite(_state(model.net_g_ema))
    assert not any(p.requires_grad for p in model.net_d.parameters())  # frozen again outside its steps


def test_a_step_that_leaves_non_finite_weights_keeps_them_out_of_the_ema(tmp_path, monkeypatch):
    model = RefSRModel(_opt(tmp_path, ema_decay=0.5))
    ema = _state(model.net_g_ema)
    real_step = model.optimizer_g.step

    def overflowing_step(*args, **kwargs):
        real_step(*args, **kwargs)
        with torch.no_grad():
            model.optimizer_g.param_groups[0]['params'][0].mul_(float('inf'))

    monkeypatch.setattr(model.optimizer_g, 'step', overflowing_step)
    skipped = _step(model, 1)
    assert skipped == [SkippedStep('generator', weights=True)]
    assert skipped[0].describe() == 'the generator step left non-finite weights'
    assert _same(ema, _state(model.net_g_ema))


# ------------------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize('which', ['net_g', 'net_g_ema', 'net_d'])
def test_networks_with_non_finite_weights_are_never_saved(tmp_path, which):
    model = RefSRModel(_opt(tmp_path, **ALL_LOSSES))
    _step(model, 1)
    model.save(0, 1, {'iter_in_epoch': 1})
    models, states = Path(model.opt['path']['models']), Path(model.opt['path']['training_states'])
    before = {p: p.read_bytes() for p in [*models.iterdir(), *states.iterdir()]}
    net = getattr(model, which)
    name, param = list(net.named_parameters())[3]
    with torch.no_grad():
        param[(0,) * param.dim()] = NAN
    label = {'net_g': 'net_g has', 'net_g_ema': 'net_g (EMA, params_ema) has', 'net_d': 'net_d has'}[which]
    for it in (2, -1):
        with pytest.raises(NonFiniteError, match=re.escape(f"{label} non-finite weights (1 of ")) as err:
            model.save(0, it, {'iter_in_epoch': 2})
        assert f"e.g. '{name}'" in str(err.value) and 'nothing was saved' in str(err.value)
        assert {p: p.read_bytes() for p in [*models.iterdir(), *states.iterdir()]} == before


def test_resume_takes_the_options_learning_rates(tmp_path):
    model = RefSRModel(_opt(tmp_path, ema_decay=0.5))
    _step(model, 1)
    model.save(0, 1, {'iter_in_epoch': 1})
    state = load_checkpoint(os.path.join(model.opt['path']['training_states'], '1.state'))
    same = RefSRModel(_opt(tmp_path, ema_decay=0.5))
    same.resume_training(state)
    assert [g['lr'] for g in same.optimizer_g.param_groups] == [1e-3, 1e-4]
    lower = _opt(tmp_path, ema_decay=0.5)
    lower['train']['optim_g']['lr'] = 2.5e-4
    resumed = RefSRModel(lower)
    resumed.resume_training(state)
    groups = resumed.optimizer_g.param_groups
    assert [g['lr'] for g in groups] == [2.5e-4, 1e-4] and [g['initial_lr'] for g in groups] == [2.5e-4, 1e-4]
    assert resumed.schedulers[0].base_lrs == [2.5e-4, 1e-4]
    assert resumed.optimizer_g.state_dict()['state'].keys() == model.optimizer_g.state_dict()['state'].keys()


# ------------------------------------------------------------------------------------------------- train.py
def _train_yml(tmp_path: Path, cufed_root: Path, **train) -> Path:
    opt = load_yaml(str(REPO / 'options' / 'train' / 'tiny_rec_cpu.yml'))
    opt['datasets']['train']['dataroot_gt'] = str(cufed_root / 'train' / 'input')
    opt['datasets']['train']['dataroot_ref'] = str(cufed_root / 'train' / 'ref')
    opt['datasets']['val']['dataroot'] = str(cufed_root / 'test' / 'CUFED5')
    opt['network_g']['n_feats'] = 8
    opt['logger'].update(print_freq=1, save_checkpoint_freq=3)
    opt['train'].update(ema_decay=0.5, **train)
    path = tmp_path / 'tiny_rec_cpu.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def _main(path: Path, root: Path, capsys, *extra: str):
    rc = train_entry.main(['-opt', str(path), '--root_path', str(root), *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert 'Traceback' not in err, err
    return rc, errors, err


def _saved(exp: Path):
    return tuple(sorted(p.name for p in (exp / sub).iterdir()) for sub in ('models', 'training_states'))


@pytest.mark.parametrize('key,literal', [('train.optim_g.lr', '!!float 1e400'), ('train.optim_g.lr', '.nan'),
                                         ('train.optim_g.eps', '.inf'), ('train.optim_g.betas[1]', '.nan'),
                                         ('train.pixel_opt.loss_weight', '-.inf')])
def test_non_finite_options_are_refused_with_the_key(tmp_path, cufed_root, capsys, key, literal):
    path = _train_yml(tmp_path, cufed_root)
    opt = load_yaml(str(path))
    *parents, last = re.split(r'\.|\[', key)
    node = opt
    for part in parents:
        node = node[part]
    node[int(last[:-1]) if last.endswith(']') else last] = 'XVALUEX'
    path.write_text(yaml.safe_dump(opt, sort_keys=False).replace('XVALUEX', literal))
    rc, errors, err = _main(path, tmp_path / 'root', capsys)
    assert rc == 2 and len(errors) == 1, err
    assert errors[0].startswith(f'error: {path}: {key} must be a finite number, got '), errors[0]
    assert not (tmp_path / 'root').exists()


def test_a_diverging_learning_rate_stops_with_the_last_good_checkpoint(tmp_path, cufed_root, capsys):
    """A real divergence: the learning rate jumps to 1e25 after iteration 4; with patience 0 the first non-finite
    iteration stops the run, and every checkpoint written is finite."""
    path = _train_yml(tmp_path, cufed_root, total_iter=12, nonfinite_patience=0,
                      scheduler={'type': 'MultiStepLR', 'milestones': [4], 'gamma': 1e22})
    root = tmp_path / 'root'
    rc, errors, err = _main(path, root, capsys)
    exp = root / 'experiments' / 'tiny_rec_cpu'
    assert rc == 2 and len(errors) == 1, err
    match = re.fullmatch(r'error: training stopped at iteration (\d+): non-finite (.+) \(generator\); 1 consecutive '
                         r'iteration\(s\) with non-finite values \(iteration \1\), more than '
                         r'train.nonfinite_patience: 0; the last good checkpoint is (\S+): fix the cause .*'
                         r'--auto_resume.*', errors[0])
    assert match, errors[0]
    assert 'l_rec' in match.group(2) and 'l_total' in match.group(2)
    assert match.group(3) == str(exp / 'training_states' / '3.state')
    assert int(match.group(1)) > 4
    assert _saved(exp) == (['net_g_3.pth'], ['3.state'])
    ckpt = load_checkpoint(str(exp / 'models' / 'net_g_3.pth'))
    assert _finite(ckpt['params']) and _finite(ckpt['params_ema'])


@pytest.fixture
def nan_from_iteration(monkeypatch):
    """L1Loss returns NaN from its k-th call on (one call per training iteration)."""
    L1Loss = basicsr_registry('loss').get('L1Loss')  # the reconstruction loss of the tiny options
    real = L1Loss.forward
    calls = []

    def install(k: int) -> None:
        def forward(self, *args, **kwargs):
            calls.append(1)
            return real(self, *args, **kwargs) * (NAN if len(calls) >= k else 1)

        monkeypatch.setattr(L1Loss, 'forward', forward)

    yield install
    monkeypatch.undo()


def test_skipped_steps_are_counted_then_training_stops_and_resumes(tmp_path, cufed_root, capsys,
                                                                   nan_from_iteration, monkeypatch):
    path = _train_yml(tmp_path, cufed_root, total_iter=9, nonfinite_patience=2)
    root = tmp_path / 'root'
    exp = root / 'experiments' / 'tiny_rec_cpu'
    nan_from_iteration(5)
    rc, errors, err = _main(path, root, capsys)
    assert rc == 2 and len(errors) == 1, err
    state3 = exp / 'training_states' / '3.state'
    assert errors[0] == (f'error: training stopped at iteration 7: non-finite l_rec, l_total (generator); 3 '
                         'consecutive iteration(s) with non-finite values (iterations 5-7), more than '
                         f'train.nonfinite_patience: 2; the last good checkpoint is {state3}: fix the cause (e.g. a '
                         'lower train.optim_g.lr) and resume from it with --auto_resume (or path.resume_state)')
    log = next(exp.glob('train_*.log')).read_text()
    for it, streak in ((5, 1), (6, 2), (7, 3)):
        assert (f'iter {it}: non-finite l_rec, l_total (generator): step skipped ({streak} iteration(s) in a row, '
                f'{streak} in this run; train.nonfinite_patience: 2)') in log
    assert 'iter 6: no checkpoint while steps are skipped on non-finite values' in log
    assert _saved(exp) == (['net_g_3.pth'], ['3.state'])  # none at 6: those weights had just failed
    monkeypatch.undo()  # the cause is fixed: resume from the named checkpoint
    rc, errors, err = _main(path, root, capsys, '--auto_resume')
    assert rc == 0 and not errors, err
    assert f'Resuming from {state3}: epoch' in err
    assert _saved(exp) == (['net_g_3.pth', 'net_g_6.pth', 'net_g_9.pth', 'net_g_latest.pth'],
                           ['3.state', '6.state', '9.state'])
    assert _finite(load_checkpoint(str(exp / 'models' / 'net_g_latest.pth'))['params'])


def test_a_stop_before_the_first_checkpoint_says_so(tmp_path, cufed_root, capsys, nan_from_iteration):
    path = _train_yml(tmp_path, cufed_root, total_iter=4, nonfinite_patience=1)
    nan_from_iteration(1)
    rc, errors, err = _main(path, tmp_path / 'root', capsys)
    assert rc == 2 and len(errors) == 1, err
    assert errors[0].startswith('error: training stopped at iteration 2: non-finite l_rec, l_total (generator); 2 ')
    assert errors[0].endswith('no checkpoint was saved yet: fix the cause (e.g. a lower train.optim_g.lr) and start '
                              'again, the experiment folder is reused')
    assert _saved(tmp_path / 'root' / 'experiments' / 'tiny_rec_cpu') == ([], [])


def test_a_pretrained_ema_with_nan_is_not_saved(tmp_path, cufed_root, capsys):
    from extracter.archs.extracter_arch import Extracter

    opt = load_yaml(str(REPO / 'options' / 'train' / 'tiny_rec_cpu.yml'))
    net = Extracter(**{k: v for k, v in dict(opt['network_g'], n_feats=8).items() if k != 'type'})
    ema = deepcopy(net.state_dict())
    first = next(k for k, v in ema.items() if v.is_floating_point())
    ema[first] = ema[first] * NAN
    weights = tmp_path / 'pretrained.pth'
    torch.save({'params': net.state_dict(), 'params_ema': ema}, weights)
    path = _train_yml(tmp_path, cufed_root, total_iter=3)
    root = tmp_path / 'root'
    rc, errors, err = _main(path, root, capsys, '--force_yml', f'path:pretrain_network_g={weights}')
    assert rc == 2 and len(errors) == 1, err
    assert errors[0] == (f"error: training stopped at iteration 3: the checkpoint of iteration 3 was not written: "
                         f"net_g (EMA, params_ema) has non-finite weights (1 of {len(ema)} tensors, e.g. '{first}'); "
                         'nothing was saved; no checkpoint was saved yet: fix the cause (e.g. a lower '
                         'train.optim_g.lr) and start again, the experiment folder is reused')
    assert _saved(root / 'experiments' / 'tiny_rec_cpu') == ([], [])
