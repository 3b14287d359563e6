"""mmagic/mmediting TTSR checkpoints: numerical parity with mmagic's own code, the converter on its checkpoint
layouts, errors on wrong files, and the restricted loader that reads mmengine checkpoints without importing
anything they name.

The fixtures in tests/fixtures/parity_mmagic were made by running mmagic's TTSR code (CPU, float32) on random weights
in mmagic's key layout and real Vid4 crops put through mmagic's test pipeline; see the README there.
"""

import importlib
import importlib.util
import os
import pickle
import sys
import uuid
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml

from extracter.archs.discriminator_arch import RefSRDiscriminator
from extracter.convert.common import ConversionError
from extracter.convert.mmagic import convert_mmagic_discriminator, map_mmagic_key
from extracter.convert.official import build_network, convert_state_dict
from extracter.tools.convert_official import convert
from extracter.utils.restricted_unpickle import HostilePickleError, Placeholder, find_placeholders, restricted_load

FIXTURES = Path(__file__).parent / 'fixtures' / 'parity_mmagic'
CASES = ('rec', 'gan')


def fixture_paths(name: str):
    ckpt, expected = FIXTURES / f'ttsr_{name}_mmagic.pth', FIXTURES / f'ttsr_{name}_expected.pt'
    if not (ckpt.is_file() and expected.is_file()):
        pytest.skip(f'mmagic parity fixtures missing in {FIXTURES}')
    return ckpt, expected


def load_expected(path: Path) -> dict:
    expected = torch.load(path, map_location='cpu', weights_only=True)
    assert expected['format'] == 'extracter-mmagic-parity-v1'
    return expected


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    """Both fixture checkpoints through scripts/convert_official.py's conversion (once per module)."""
    out = {}
    for name in CASES:
        ckpt, expected = fixture_paths(name)
        folder = tmp_path_factory.mktemp(f'mmagic_{name}')
        result = convert(str(ckpt), str(folder / 'ttsr.pth'))
        out[name] = (result, folder, load_expected(expected))
    return out


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize('search_mode', ['dense', 'chunked'])
@pytest.mark.parametrize('name', CASES)
def test_outputs_match_mmagic(converted, name, search_mode, one_thread):
    result, folder, expected = converted[name]
    opts = yaml.safe_load((folder / 'ttsr.yml').read_text())['network_g']
    net = build_network(opts).eval()
    net.load_state_dict(torch.load(folder / 'ttsr.pth', weights_only=True)['params'], strict=True)
    net.set_search_mode(search_mode, chunk_size=50, key_chunk_size=37)
    x = {k: v.float() / 255 for k, v in expected['inputs'].items()}  # mmagic's uint8 images
    with torch.no_grad():
        out = net(x['img'], x['ref_img'], lr_up=x['img_lq'], ref_downup=x['ref_lq'], return_aux=True)
    theirs = expected['outputs']
    # forward_tensor's output is in [-1, 1]; ours in [0, 1]
    torch.testing.assert_close(out['sr'] * 2 - 1, theirs['pred'], rtol=0, atol=1e-5)
    torch.testing.assert_close(out['S'][0], theirs['soft_attention'], rtol=0, atol=1e-5)
    # mode='predict' (what mmagic's evaluator sees): 0..255 and BGR (DataPreprocessor.destruct converts)
    torch.testing.assert_close((out['sr'] * 255).clamp(0, 255).flip(1), theirs['pred_img'], rtol=0, atol=1e-3)


