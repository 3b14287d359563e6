"""C2-Matching: parity with the original code (tests/fixtures/parity_c2matching, made by running the original on
CPU with its DCN op over torchvision's), the converter's bad input, shapes and the engine's handling of references
of other sizes."""

from pathlib import Path

import pytest
import torch

from extracter.archs.c2_matching.correspondence import correspondence, match_one
from extracter.archs.c2_matching_arch import C2Matching
from extracter.archs.descriptor import descriptor_of
from extracter.archs.vgg import InputNorm, vgg19_param_shapes
from extracter.convert.c2matching import EXTRACTOR, RESTORATION, convert_c2matching
from extracter.convert.common import ConversionError
from tests.c2m_parity_weights import checksums, parity_weights

pytestmark = pytest.mark.usefixtures('one_thread')

FIXTURE = Path(__file__).parent / 'fixtures' / 'parity_c2matching' / 'c2matching.pt'


def canonical_from(vgg_net: dict) -> dict:
    """The canonical VGG-19 file's layout from the original net_map's ``vgg.vgg_net.<name>`` weights (torchvision
    indices), with ImageNet mean/std as ``input_norm`` (what ``prepare_vgg19.py --source torchvision`` writes)."""
    names = ['conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1', 'conv2_1', 'relu2_1', 'conv2_2', 'relu2_2',
             'pool2', 'conv3_1']
    out = {k: torch.zeros(shape) for k, shape in vgg19_param_shapes().items()}  # the layers past relu3_1: unused
    out.update((f'features.{names.index(k.split(".")[2])}.{k.split(".")[3]}', v) for k, v in vgg_net.items())
    norm = InputNorm()
    out['input_norm.weight'], out['input_norm.bias'] = norm.weight.data, norm.bias.data
    return out


def original_parts(fixture: dict):
    """The original's three state dicts, regenerated from the fixture's seeds and checked against its checksums."""
    states = {}
    for name, info in fixture['weights'].items():
        state = parity_weights(info['shapes'], info['seed'])
        got = checksums(state)
        for key, (s, s2) in info['checksums'].items():
            assert got[key] == pytest.approx((s, s2), rel=1e-12), f'{name}.{key}: the weight generator changed'
        states[name] = state
    extractor = dict(states['net_extractor'])
    for branch in ('feature_extraction_image1', 'feature_extraction_image2'):
        extractor[f'{branch}.mean'] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        extractor[f'{branch}.std'] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    vgg_net = {k: v for k, v in states['net_map'].items() if k.startswith('vgg.vgg_net.')}
    return states['net_g'], extractor, canonical_from(vgg_net)


@pytest.fixture(scope='module')
def converted():
    fixture = torch.load(FIXTURE, map_location='cpu', weights_only=True)
    assert fixture['format'] == 'c2matching-parity-v1'
    net_g, extractor, vgg19 = original_parts(fixture)
    state, options, _ = convert_c2matching({RESTORATION: (net_g, 'net_g.pth'), EXTRACTOR: (extractor, 'ext.pth')},
                                           vgg19)
    assert {k: options[k] for k in fixture['config']} == fixture['config']
    opts = {k: v for k, v in options.items() if k != 'type'}
    net = C2Matching(**opts).eval()
    net.load_state_dict(state, strict=True)
    return fixture, net


def test_outputs_match_original_code(converted):
    fixture, net = converted
    inp, out = fixture['inputs'], fixture['outputs']
    with torch.no_grad():
        sr = net(inp['lr'], inp['ref'], lr_up=inp['lr_up'])
    assert (sr - out['sr']).abs().max() < 1e-5
    assert sr.max() > 1  # unclamped, as the original


