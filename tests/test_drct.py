"""DRCT (Hsu et al., arXiv:2404.00722): numerical parity with the original code, the original's state-dict layout,
options read off a state dict, shapes at x2/x3/x4 and any input size.

The fixtures in tests/fixtures/parity_drct were produced by running the original ``drct/archs/DRCT_arch.py`` (CPU,
float32) on random weights and real image crops; see tests/fixtures/parity_drct/README.md.
"""

from pathlib import Path

import pytest
import torch
import yaml

from extracter.archs.drct_arch import DRCT, group_heads, read_drct_options, shifted_window_mask
from extracter.registry import ARCH_REGISTRY

FIXTURES = sorted((Path(__file__).parent / 'fixtures' / 'parity_drct').glob('*.pt'))

# network_g of the original's options/test/DRCT_SRx4.yml, verbatim
ORIGINAL_YAML = """
network_g:
  type: DRCT
  upscale: 4
  in_chans: 3
  img_size: 64
  window_size: 16
  compress_ratio: 3
  squeeze_factor: 30
  conv_scale: 0.01
  overlap_ratio: 0.5
  img_range: 1.
  depths: [6, 6, 6, 6, 6, 6]
  embed_dim: 180
  num_heads: [6, 6, 6, 6, 6, 6]
  mlp_ratio: 2
  upsampler: 'pixelshuffle'
  resi_connection: '1conv'
"""
RELEASED = {'upscale': 4, 'in_chans': 3, 'img_size': 64, 'window_size': 16, 'img_range': 1.0, 'embed_dim': 180,
            'mlp_ratio': 2, 'upsampler': 'pixelshuffle', 'resi_connection': '1conv'}
DRCT_BASE = dict(RELEASED, depths=[6] * 6, num_heads=[6] * 6)
DRCT_L = dict(RELEASED, depths=[6] * 12, num_heads=[6] * 12)  # options/test/DRCT-L_SRx4_ImageNet-pretrain.yml
TINY = dict(upscale=2, img_size=16, window_size=8, embed_dim=24, gc=10, depths=[2, 3], num_heads=[4, 6], mlp_ratio=2,
            upsampler='pixelshuffle')


def build(options: dict) -> DRCT:
    return ARCH_REGISTRY.get(options.get('type', 'DRCT'))(**{k: v for k, v in options.items() if k != 'type'}).eval()


def load_fixture(path: Path) -> dict:
    fixture = torch.load(path, map_location='cpu', weights_only=True)
    assert fixture['format'] == 'drct-parity-v1' and fixture['arch'] == 'DRCT'
    return fixture