def test_gan_discriminator_matches_mmagic(converted, one_thread):
    result, folder, expected = converted['gan']
    opts = yaml.safe_load((folder / 'ttsr.yml').read_text())['network_d']
    assert opts == {'type': 'RefSRDiscriminator', 'in_size': expected['disc']['in_size']}
    disc = build_network(opts).eval()
    disc.load_state_dict(torch.load(folder / 'ttsr_net_d.pth', weights_only=True)['params'], strict=True)
    with torch.no_grad():
        scores = disc(expected['disc']['inputs'].float() / 255)  # ours takes [0, 1]; mmagic's took [-1, 1]
    torch.testing.assert_close(scores, expected['disc']['outputs'], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- converter
def test_converter_reads_the_rec_layout(converted):
    result, folder, expected = converted['rec']
    g = result['network_g']
    assert g['type'] == 'TTSR' and g['n_feats'] == expected['mid_channels']
    assert g['num_res_blocks'] == '+'.join(map(str, expected['num_blocks']))
    assert 'network_d' not in result and not (folder / 'ttsr_net_d.pth').exists()
    notes = ' | '.join(result['notes'])
    assert 'extractor_copy' in notes  # mmagic 1.x's frozen LTE copy, dropped
    # mmengine's HistoryBuffer objects and the numpy scalar in meta were not loaded, only reported
    assert 'HistoryBuffer' in notes and 'numpy' in notes


def test_converter_reads_the_gan_layout(converted):
    result, folder, expected = converted['gan']
    g = result['network_g']
    assert g['n_feats'] == expected['mid_channels']
    assert g['num_res_blocks'] == '+'.join(map(str, expected['num_blocks']))
    notes = ' | '.join(result['notes'])
    for part in ('perceptual_loss', 'step_counter', 'RefSRDiscriminator(in_size=160)'):
        assert part in notes
    assert (folder / 'ttsr_net_d.pth').is_file()


def test_every_generator_and_extractor_key_is_mapped():
    ckpt, _ = fixture_paths('rec')
    state = restricted_load(ckpt)['state_dict']
    ours = build_network({'type': 'TTSR', 'num_res_blocks': '2+3+2+1', 'n_feats': 16, 'lte_init': 'random'})
    mapped = {map_mmagic_key(k) for k in state if k.startswith(('generator.', 'extractor.'))}
    assert mapped == set(ours.state_dict())


def _mmagic_state(name: str = 'rec') -> dict:
    ckpt, _ = fixture_paths(name)
    return dict(restricted_load(ckpt)['state_dict'])


def test_error_on_an_mmagic_checkpoint_of_another_model(tmp_path):
    src = tmp_path / 'edsr_mmagic.pth'
    torch.save({'meta': {}, 'state_dict': {'generator.conv_first.weight': torch.zeros(4, 3, 3, 3),
                                           'generator.body.0.conv1.weight': torch.zeros(4, 4, 3, 3)}}, src)
    with pytest.raises(ConversionError, match=r'edsr_mmagic\.pth: an mmagic.*not TTSR.*expected mmagic TTSRNet'):
        convert(str(src), str(tmp_path / 'o.pth'))
    assert not (tmp_path / 'o.pth').exists()


def test_error_on_unknown_or_missing_keys():
    state = _mmagic_state()
    state['generator.attention.weight'] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r'broken\.pth: unrecognised keys.*generator\.attention\.weight'):
        convert_state_dict({'state_dict': state}, source='broken.pth')
    state = _mmagic_state()
    del state['generator.merge_features.conv_last2.weight']
    with pytest.raises(ConversionError, match=r'missing.*main\.merge_tail\.conv_tail2\.weight'):
        convert_state_dict({'state_dict': state}, source='broken.pth')


def test_a_discriminator_of_another_structure_is_reported_not_converted(tmp_path):
    state = _mmagic_state('gan')
    del state['discriminator.body.18.weight'], state['discriminator.body.18.bias']
    assert convert_mmagic_discriminator(state) is None
    _, _, notes = convert_state_dict({'state_dict': state}, source='gan.pth')
    assert any('does not match RefSRDiscriminator' in n and 'not converted' in n for n in notes)
    src = tmp_path / 'gan_other_disc.pth'
    torch.save({'state_dict': state}, src)
    result = convert(str(src), str(tmp_path / 'o.pth'))
    assert 'network_d' not in result and not (tmp_path / 'o_net_d.pth').exists()


def test_discriminator_key_mapping_matches_ours():
    disc = RefSRDiscriminator(in_size=64)
    # mmagic's TTSRDiscriminator layout, written independently: body = conv, LeakyReLU, ... ; last = fc, act, fc
    theirs = {}
    for i in range(10):
        theirs[f'discriminator.body.{2 * i}.weight'] = getattr(disc, f'conv{i + 1}').weight.detach()
        theirs[f'discriminator.body.{2 * i}.bias'] = getattr(disc, f'conv{i + 1}').bias.detach()
    for j, fc in ((0, disc.fc1), (2, disc.fc2)):
        theirs[f'discriminator.last.{j}.weight'] = fc.weight.detach()
        theirs[f'discriminator.last.{j}.bias'] = fc.bias.detach()
    state, opts = convert_mmagic_discriminator(theirs)
    assert opts == {'type': 'RefSRDiscriminator', 'in_size': 64}
    assert all(torch.equal(state[k], v) for k, v in disc.state_dict().items())


# ---------------------------------------------------------------------------------------------- restricted loader
@pytest.fixture
def throwaway_class(tmp_path):
    """A class from a module written to tmp, imported, then made unimportable (file and sys.modules entry gone)."""
    name = f'throwaway_{uuid.uuid4().hex}'
    folder = tmp_path / 'mods'
    folder.mkdir()
    (folder / f'{name}.py').write_text(
        'class Recorder:\n'
        '    def __init__(self, note):\n'
        '        self.note = note\n'
        '        self.numbers = [1, 2.5]\n')
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
    yield module.Recorder, name
    sys.modules.pop(name, None)


