"""Numerical parity with the original EXTRACTER and TTSR code.

The fixtures in tests/fixtures/parity were produced by running the original code (CPU, float32) on random weights
in the original key layout and real image crops; see tests/fixtures/parity/README.md. Here the weights go through
our converter and our architectures must reproduce the original outputs within 1e-5.
"""

from pathlib import Path

import pytest
import torch

from extracter.convert.official import build_network, convert_state_dict

FIXTURES = sorted((Path(__file__).parent / 'fixtures' / 'parity').glob('*.pt'))


def load_fixture(path: Path) -> dict:
    fixture = torch.load(path, map_location='cpu', weights_only=True)
    assert fixture['format'] == 'extracter-parity-v1'
    return fixture


@pytest.mark.skipif(not FIXTURES, reason='no parity fixtures in tests/fixtures/parity')
@pytest.mark.parametrize('search_mode', ['dense', 'chunked'])
@pytest.mark.parametrize('path', FIXTURES, ids=[p.stem for p in FIXTURES])
def test_outputs_match_original_code(path, search_mode):
    fixture = load_fixture(path)
    state = {k: v.float() for k, v in fixture['state_dict'].items()}
    ours, options, _ = convert_state_dict(state, source=path.name)
    args = fixture['args']
    assert options['type'] == fixture['arch']
    assert options['num_res_blocks'] == args['num_res_blocks'] and options['n_feats'] == args['n_feats']
    if fixture['arch'] == 'Extracter':
        assert options['num_grad_blocks'] == args['num_grad_blocks'] and options['top_k'] == args['top_k']
        options.update(window=args['unfold_kernel_size'], stride=args['stride'], padding=args['padding'])
    net = build_network(options).eval()
    net.load_state_dict(ours, strict=True)
    # the chunked search (bounded memory) must give the faithful result too; small blocks so that chunking happens
    net.set_search_mode(search_mode, chunk_size=50, key_chunk_size=37)

    inputs = {k: (v + 1) / 2 for k, v in fixture['inputs'].items()}  # the original works in [-1, 1]
    with torch.no_grad():
        out = net(inputs['lr'], inputs['ref'], lr_up=inputs['lrsr'], ref_downup=inputs['refsr'], return_aux=True)
    expected = fixture['outputs']
    torch.testing.assert_close(out['sr'] * 2 - 1, expected['sr'], rtol=0, atol=1e-5)
    assert len(out['S']) == len(expected['S'])
    for ours_s, theirs_s in zip(out['S'], expected['S']):
        torch.testing.assert_close(ours_s, theirs_s, rtol=0, atol=1e-5)
    for ours_t, theirs_t in zip(out['T_lv3'], expected.get('T_lv3', [])):
        torch.testing.assert_close(ours_t, theirs_t, rtol=0, atol=1e-5)