def randomise(net: DRCT, seed: int = 0) -> DRCT:
    """Non-trivial weights (the default init zeroes biases and LayerNorm shifts)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.skipif(not FIXTURES, reason='no DRCT parity fixtures in tests/fixtures/parity_drct')
@pytest.mark.parametrize('path', FIXTURES, ids=[p.stem for p in FIXTURES])
def test_outputs_match_original_code(path):
    fixture = load_fixture(path)
    net = build(fixture['network_g'])
    state = fixture['state_dict']  # the original's keys; float16 / int16 storage, copied into float32 / int64
    assert list(net.state_dict()) == list(state)
    net.load_state_dict(state, strict=True)
    for key, value in net.state_dict().items():  # buffers too: our index and masks equal the original's
        assert torch.equal(value, state[key].to(value.dtype)), key
    with torch.no_grad():
        # odd sizes: reflect-pad to the window multiple and crop back, as the original's test code does
        sr = net.forward_padded(fixture['inputs']['lr'])
        # exactly img_size: the stored attn_mask buffers are used
        sr_native = net(fixture['inputs']['lr_native'])
    torch.testing.assert_close(sr, fixture['outputs']['sr'], rtol=0, atol=1e-5)
    torch.testing.assert_close(sr_native, fixture['outputs']['sr_native'], rtol=0, atol=1e-5)


@pytest.mark.skipif(not FIXTURES, reason='no DRCT parity fixtures in tests/fixtures/parity_drct')
def test_fixture_detects_wrong_attention():
    """The parity fixture is sensitive to the parts of the attention that are easy to get wrong."""
    fixture = load_fixture(FIXTURES[0])
    net = build(fixture['network_g'])
    net.load_state_dict(fixture['state_dict'], strict=True)
    lr, expected = fixture['inputs']['lr_native'], fixture['outputs']['sr_native']
    layer = net.layers[0].swin2
    assert layer.shift > 0 and layer.attn_mask is not None
    with torch.no_grad():
        layer.attn_mask.zero_()  # no shifted-window masking
        no_mask = net(lr)
        net.load_state_dict(fixture['state_dict'], strict=True)
        layer.attn.relative_position_bias_table.zero_()  # no relative position bias
        no_bias = net(lr)
    # one layer's mask or bias table alone moves the output by 50x the parity tolerance or more
    assert (no_mask - expected).abs().max() > 5e-4
    assert (no_bias - expected).abs().max() > 5e-4


@pytest.mark.skipif(not FIXTURES, reason='no DRCT parity fixtures in tests/fixtures/parity_drct')
@pytest.mark.parametrize('path', FIXTURES, ids=[p.stem for p in FIXTURES])
def test_options_from_fixture_state_dict(path):
    fixture = load_fixture(path)
    original = fixture['network_g']
    options = DRCT.descriptor.detect({'params_ema': fixture['state_dict']})
    for key in ('type', 'upscale', 'in_chans', 'img_size', 'window_size', 'embed_dim', 'num_heads', 'gc', 'mlp_ratio',
                'upsampler', 'resi_connection'):
        assert options[key] == original[key], key
    assert len(options['depths']) == len(original['depths'])
    net = build(options)  # depths differ ([6] per group): only the training-time drop-path rates depend on them
    net.load_state_dict(fixture['state_dict'], strict=True)
    with torch.no_grad():
        sr = net.forward_padded(fixture['inputs']['lr'])
    torch.testing.assert_close(sr, fixture['outputs']['sr'], rtol=0, atol=1e-5)


ROUND_TRIP = {
    'DRCT x4': DRCT_BASE,
    'DRCT-L x4': DRCT_L,
    'DRCT x3': dict(DRCT_BASE, upscale=3),
    'DRCT x2': dict(DRCT_BASE, upscale=2),
    'tiny x2 [2,3]': TINY,
    'tiny x4 [2,2,2]': dict(TINY, upscale=4, window_size=4, embed_dim=30, gc=8, depths=[2, 2, 2], num_heads=[3, 2, 3]),
    'tiny x3 no shift': dict(TINY, upscale=3, img_size=8, embed_dim=16, gc=8, depths=[1], num_heads=[2]),
    'tiny x8 ape identity': dict(TINY, upscale=8, ape=True, resi_connection='identity', mlp_ratio=4),
    'tiny no patch_norm/qkv_bias, 1 channel': dict(TINY, patch_norm=False, qkv_bias=False, in_chans=1),
    'tiny non-square img_size': dict(TINY, img_size=(16, 32)),
}


@pytest.mark.parametrize('options', ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_options_from_state_dict_round_trip(options):
    net = build(options)
    state = net.state_dict()
    inferred = DRCT.descriptor.detect(state)
    expected = {'upscale': 2, 'in_chans': 3, 'gc': 32, 'qkv_bias': True, 'ape': False, 'patch_norm': True,
                'resi_connection': '1conv', **options}
    img_size = expected['img_size']
    expected['img_size'] = list(img_size) if isinstance(img_size, tuple) else img_size
    for key in ('upscale', 'in_chans', 'img_size', 'window_size', 'embed_dim', 'num_heads', 'gc', 'mlp_ratio',
                'qkv_bias', 'ape', 'patch_norm', 'upsampler', 'resi_connection'):
        assert inferred[key] == expected[key], key
    assert inferred['depths'] == [6] * len(options['depths'])
    rebuilt = build(inferred)
    rebuilt.load_state_dict(state, strict=True)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}


def test_options_accept_checkpoint_wrappers():
    state = build(TINY).state_dict()
    bare = DRCT.descriptor.detect(state)
    assert bare is not None
    assert DRCT.descriptor.detect({'params': state}) == bare
    assert DRCT.descriptor.detect({'params_ema': state, 'params': {}}) == bare
    assert DRCT.descriptor.detect({f'module.{k}': v for k, v in state.items()}) == bare
    assert DRCT.descriptor.detect({'conv.weight': torch.zeros(1)}) is None
    with pytest.raises(ValueError, match='not a DRCT state dict'):  # the reader says why
        read_drct_options({'conv.weight': torch.zeros(1)})


def test_original_yaml_block_builds_released_model():
    """An original network_g block works unchanged; parameter counts are the original code's (run at c0a8b51)."""
    options = yaml.safe_load(ORIGINAL_YAML)['network_g']
    net = build(options)
    assert type(net) is DRCT
    assert sum(p.numel() for p in net.parameters()) == 14_139_579  # README: "14.13M"
    assert len(net.layers) == 6 and net.pad_multiple() == 16
    keys = net.state_dict().keys()
    assert 'layers.5.swin5.adjust5.weight' not in keys and 'layers.5.adjust5.weight' in keys
    assert 'layers.0.swin2.attn_mask' in keys and 'layers.0.swin1.attn_mask' not in keys
    assert net.state_dict()['layers.0.swin2.attn_mask'].shape == (16, 256, 256)
    assert [net.layers[0].swin1.attn.num_heads] + [getattr(net.layers[0], f'swin{j}').attn.num_heads
                                                    for j in range(2, 6)] == [6, 4, 2, 6, 4]