def _unimportable(name: str) -> None:
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    assert importlib.util.find_spec(name) is None


def test_restricted_load_replaces_an_unimportable_class(tmp_path, throwaway_class):
    recorder_cls, module_name = throwaway_class
    weights = OrderedDict(w=torch.randn(3, 4), b=torch.arange(5))
    weights._metadata = OrderedDict({'': {'version': 1}})
    path = tmp_path / 'ckpt.pth'
    torch.save({'meta': {'hub': recorder_cls('trained 5k iterations'), 'iter': 5000}, 'state_dict': weights}, path)
    (tmp_path / 'mods' / f'{module_name}.py').unlink()
    _unimportable(module_name)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the restricted loader is for
    loaded = restricted_load(path)
    assert module_name not in sys.modules  # nothing named in the file was imported
    obj = loaded['meta']['hub']
    assert isinstance(obj, Placeholder) and obj.qualname == f'{module_name}.Recorder'
    assert obj.state == {'note': 'trained 5k iterations', 'numbers': [1, 2.5]}  # recorded, not applied
    assert loaded['meta']['iter'] == 5000
    assert list(loaded['state_dict']) == ['w', 'b'] and isinstance(loaded['state_dict'], OrderedDict)
    assert loaded['state_dict']._metadata == weights._metadata
    for k, v in weights.items():
        assert torch.equal(loaded['state_dict'][k], v) and loaded['state_dict'][k].dtype == v.dtype
    assert find_placeholders(loaded) == {'meta.hub': f'{module_name}.Recorder'}


class _RunsCode:
    """Unpickling this with plain pickle would call ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize('legacy_format', [False, True])
def test_restricted_load_never_runs_reduce(tmp_path, legacy_format):
    marker = tmp_path / 'pwned'
    payloads = {
        'system': _RunsCode(os.system, (f'touch {marker}',)),
        'exec': _RunsCode(exec, (f'open({str(marker)!r}, "w").close()',)),
        'import': _RunsCode(importlib.import_module, ('antigravity',)),
    }
    weights = {'conv.weight': torch.randn(2, 3, 3, 3), 'conv.bias': torch.randn(2).half()}
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': weights, 'meta': payloads}, path, _use_new_zipfile_serialization=not legacy_format)
    with pytest.raises(HostilePickleError, match=r'evil.pth: refused: the pickle calls os.system, builtins.exec and '
                                                 r'importlib.import_module \(a checkpoint never needs to run code\)'):
        restricted_load(path)
    loaded = restricted_load(path, refuse_code=False)  # what was not run, recorded
    assert not marker.exists()
    assert 'antigravity' not in sys.modules
    for key, payload in payloads.items():
        obj = loaded['meta'][key]
        assert isinstance(obj, Placeholder)
        assert obj.qualname.endswith('.' + payload.func.__name__) and obj.args == payload.args
    for k, v in weights.items():
        assert torch.equal(loaded['state_dict'][k], v) and loaded['state_dict'][k].dtype == v.dtype


def test_restricted_load_keeps_plain_data(tmp_path):
    value = {'ints': [1, -2, 2 ** 70], 'float': 0.25, 'none': None, 'text': 'ü', 'bytes': b'\x00\xff',
             'tuple': (1, 'a'), 'set': {3, 4}, 'complex': 1 + 2j, 'size': torch.Size([2, 3]),
             'param': torch.nn.Parameter(torch.ones(2)), 'bf16': torch.ones(3, dtype=torch.bfloat16),
             'nested': OrderedDict(a=[torch.zeros(1), {'b': torch.ones(2, 2)[:, 0]}])}
    path = tmp_path / 'plain.pth'
    torch.save(value, path)
    loaded = restricted_load(path)
    assert not find_placeholders(loaded)
    for key in ('ints', 'float', 'none', 'text', 'bytes', 'tuple', 'set', 'complex', 'size'):
        assert loaded[key] == value[key] and type(loaded[key]) is type(value[key])
    assert torch.equal(loaded['param'], value['param']) and loaded['bf16'].dtype == torch.bfloat16
    assert torch.equal(loaded['nested']['a'][1]['b'], value['nested']['a'][1]['b'])


def test_restricted_load_on_the_mmengine_fixture():
    ckpt, _ = fixture_paths('rec')
    loaded = restricted_load(ckpt)
    found = find_placeholders(loaded)
    assert found['meta.seed'] == 'numpy._core.multiarray.scalar'
    assert {v for k, v in found.items() if k.startswith('message_hub.')} == {
        'mmengine.logging.history_buffer.HistoryBuffer'}
    assert 'mmengine' not in sys.modules
    assert all(isinstance(v, torch.Tensor) for v in loaded['state_dict'].values())