def test_correspondence_matches_original(converted):
    fixture, net = converted
    inp, out = fixture['inputs'], fixture['outputs']
    with torch.no_grad():
        f_in = net.search_features(inp['lr_up'])
        f_ref = net.encode_search_keys(inp['ref'])
        idx, val = match_one(f_in[0], f_ref[0])
        scores, index = correspondence(f_in, f_ref)
    assert torch.equal(idx, out['max_idx_0'].view_as(idx))
    assert (val - out['max_val_0']).abs().max() < 1e-5
    # the whole-grid form: the padded bottom/right rows and columns point at themselves (zero flow)
    h, w = f_in.shape[-2:]
    grid = index.view(-1, h, w)
    assert grid[0, -1, 5] == (h - 1) * w + 5 and grid[0, 4, -2] == 4 * w + w - 2
    assert float(scores.view(-1, h, w)[0, -2:].abs().max()) == 0


def test_run_refsr_equals_forward_and_pads_other_reference_sizes(converted):
    from extracter.inference import run_refsr

    fixture, net = converted
    inp, out = fixture['inputs'], fixture['outputs']
    sr = run_refsr(net, inp['lr'], inp['ref'], lr_up=inp['lr_up'])
    assert (sr - out['sr']).abs().max() < 1e-5
    # a smaller reference: zero-padded with the LR to a common size, the result cropped back to 4x the LR
    small = run_refsr(net, inp['lr'][:1], inp['ref'][:1, :, :40, :36])
    assert small.shape == (1, 3, 48, 64) and torch.isfinite(small).all()


def test_converter_refuses_mismatched_parts(converted):
    fixture, _ = converted
    net_g, extractor, vgg19 = original_parts(fixture)
    with pytest.raises(ConversionError, match='contrastive extractor is missing.*--extractor'):
        convert_c2matching({RESTORATION: (net_g, 'net_g.pth')}, vgg19)
    with pytest.raises(ConversionError, match='--vgg19'):
        convert_c2matching({RESTORATION: (net_g, 'g.pth'), EXTRACTOR: (extractor, 'e.pth')}, None)
    bad = dict(extractor)
    bad['feature_extraction_image2.std'] = torch.ones(1, 3, 1, 1)
    with pytest.raises(ConversionError, match='e.pth: feature_extraction_image2.std'):
        convert_c2matching({RESTORATION: (net_g, 'g.pth'), EXTRACTOR: (bad, 'e.pth')}, vgg19)


def test_descriptor_round_trip():
    net = C2Matching(ngf=16, n_blocks=2, groups=4, vgg_init='random')
    d = descriptor_of(net)
    assert d.own_search and d.reference_size == 'output'
    assert d.detect(net.state_dict()) == {'type': 'C2Matching', 'ngf': 16, 'n_blocks': 2, 'groups': 4}
    assert d.detect({k.replace('contras.', 'other.'): v for k, v in net.state_dict().items()}) is None


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    net = C2Matching(ngf=16, n_blocks=1, groups=8, vgg_init='random').eval()
    for name, p in net.named_parameters():  # non-zero learned offsets, so the tiles' offsets are exercised
        if 'conv_offset_mask' in name:
            torch.nn.init.uniform_(p, -0.02, 0.02)
    lr = torch.rand(1, 3, 28, 32)
    ref = torch.rand(1, 3, 112, 128)
    return net, lr, ref


def test_tiled_equals_untiled(tiny):
    from extracter.archs.refsr_base import make_lr_up
    from extracter.inference import run_refsr
    from extracter.inference.tiling import tiled_forward

    net, lr, ref = tiny
    whole = run_refsr(net, lr, ref)
    tiled = run_refsr(net, lr, ref, tile={'tile_size': 16, 'tile_pad': 32})  # through the engine, with margin
    assert whole.shape == tiled.shape == (1, 3, 112, 128)
    assert float((whole - tiled).abs().max()) < 1e-5
    from extracter.utils.input_warning import InputWarning

    with pytest.warns(InputWarning, match='using tile_pad 12'):  # raised to the documented floor
        at_floor = run_refsr(net, lr, ref, tile={'tile_size': 16, 'tile_pad': 0})
    assert float((whole - at_floor).abs().max()) < 1e-4
    # small tiles with the context this tiny net reaches (the descriptor's floor is for the released depth), and
    # too little context: then the tiles differ (the test can fail)
    with torch.no_grad():
        enc, up = net.encode_reference(ref), make_lr_up(lr)
        assert float((whole - tiled_forward(net, lr, up, enc, 16, 12)).abs().max()) < 1e-4
        assert float((whole - tiled_forward(net, lr, up, enc, 16, 2)).abs().max()) > 1e-4


