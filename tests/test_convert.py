"""The official-checkpoint converter: key mapping, option inference, strict loading, errors."""

import pytest
import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY

from extracter.convert.common import ConversionError
from extracter.convert.official import convert_state_dict
from extracter.tools.convert_official import convert


def to_original_layout(arch: str, state: dict) -> dict:
    """Our key names -> the original code's (the inverse of the converter's mapping, written independently)."""
    out = {}
    for k, v in state.items():
        if arch == 'Extracter':
            k = (k.replace('dfe.', 'FE.', 1) if k.startswith('dfe.') else
                 k.replace('gde.SFE.', 'SR.SFE_GRAD.', 1) if k.startswith('gde.SFE.') else
                 'SR.' + k.split('.', 1)[1])
        else:
            k = k.replace('lte.', 'LTE.', 1) if k.startswith('lte.') else 'MainNet.' + k.split('.', 1)[1]
            for head in ('conv11_head', 'conv22_head', 'conv33_head'):
                k = k.replace(f'{head}.0.', f'{head}.')
        out[k] = v
    return out


@pytest.mark.parametrize('arch,kwargs,expected', [
    ('Extracter', dict(num_res_blocks='2+3+1+2', num_grad_blocks='1+2+0+1', n_feats=8, top_k=3, dfe_init='random'),
     dict(num_res_blocks='2+3+1+2', num_grad_blocks='1+2+0+1', n_feats=8, top_k=3)),
    ('TTSR', dict(num_res_blocks='3+1+2+1', n_feats=6, lte_init='random'), dict(num_res_blocks='3+1+2+1', n_feats=6)),
])
@pytest.mark.parametrize('wrapping', ['plain', 'nested_module'])
def test_round_trip_through_original_layout(tmp_path, arch, kwargs, expected, wrapping):
    net = ARCH_REGISTRY.get(arch)(**kwargs).eval()
    original = to_original_layout(arch, net.state_dict())
    if wrapping == 'nested_module':
        original = {'model': {f'module.{k}': v for k, v in original.items()}, 'epoch': 3}
    src = tmp_path / 'official.pt'
    torch.save(original, src)
    result = convert(str(src), str(tmp_path / 'converted.pth'))
    opts = yaml.safe_load((tmp_path / 'converted.yml').read_text())['network_g']
    assert {k: opts[k] for k in expected} == expected
    built = ARCH_REGISTRY.get(opts.pop('type'))(**opts).eval()
    built.load_state_dict(torch.load(tmp_path / 'converted.pth', weights_only=True)['params'], strict=True)
    lr, ref = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(built(lr, ref), net(lr, ref))
    assert result['network_g']['type'] == arch


def test_unknown_keys_are_named():
    net = ARCH_REGISTRY.get('TTSR')(num_res_blocks='1+1+1+1', n_feats=4, lte_init='random')
    original = to_original_layout('TTSR', net.state_dict())
    original['Discriminator.fc.weight'] = torch.zeros(1)
    with pytest.raises(ConversionError, match='Discriminator.fc.weight'):
        convert_state_dict(original)


def test_mismatched_shapes_or_missing_keys_are_errors():
    net = ARCH_REGISTRY.get('Extracter')(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=4,
                                          dfe_init='random')
    original = to_original_layout('Extracter', net.state_dict())
    del original['SR.fuse.weight']
    with pytest.raises(ConversionError, match='missing.*gde.fuse.weight'):
        convert_state_dict(original)


def test_ttsr_lte_copy_is_dropped_with_a_note():
    net = ARCH_REGISTRY.get('TTSR')(num_res_blocks='1+1+1+1', n_feats=4, lte_init='random')
    original = to_original_layout('TTSR', net.state_dict())
    original.update({k.replace('LTE.', 'LTE_copy.'): v for k, v in original.items() if k.startswith('LTE.')})
    _, _, notes = convert_state_dict(original)
    assert any('LTE_copy' in n for n in notes)


def test_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert(str(tmp_path / 'missing.pt'), str(tmp_path / 'o.pth'))
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(ConversionError, match='junk.pt'):
        convert(str(junk), str(tmp_path / 'o.pth'))
    other = tmp_path / 'other.pt'
    torch.save({'encoder.weight': torch.zeros(2)}, other)
    with pytest.raises(ConversionError, match='neither an EXTRACTER'):
        convert(str(other), str(tmp_path / 'o.pth'))
    (tmp_path / 'exists.pth').write_bytes(b'user data')
    with pytest.raises(FileExistsError, match='--overwrite'):
        convert(str(other), str(tmp_path / 'exists.pth'))
    assert (tmp_path / 'exists.pth').read_bytes() == b'user data'


@pytest.mark.parametrize('arch', ['Extracter', 'TTSR', 'DRCT'])
def test_a_checkpoint_already_in_our_format_is_refused_with_the_command_that_uses_it(tmp_path, arch):
    from tests.test_descriptor import TINY

    net = ARCH_REGISTRY.get(arch)(**TINY[arch])
    src = tmp_path / 'ours.pth'
    torch.save({'params_ema': net.state_dict(), 'params': net.state_dict()}, src)
    with pytest.raises(ConversionError, match=rf"ours.pth: already in this toolkit's format \({arch}.*use it as it is "
                                              r'\(python extracter/infer.py --weights .*ours.pth'):
        convert(str(src), str(tmp_path / 'o.pth'))
    partial = dict(net.state_dict())
    partial.pop(next(iter(partial)))
    torch.save({'params': partial}, src)
    if arch != 'DRCT':  # our RefSR key names (main.*, dfe.*/lte.*, gde.*): nothing to convert either
        with pytest.raises(ConversionError, match="has this toolkit's key names .*nothing to convert"):
            convert(str(src), str(tmp_path / 'o.pth'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ours.pth']  # nothing written
