"""C2-Matching's stage 3 (the restoration, L1) on the tiny CPU options: it trains through train.py, the frozen
contrastive extractor and VGG-19 stay as they were, and the checkpoints load as a C2Matching network."""

from pathlib import Path

import pytest
import torch
import yaml

from extracter import train as train_entry
from extracter.archs.descriptor import descriptor_of
from extracter.models.base_model import load_checkpoint
from extracter.options.schema import load_yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures('one_thread')


def test_stage3_trains_the_restoration_only(tmp_path, cufed_root):
    opt = load_yaml(str(REPO / 'options' / 'train' / 'tiny_c2matching_cpu.yml'))
    opt['datasets']['train']['dataroot_gt'] = str(cufed_root / 'train' / 'input')
    opt['datasets']['train']['dataroot_ref'] = str(cufed_root / 'train' / 'ref')
    opt['datasets']['val']['dataroot'] = str(cufed_root / 'test' / 'CUFED5')
    opt['train']['total_iter'] = 3
    opt['logger']['save_checkpoint_freq'] = 1
    path = tmp_path / 'c2.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    root = tmp_path / 'root'
    train_entry.train_pipeline(str(REPO), ['-opt', str(path), '--root_path', str(root)])
    models = root / 'experiments' / 'tiny_c2matching_cpu' / 'models'
    first = load_checkpoint(str(models / 'net_g_1.pth'))['params']
    last = load_checkpoint(str(models / 'net_g_3.pth'))['params']
    assert descriptor_of('C2Matching').detect(last) == {'type': 'C2Matching', 'ngf': 8, 'n_blocks': 1, 'groups': 8}
    for key in first:
        frozen = key.startswith(('contras.', 'vgg.'))
        assert torch.equal(first[key], last[key]) == frozen or 'conv_offset_mask' in key, key
    assert all(torch.isfinite(v).all() for v in last.values())

    # test.py on CUFED5 (references of other sizes than the HR: padded to a common size), with a memory budget
    from extracter import test as test_entry

    test = load_yaml(str(REPO / 'options' / 'test' / 'test_C2_matching.yml'))
    test['network_g'].update(ngf=8, n_blocks=1)
    test['datasets']['test_1']['dataroot'] = str(cufed_root / 'test' / 'CUFED5')
    test['path']['pretrain_network_g'] = str(models / 'net_g_3.pth')
    test['val']['max_memory'] = '1G'
    test_path = tmp_path / 'test_c2.yml'
    test_path.write_text(yaml.safe_dump(test, sort_keys=False))
    test_entry.test_pipeline(str(REPO), ['-opt', str(test_path), '--root_path', str(tmp_path)])
    results = tmp_path / 'results' / 'C2_matching_gan'
    rows = (results / 'metrics_CUFED5_L1.csv').read_text().splitlines()
    assert len(rows) == 1 + 3 + 1 and rows[-1].startswith('mean')  # header, three images, the mean
    assert len(list((results / 'visualization' / 'CUFED5_L1').glob('*.png'))) == 3


def test_original_option_layout_is_refused_in_one_line(tmp_path):
    from extracter.options.schema import validate_options
    from extracter.utils.option_checks import OptionError

    opt = load_yaml(str(REPO / 'options' / 'test' / 'test_C2_matching.yml'))
    opt['network_map'] = {'type': 'CorrespondenceGenerationArch'}
    opt['path']['pretrain_model_feature_extractor'] = 'feature_extraction.pth'
    with pytest.raises(OptionError, match='network_map, path.pretrain_model_feature_extractor: options of the '
                                          'original C2-Matching code; here one network_g'):
        validate_options(opt, is_train=False, source='c2.yml', check_files=False)
    opt = load_yaml(str(REPO / 'options' / 'test' / 'test_C2_matching_mse.yml'))
    validate_options(opt, is_train=False, source='c2.yml', check_files=False)  # ours is accepted
