"""Option files: typos and unknown keys name the key (with a suggestion), missing files are named."""

from pathlib import Path

import pytest
import yaml

from extracter.options.schema import OptionError, load_yaml, parse_options, validate_options

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / 'options' / 'train' / 'tiny_rec_cpu.yml'
ALL_OPTION_FILES = sorted((REPO / 'options').rglob('*.yml'))


def _tiny(tmp_path: Path) -> dict:
    opt = load_yaml(str(TINY))
    for sub in ('input', 'ref', 'CUFED5'):
        (tmp_path / sub).mkdir()
    opt['datasets']['train']['dataroot_gt'] = str(tmp_path / 'input')
    opt['datasets']['train']['dataroot_ref'] = str(tmp_path / 'ref')
    opt['datasets']['val']['dataroot'] = str(tmp_path / 'CUFED5')
    return opt


def test_tiny_options_are_valid(tmp_path):
    validate_options(_tiny(tmp_path), is_train=True, source='tiny.yml')


@pytest.mark.parametrize('path', ALL_OPTION_FILES, ids=lambda p: p.name)
def test_every_option_file_has_only_known_keys(path):
    """Every key of every shipped file is known (the data and weight files they name are absent here)."""
    opt = load_yaml(str(path))
    validate_options(opt, is_train=path.parent.name == 'train', source=str(path), check_files=False)


@pytest.mark.parametrize('edit, message', [
    (lambda o: o['train']['optim_g'].update(lrr=1.0), "'train.optim_g.lrr'; did you mean 'lr'"),
    (lambda o: o.update(netwrok_d={}), "'netwrok_d'; did you mean 'network_d'"),
    (lambda o: o['network_g'].update(n_feat=8), "'network_g.n_feat'; did you mean 'n_feats'"),
    (lambda o: o['train']['pixel_opt'].update(loss_weigth=1), "'train.pixel_opt.loss_weigth'; did you mean"),
    (lambda o: o['train'].update(total_iters=5), "'train.total_iters'; did you mean 'total_iter'"),
    (lambda o: o['datasets']['train'].update(gt_szie=32), "'datasets.train.gt_szie'; did you mean 'gt_size'"),
    (lambda o: o['logger'].update(print_frequency=1), "'logger.print_frequency'; did you mean 'print_freq'"),
    (lambda o: o['val']['metrics']['psnr_y_b4'].update(crop_boder=4), None),  # calculate_psnr takes **kwargs
    (lambda o: o['train']['scheduler'].update(milestone=[1]), "'train.scheduler.milestone'; did you mean 'milestones'"),
    (lambda o: o['network_g'].update(type='Extractor'), "network_g.type: unknown architecture 'Extractor'"),
    (lambda o: o['datasets']['train'].update(type='RefSRTrainDatset'), "did you mean 'RefSRTrainDataset'"),
    (lambda o: o['train'].update(gan_opt={'type': 'WGANGPLoss'}), 'train.gan_opt needs a network_d block'),
])
def test_option_mistakes_name_the_key(tmp_path, edit, message):
    opt = _tiny(tmp_path)
    edit(opt)
    if message is None:
        validate_options(opt, is_train=True, source='tiny.yml')
        return
    with pytest.raises(OptionError) as err:
        validate_options(opt, is_train=True, source='tiny.yml')
    assert message in str(err.value)
    assert str(err.value).startswith('tiny.yml: ')


def test_missing_files_are_named(tmp_path):
    opt = _tiny(tmp_path)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'missing_net.pth')
    with pytest.raises(OptionError, match=r'path.pretrain_network_g: file not found: .*missing_net.pth'):
        validate_options(opt, is_train=True)
    (tmp_path / "x").mkdir()
    opt = _tiny(tmp_path / "x")
    opt['datasets']['train']['dataroot_gt'] = '/no/such/CUFED/input'
    with pytest.raises(OptionError, match=r'datasets.train.dataroot_gt: folder not found: /no/such/CUFED/input'):
        validate_options(opt, is_train=True)


def test_duplicate_and_missing_option_file(tmp_path):
    bad = tmp_path / 'dup.yml'
    bad.write_text('name: a\nname: b\n')
    with pytest.raises(OptionError, match=r"dup.yml: duplicate key 'name' \(line 2\)"):
        load_yaml(str(bad))
    with pytest.raises(OptionError, match='option file not found: .*nothing.yml'):
        load_yaml(str(tmp_path / 'nothing.yml'))


def test_parse_options_cli_paths_and_force_yml(tmp_path):
    path = tmp_path / 'tiny.yml'
    path.write_text(yaml.safe_dump(_tiny(tmp_path)))
    opt, _ = parse_options(str(REPO), True, ['-opt', str(path), '--root_path', str(tmp_path / 'root'),
                                             '--force_yml', 'train:total_iter=9'])
    assert opt['train']['total_iter'] == 9
    assert opt['dist'] is False and opt['device'].type == 'cpu' and opt['world_size'] == 1
    assert opt['path']['models'] == str(tmp_path / 'root' / 'experiments' / 'tiny_rec_cpu' / 'models')
    with pytest.raises(OptionError, match="--force_yml: no option 'train:total_iterz'"):
        parse_options(str(REPO), True, ['-opt', str(path), '--force_yml', 'train:total_iterz=9'])
