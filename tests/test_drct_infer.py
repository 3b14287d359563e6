"""Single-image SR at test time: DRCT checkpoints with or without a YAML (network_g read off the weights; 'params' /
'params_ema' / bare layouts), infer.py without --ref on a real image, the original's pad-to-window and tile mode
through the engine's one tile loop, and what infer.py says to a reference-based model without a reference."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from extracter.archs.drct_arch import DRCT
from extracter.data import degradations as deg
from extracter.data.image_io import read_image
from extracter.infer import InferenceError, run
from extracter.inference.engine import run_sisr
from extracter.inference.network import NetworkLoadError, load_network
from extracter.inference.tiling import tile_loop
from extracter.registry import ARCH_REGISTRY
from extracter.utils.input_warning import InputWarning

# a small DRCT with the original's structure: 2 groups, window 4, unequal heads, stored masks (img_size 8)
DRCT_OPT = dict(type='DRCT', upscale=4, in_chans=3, img_size=8, window_size=4, depths=[6, 6], embed_dim=12,
                num_heads=[2, 4], gc=4, mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv')
EXT_OPT = dict(type='Extracter', num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, top_k=2,
               window=6, stride=2, padding=2, dfe_init='random')


def build(options: dict, seed: int = 0) -> torch.nn.Module:
    opt = dict(options)
    torch.manual_seed(seed)
    net = ARCH_REGISTRY.get(opt.pop('type'))(**opt).eval()
    with torch.no_grad():  # away from the init (zero biases, unit norms) so that every tensor matters
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net


@pytest.fixture(scope='module')
def drct_net():
    return build(DRCT_OPT)


@pytest.fixture(scope='module')
def lr_image(shared_data, tmp_path_factory):
    """A real LR photo of odd size (27 x 22): padding to the window is needed."""
    folder = tmp_path_factory.mktemp('lr')
    lr = Image.open(shared_data / 'refsr-pairs' / 'ttsr-demo' / 'lr.png').convert('RGB')
    lr.crop((20, 30, 47, 52)).save(folder / 'a.png')
    return folder / 'a.png'


@pytest.mark.parametrize('layout', ['params', 'params_ema', 'bare'])
def test_drct_checkpoint_loads_without_a_yaml(drct_net, tmp_path, layout):
    state = drct_net.state_dict()
    ckpt = state if layout == 'bare' else {layout: state}
    if layout == 'params_ema':  # EMA weights preferred: 'params' holds other weights
        ckpt['params'] = build(DRCT_OPT, seed=1).state_dict()
    torch.save(ckpt, tmp_path / 'DRCT.pth')
    net = load_network(str(tmp_path / 'DRCT.pth'))
    assert type(net) is DRCT and not net.training
    for key, value in state.items():
        assert torch.equal(net.state_dict()[key], value), key
    x = torch.rand(1, 3, 8, 12)
    with torch.no_grad():
        assert torch.equal(net(x), drct_net(x))


def test_drct_checkpoint_with_a_yaml_and_a_wrong_yaml(drct_net, tmp_path):
    torch.save({'params': drct_net.state_dict()}, tmp_path / 'DRCT.pth')
    (tmp_path / 'DRCT.yml').write_text(yaml.safe_dump({'network_g': DRCT_OPT}))
    assert type(load_network(str(tmp_path / 'DRCT.pth'))) is DRCT
    (tmp_path / 'DRCT.yml').write_text(yaml.safe_dump({'network_g': dict(DRCT_OPT, embed_dim=16)}))
    with pytest.raises(NetworkLoadError, match=r'DRCT.pth does not match DRCT as configured: .*another shape'):
        load_network(str(tmp_path / 'DRCT.pth'))


def test_a_foreign_state_dict_without_yaml_still_asks_for_options(tmp_path):
    torch.save({'params': {'conv.weight': torch.zeros(2, 3, 3, 3)}}, tmp_path / 'x.pth')
    with pytest.raises(FileNotFoundError, match=r'network options not found: .*x.yml \(give --opt'):
        load_network(str(tmp_path / 'x.pth'))


def test_infer_without_ref_runs_single_image_sr_on_a_real_image(drct_net, lr_image, tmp_path):
    torch.save({'params_ema': drct_net.state_dict()}, tmp_path / 'DRCT.pth')
    out = tmp_path / 'out'
    run(['--weights', str(tmp_path / 'DRCT.pth'), '--lr', str(lr_image), '-o', str(out)])
    sr = np.asarray(Image.open(out / 'a_sr.png'))
    assert sr.shape == (88, 108, 3)  # 4 x (22, 27)
    assert np.asarray(Image.open(out / 'a_bicubic.png')).shape == sr.shape
    compare = Image.open(out / 'a_compare.png')
    assert compare.size[0] > 2 * 108 and compare.size[1] >= 88  # bicubic | SR, labelled
    lq = deg.to_tensor(read_image(lr_image))[None]
    with torch.no_grad():
        expected = drct_net.forward_padded(lq).clamp(0, 1)  # the original's test: reflect-pad, run, crop
    assert np.array_equal(sr, (expected[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    # tiled through the same CLI
    run(['--weights', str(tmp_path / 'DRCT.pth'), '--lr', str(lr_image), '-o', str(tmp_path / 't'), '--tile', '8',
         '--tile-pad', '16'])
    tiled = np.asarray(Image.open(tmp_path / 't' / 'a_sr.png')).astype(int)
    assert np.abs(tiled - sr.astype(int)).max() <= 1  # 16 pixels of context cover this network's reach


def test_infer_refuses_reference_flags_for_drct(drct_net, lr_image, tmp_path):
    torch.save({'params': drct_net.state_dict()}, tmp_path / 'DRCT.pth')
    base = ['--weights', str(tmp_path / 'DRCT.pth'), '--lr', str(lr_image), '-o', str(tmp_path / 'o')]
    for extra in (['--ref', str(lr_image)], ['--self-ref'], ['--texture-map'], ['--max-memory', '1G']):
        with pytest.raises(InferenceError, match=f'DRCT is a single-image network: .*leave out {extra[0]}'):
            run(base + extra)
    assert not (tmp_path / 'o').exists()


def test_reference_model_without_ref_says_what_to_do(lr_image, tmp_path):
    torch.save({'params': build(EXT_OPT).state_dict()}, tmp_path / 'ext.pth')
    (tmp_path / 'ext.yml').write_text(yaml.safe_dump({'network_g': EXT_OPT}))
    base = ['--weights', str(tmp_path / 'ext.pth'), '--lr', str(lr_image), '-o', str(tmp_path / 'o')]
    with pytest.raises(InferenceError, match=r'give a reference with --ref .*--self-ref .*single-image model'):
        run(base)
    run(base + ['--self-ref'])  # the self-reference protocol: the upsampled LR as its own reference
    assert np.asarray(Image.open(tmp_path / 'o' / 'a_sr.png')).shape == (88, 108, 3)
    with pytest.raises(InferenceError, match='--self-ref uses no reference image'):
        run(base + ['--self-ref', '--ref', str(lr_image), '--overwrite'])


def test_run_sisr_pads_to_the_window_and_crops_back(drct_net):
    x = torch.rand(2, 3, 9, 14)
    with torch.no_grad():
        out = run_sisr(drct_net, x)
        assert out.shape == (2, 3, 36, 56)
        assert torch.equal(out, drct_net.forward_padded(x).clamp(0, 1))
    with pytest.raises(ValueError, match='lr must be a batch'):
        run_sisr(drct_net, x[0])


def _distance_to_seams(size: int, seams) -> torch.Tensor:
    """LR distance of every x4 output row (or column) to the nearest tile border."""
    pos = torch.arange(4 * size) / 4.0
    return torch.stack([(pos - s).abs() for s in seams]).amin(0)


def test_tiled_equals_untiled_away_from_tile_borders(drct_net):
    """The engine's one tile loop for SISR: 48x48 LR, tiles of 16 (borders at 16 and 32), windows of 4 (tiles sit on
    the untiled window grid). With 4 LR pixels of context (less than this 2-group network's reach of about 8), tiled
    equals untiled within 1e-4 from 2 LR pixels away from a tile border; at the borders they differ by up to about
    0.03 (measured 2.6e-2, 7 grey levels; 7.7e-5 at 1-2 pixels, 2e-7 from 4 pixels). run_sisr raises a smaller
    tile_pad to DRCT's floor (``min_tile_pad``, 16) with a warning, and with that context tiled equals untiled
    everywhere."""
    torch.manual_seed(5)
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        full = run_sisr(drct_net, x)
        short = tile_loop(x, 4, 16, 4, 4, lambda y0, y1, x0, x1: drct_net(x[:, :, y0:y1, x0:x1])).clamp(0, 1)
        with pytest.warns(InputWarning, match='tile_pad 4 is below what DRCT needs'):
            raised = run_sisr(drct_net, x, tile={'tile_size': 16, 'tile_pad': 4})
    diff = (full - short).abs()[0].amax(0)  # [4h, 4w]
    d = _distance_to_seams(48, (16, 32))
    dist = torch.minimum(d[:, None], d[None, :])
    away, at_borders = float(diff[dist >= 2].max()), float(diff[dist < 1].max())
    assert away < 1e-4, f'2+ LR pixels from the tile borders: max |tiled - untiled| = {away:.2e}'
    assert 1e-3 < at_borders < 0.1, f'at the tile borders: max |tiled - untiled| = {at_borders:.2e}'
    assert float(diff[dist >= 4].max()) < 1e-6
    assert float((full - raised).abs().max()) < 1e-6