def test_strict_loading_rejects_other_layouts():
    net = build(TINY)
    state = randomise(build(TINY)).state_dict()
    with pytest.raises(RuntimeError, match='Unexpected key'):
        net.load_state_dict({**state, 'layers.0.swin1.extra.weight': torch.zeros(1)}, strict=True)
    with pytest.raises(RuntimeError, match='Missing key'):
        net.load_state_dict({k: v for k, v in state.items() if k != 'layers.1.adjust3.bias'}, strict=True)
    with pytest.raises(RuntimeError, match='size mismatch'):
        net.load_state_dict(build(dict(TINY, gc=12)).state_dict(), strict=True)  # another growth rate
    with pytest.raises(RuntimeError, match='size mismatch'):
        net.load_state_dict(build(dict(TINY, window_size=4)).state_dict(), strict=True)  # another window
    with pytest.raises(RuntimeError):
        net.load_state_dict(build(dict(TINY, upscale=3)).state_dict(), strict=True)  # another upsampler
    net.load_state_dict(state, strict=True)
    assert torch.equal(net.conv_last.weight, state['conv_last.weight'])


@pytest.mark.parametrize('upscale', [2, 3, 4])
@pytest.mark.parametrize('size', [(16, 16), (17, 23), (9, 30)])
def test_shapes_any_size(upscale, size):
    net = randomise(build(dict(TINY, upscale=upscale)))
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = net.forward_padded(x)
    assert out.shape == (2, 3, size[0] * upscale, size[1] * upscale)
    assert torch.isfinite(out).all()
    # the padded path equals forward() on the reflect-padded input, cropped
    m = net.pad_multiple()
    padded = torch.nn.functional.pad(x, (0, (-size[1]) % m, 0, (-size[0]) % m), mode='reflect')
    with torch.no_grad():
        torch.testing.assert_close(out, net(padded)[..., :out.shape[-2], :out.shape[-1]], rtol=0, atol=0)


def test_forward_requires_window_multiple_and_images_are_independent():
    net = randomise(build(TINY))
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 3, 20, 24))  # not a multiple of the window 8: use forward_padded
    x = torch.rand(3, 3, 24, 16)
    with torch.no_grad():
        batch = net(x)
        single = net(x[1:2])
    torch.testing.assert_close(batch[1:2], single, rtol=0, atol=1e-5)


def test_stored_mask_equals_recomputed_mask():
    """At img_size the stored buffer is used, elsewhere the mask is recomputed: both are the same function."""
    net = build(TINY)
    layer = net.layers[0].swin4
    assert torch.equal(layer.attn_mask, shifted_window_mask((16, 16), 8, 4))
    assert shifted_window_mask((24, 32), 8, 4).shape == (12, 64, 64)


def test_heads_and_invalid_configurations():
    assert group_heads(180, 32, 6) == [6, 4, 2, 6, 4]
    assert group_heads(24, 10, 6) == [6, 2, 4, 6, 2]
    with pytest.raises(ValueError, match='do not divide'):
        build(dict(TINY, embed_dim=30, gc=8, num_heads=[5, 5]))  # 46 channels, 4 heads: the original fails too
    with pytest.raises(ValueError, match='upsampler'):
        DRCT(window_size=8)  # the original's default upsampler '' has no reconstruction
    with pytest.raises(ValueError, match='multiple of window_size'):
        DRCT(upsampler='pixelshuffle')  # default img_size 64 with window 7: fails in the original too
    with pytest.raises(ValueError, match='resi_connection'):
        build(dict(TINY, resi_connection='3conv'))
    with pytest.raises(TypeError, match='window_sizes'):
        build(dict(TINY, window_sizes=8))  # a misspelt option is an error (the original ignores it)


def test_pad_multiple_when_window_exceeds_img_size():
    net = build(dict(TINY, img_size=8, window_size=16))  # Swin layers shrink the window to 8, no shift
    assert net.layers[0].swin2.window == 8 and net.layers[0].swin2.shift == 0
    assert net.pad_multiple() == 16
    with torch.no_grad():
        assert net.forward_padded(torch.rand(1, 3, 10, 12)).shape == (1, 3, 20, 24)


def test_eval_is_deterministic_and_train_mode_uses_drop_path():
    net = randomise(build(dict(TINY, drop_path_rate=0.5)))
    rates = [getattr(g, f'swin{j}').drop_path for g in net.layers for j in range(1, 6)]
    # every layer of a group uses the first rate of the group's slice of linspace(0, 0.5, sum(depths) = 5)
    assert all(isinstance(r, torch.nn.Identity) for r in rates[:5])
    assert all(r.drop_prob == pytest.approx(0.25) for r in rates[5:])
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)
        net.train()
        torch.manual_seed(1)
        a = net(x)
        torch.manual_seed(2)
        b = net(x)
    assert not torch.equal(a, b)