def test_budget_plans_tiles_and_search_blocks(tiny):
    from extracter.inference import run_refsr
    from extracter.inference.memory_plan import MemoryBudgetError, own_search_estimate, plan_own_search

    net, lr, ref = tiny
    whole = run_refsr(net, lr, ref)
    # a 1024 px output of the released size: the untiled run does not fit 2 GB, tiles and smaller correlation
    # blocks do
    released = C2Matching(vgg_init='random')
    default_block = released.default_search_spec.key_chunk_size
    untiled = own_search_estimate(released, (256, 256), (1024, 1024), default_block)['total']
    plan = plan_own_search(released, (256, 256), (1024, 1024), '2G', tile_pad=16)
    assert untiled > plan.budget >= plan.estimate and plan.tile_size is not None and plan.tile_pad == 16
    tighter = plan_own_search(released, (256, 256), (1024, 1024), '1.5G', tile_pad=16)
    assert tighter.key_chunk_size < default_block and tighter.tile_size < plan.tile_size
    # through run_refsr: a budget the untiled run fits runs untiled, with the same result
    sr, plan = run_refsr(net, lr, ref, max_memory='1G', return_plan=True)
    assert plan.tile_size is None and plan.estimate <= 2 ** 30
    assert float((whole - sr).abs().max()) < 1e-5
    with pytest.raises(MemoryBudgetError, match='C2Matching'):
        run_refsr(net, lr, ref, max_memory='1M')


def test_refuses_what_does_not_apply(tiny):
    from extracter.inference import run_refsr

    net, lr, ref = tiny
    with pytest.raises(ValueError, match="search mode 'approximate' does not apply to C2Matching"):
        run_refsr(net, lr, ref, search_mode='approximate')
    with pytest.raises(ValueError, match='one reference per image'):
        run_refsr(net, lr, [ref, ref])
    with pytest.raises(ValueError, match='fixed correspondence'):
        run_refsr(net, lr, ref, search_geometry=(6, 2, 2))


def test_infer_runs_a_converted_checkpoint_and_refuses_an_original_one(tmp_path, tiny, capsys):
    import numpy as np
    from PIL import Image

    from extracter import infer

    net, lr, ref = tiny
    weights = tmp_path / 'c2.pth'
    torch.save({'params': net.state_dict()}, weights)  # no YAML: the options are read off the weights
    Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / 'lr.png')
    Image.fromarray((ref[0, :, :100, :90].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / 'ref.png')
    args = ['--lr', str(tmp_path / 'lr.png'), '--ref', str(tmp_path / 'ref.png'), '--tile', '16', '--tile-pad', '16']
    assert infer.main(['--weights', str(weights), '-o', str(tmp_path / 'out'), *args]) == 0
    sr = Image.open(tmp_path / 'out' / 'lr_sr.png')
    assert sr.size == (4 * lr.shape[-1], 4 * lr.shape[-2])
    original = {k[len('restoration.'):]: v for k, v in net.state_dict().items() if k.startswith('restoration.')}
    torch.save(original, tmp_path / 'c2_matching_restoration.pth')
    assert infer.main(['--weights', str(tmp_path / 'c2_matching_restoration.pth'), '-o', str(tmp_path / 'o2'),
                       *args]) == 2
    err = capsys.readouterr().err
    assert 'original C2-Matching (its restoration net) code' in err and '--extractor' in err


def test_convert_official_cli_reads_the_original_files(tmp_path, converted, capsys):
    from extracter.tools import convert_official

    fixture, net = converted
    net_g, extractor, vgg19 = original_parts(fixture)
    for name, state in (('g.pth', net_g), ('e.pth', extractor), ('vgg.pth', vgg19)):
        torch.save(state, tmp_path / name)
    out = tmp_path / 'c2.pth'
    # the parts in either order, the VGG-19 as the canonical file
    argv = [str(tmp_path / 'e.pth'), '--extractor', str(tmp_path / 'g.pth'), '--vgg19', str(tmp_path / 'vgg.pth'),
            '-o', str(out)]
    assert convert_official.main(argv) == 0
    state = torch.load(out, weights_only=True)['params']
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert 'type: C2Matching' in (tmp_path / 'c2.yml').read_text()
    # the restoration net alone: refused, naming what is missing and the command
    assert convert_official.main([str(tmp_path / 'g.pth'), '--vgg19', str(tmp_path / 'vgg.pth'), '-o',
                                  str(tmp_path / 'x.pth')]) == 2
    assert 'contrastive extractor is missing' in capsys.readouterr().err
    # the extractor alone (a student or teacher file): a ContrasExtractorSep checkpoint, usable as contras_path
    assert convert_official.main([str(tmp_path / 'e.pth'), '-o', str(tmp_path / 'student.pth')]) == 0
    student = tmp_path / 'student.pth'
    again = C2Matching(ngf=16, n_blocks=2, groups=8, vgg_init='random', contras_path=str(student))
    assert all(torch.equal(v, net.contras.state_dict()[k]) for k, v in again.contras.state_dict().items())


def test_reference_keys_in_tiles_equal_untiled(tiny):
    from extracter.archs.c2_matching_arch import encode_tiled

    net, _, _ = tiny
    x = torch.rand(1, 3, 136, 104)
    with torch.no_grad():
        whole = net.contras.feature_extraction_image2(x)
        tiled = encode_tiled(net.contras.feature_extraction_image2, x, 32)
    assert tiled.shape == whole.shape == (1, 256, 34, 26)
    assert float((whole - tiled).abs().max()) < 1e-5


@pytest.mark.parametrize('hw, origin, window', [((37, 29), None, None), ((40, 33), (5, 3), (17, 12)),
                                                  ((24, 24), (0, 0), (11, 24))])
def test_aggregation_in_bands_equals_one_call(hw, origin, window):
    """DynAgg in bands of rows (inference's memory bound) equals the single deformable convolution with offsets that
    reach across the map: on the whole map (learned offsets from random weights: each band's offset convolution
    needs its row of context above and below), and on a tile's window whose size differs from the map's by an odd
    number (widened by a row/column of zero offsets, never the map copied; the learned offsets position-independent,
    so that the window's equal the whole map's at its place)."""
    from extracter.archs.c2_matching.restoration import DynAgg, band_rows

    torch.manual_seed(0)
    agg = DynAgg(16, 8)
    if window is None:
        torch.nn.init.uniform_(agg.conv_offset_mask.weight, -0.3, 0.3)
    else:
        torch.nn.init.uniform_(agg.conv_offset_mask.bias, -0.5, 0.5)
    h, w = hw
    ref, feat, pre = torch.rand(1, 16, h, w), torch.rand(1, 16, h, w), torch.randn(1, 9, h, w, 2) * 6
    with torch.no_grad():
        expect = agg(ref, feat, pre)
        if window is not None:
            (y, x), (th, tw) = origin, window
            expect, feat, pre = (t[:, :, y:y + th, x:x + tw] for t in (expect, feat, pre))
        assert band_rows(16, 8, feat.size(-1), 1) == 1
        three_rows = 3 * 4 * (12 * 16 + 27 * 8 + 72 * 8 + 9 * 8) * feat.size(-1)
        assert band_rows(16, 8, feat.size(-1), three_rows) == 3
        for band_bytes in (1, three_rows, None):
            got = agg(ref, feat, pre, origin, band_bytes)
            assert got.shape == expect.shape
            assert float((got - expect).abs().max()) < 1e-5, band_bytes
