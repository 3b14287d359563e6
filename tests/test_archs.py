"""Architecture behaviour: shapes, gradients, the search against brute force, overlap normalisation, geometry."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from extracter.archs.search_transfer import SearchTransfer

TINY = dict(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, dfe_init='random')


def tiny_extracter(**kw):
    return ARCH_REGISTRY.get('Extracter')(**{**TINY, **kw}).eval()


def tiny_ttsr():
    return ARCH_REGISTRY.get('TTSR')(num_res_blocks='1+1+1+1', n_feats=8, lte_init='random').eval()


@pytest.mark.parametrize('lr_hw,ref_hw', [((8, 8), (32, 32)), ((12, 20), (40, 24)), ((16, 6), (24, 56))])
@pytest.mark.parametrize('geometry', [(3, 1, 1), (6, 2, 2)])
def test_extracter_shapes(lr_hw, ref_hw, geometry):
    net = tiny_extracter(top_k=2, window=geometry[0], stride=geometry[1], padding=geometry[2])
    lr, ref = torch.rand(2, 3, *lr_hw), torch.rand(2, 3, *ref_hw)
    with torch.no_grad():
        out = net(lr, ref, return_aux=True)
    h, w = lr_hw
    s = geometry[1]
    assert out['sr'].shape == (2, 3, 4 * h, 4 * w)
    assert 0 <= out['sr'].min() and out['sr'].max() <= 1
    assert len(out['S']) == 2 and out['S'][0].shape == (2, 1, h // s, w // s)
    assert out['T_lv3'][1].shape == (2, 256, h, w)
    assert out['T_lv2'][0].shape == (2, 128, 2 * h, 2 * w)
    assert out['T_lv1'][0].shape == (2, 64, 4 * h, 4 * w)
    # scores are cosine similarities, sorted by rank
    assert (out['S'][0] >= out['S'][1] - 1e-6).all() and out['S'][0].abs().max() <= 1 + 1e-5


def test_ttsr_shapes_and_dataset_inputs():
    net = tiny_ttsr()
    lr, ref = torch.rand(1, 3, 10, 14), torch.rand(1, 3, 24, 36)
    lr_up = F.interpolate(lr, scale_factor=4, mode='bicubic').clamp(0, 1)
    with torch.no_grad():
        sr = net(lr, ref, lr_up=lr_up, ref_downup=ref)
    assert sr.shape == (1, 3, 40, 56)


@pytest.mark.parametrize('arch', ['Extracter', 'TTSR'])
def test_gradients_reach_every_trainable_parameter(arch):
    net = tiny_extracter(top_k=2) if arch == 'Extracter' else tiny_ttsr()
    net.train()
    sr = net(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32))
    (sr - 0.3).abs().mean().backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f'no gradient reached: {missing}'
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    extractor = 'dfe' if arch == 'Extracter' else 'lte'
    assert sorted(frozen) == [f'{extractor}.sub_mean.bias', f'{extractor}.sub_mean.weight']


def brute_force_topk(lr_feat, ref_feat, k, s, p, top_k):
    """Cosine relevance of every LR patch against every reference patch with explicit loops."""
    def patches(x):
        x = F.pad(x, (p, p, p, p))
        h, w = x.shape[-2:]
        out = []
        for i, j in itertools.product(range(0, h - k + 1, s), range(0, w - k + 1, s)):
            v = x[:, :, i:i + k, j:j + k].reshape(-1)
            out.append(v / v.norm().clamp_min(1e-12))
        return torch.stack(out)

    q, r = patches(lr_feat[0:1]), patches(ref_feat[0:1])
    relevance = r @ q.T  # [Lr, L]
    return torch.topk(relevance, top_k, dim=0)


@pytest.mark.parametrize('geometry', [(3, 1, 1), (6, 2, 2), (4, 2, 1)])
@pytest.mark.parametrize('top_k', [1, 3])
def test_search_equals_brute_force(geometry, top_k):
    st = SearchTransfer(*geometry, top_k=top_k)
    lr_feat, ref_feat = torch.randn(1, 5, 8, 6, dtype=torch.float64), torch.randn(1, 5, 10, 8, dtype=torch.float64)
    scores, index = st.search(lr_feat, ref_feat)
    ref_scores, ref_index = brute_force_topk(lr_feat, ref_feat, *geometry, top_k)
    torch.testing.assert_close(scores[0], ref_scores, rtol=0, atol=1e-12)
    assert torch.equal(index[0], ref_index)


@pytest.mark.parametrize('geometry', [(3, 1, 1), (6, 2, 2), (12, 4, 4), (5, 2, 1)])
def test_exact_overlap_normalisation_is_exact_at_borders(geometry):
    """Transferring every patch to its own position (identity index) and dividing by the overlap count gives the
    map back exactly, borders included, at every level."""
    st = SearchTransfer(*geometry, top_k=1)
    h, w = 8, 12
    gh, gw = st.grid_size(h, w)
    index = torch.arange(gh * gw).unsqueeze(0)
    for level, factor in ((3, 1), (2, 2), (1, 4)):
        value = torch.rand(1, 4, h * factor, w * factor)
        out = st.transfer_level(value, index, level, (h * factor, w * factor))
        torch.testing.assert_close(out, value, rtol=0, atol=1e-6)


def test_ttsr_constant_normalisation_darkens_borders():
    st = SearchTransfer(3, 1, 1, top_k=1, overlap_norm='ttsr')
    value = torch.ones(1, 2, 6, 6)
    index = torch.arange(36).unsqueeze(0)
    out = st.transfer_level(value, index, 3, (6, 6))
    assert torch.allclose(out[..., 1:-1, 1:-1], torch.ones(1, 2, 4, 4))
    assert torch.allclose(out[..., 0, 0], torch.full((1, 2), 4 / 9))  # corner: 4 of 9 patches overlap
    with pytest.raises(ValueError, match='TTSR'):
        st.set_geometry(6, 2, 2)


def test_identity_transfer_reconstructs_reference():
    """Searching a map against itself picks every patch's own position, so the transfer gives the map back."""
    st = SearchTransfer(3, 1, 1, top_k=1)
    feat = torch.randn(1, 16, 7, 9)
    S, T3, T2, T1 = st(feat, feat, torch.randn(1, 64, 28, 36), torch.randn(1, 128, 14, 18), feat)
    torch.testing.assert_close(T3[0], feat, rtol=0, atol=1e-5)
    torch.testing.assert_close(S[0], torch.ones_like(S[0]), rtol=0, atol=1e-5)


def test_geometry_switch_at_inference_keeps_weights():
    net = tiny_extracter(top_k=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lr, ref = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        outs = {}
        for s in (1, 2, 4):
            net.set_search_geometry(3 * s, s, s)
            outs[s] = net(lr, ref, return_aux=True)
            assert outs[s]['sr'].shape == (1, 3, 64, 64)
            assert outs[s]['S'][0].shape == (1, 1, 16 // s, 16 // s)
    assert not torch.allclose(outs[1]['sr'], outs[2]['sr'])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_inputs_raise_clear_errors():
    net = tiny_extracter(stride=2, window=6, padding=2)
    with pytest.raises(ValueError, match='LR size 9x8 is not a multiple of 2'):
        net(torch.rand(1, 3, 9, 8), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='reference size 36x32 is not a positive multiple of 8'):
        net(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 36, 32))
    with pytest.raises(ValueError, match='RGB'):
        net(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='lr_up must be 4x'):
        net(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32), lr_up=torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match='window >= stride'):
        net.set_search_geometry(2, 3, 0)
    with pytest.raises(ValueError, match='num_res_blocks'):
        ARCH_REGISTRY.get('Extracter')(num_res_blocks='1+2+x', dfe_init='random')


def test_cpu_determinism():
    torch.manual_seed(3)
    a = tiny_extracter(top_k=2)
    torch.manual_seed(3)
    b = tiny_extracter(top_k=2)
    lr, ref = torch.rand(2, 3, 8, 12), torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        out_a1, out_a2, out_b = a(lr, ref), a(lr, ref), b(lr, ref)
    assert torch.equal(out_a1, out_a2) and torch.equal(out_a1, out_b)


def test_discriminator():
    d = ARCH_REGISTRY.get('RefSRDiscriminator')(in_size=64)
    assert d(torch.rand(3, 3, 64, 64)).shape == (3, 1)
    with pytest.raises(ValueError, match='64x64'):
        d(torch.rand(1, 3, 32, 32))


def test_sobel_magnitude_matches_per_channel_convolution():
    from extracter.archs.modules import SobelMagnitude

    x = torch.rand(2, 3, 9, 7)
    kv = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]]).view(1, 1, 3, 3)
    kh = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    expected = torch.cat([
        torch.sqrt(F.conv2d(x[:, c:c + 1], kv, padding=1) ** 2 + F.conv2d(x[:, c:c + 1], kh, padding=1) ** 2 + 1e-6)
        for c in range(3)], dim=1)
    torch.testing.assert_close(SobelMagnitude()(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('make', [tiny_extracter, tiny_ttsr])
def test_main_network_runs_channels_last_for_cpu_inference_with_the_same_result(make):
    """CPU inference runs the main network on channels-last activations (oneDNN's fast layout); the result is NCHW
    and equals the NCHW run up to float rounding; with gradients (training) the layout stays NCHW."""
    from extracter.archs.layout import main_memory_format

    net = make()
    torch.manual_seed(6)
    lr, ref = torch.rand(1, 3, 12, 16), torch.rand(1, 3, 48, 64)
    assert main_memory_format(lr) is torch.contiguous_format  # gradients enabled
    with torch.no_grad():
        assert main_memory_format(lr) is torch.channels_last
        aux = net(lr, ref, return_aux=True)
        assert aux['T_lv1'][0].is_contiguous(memory_format=torch.channels_last)  # converted for the main network
        copies = [[t.contiguous() for t in aux[key]] for key in ('S', 'T_lv3', 'T_lv2', 'T_lv1')]
        nchw = net.reconstruct(lr, *copies, memory_format=torch.contiguous_format)
    assert aux['sr'].is_contiguous() and nchw.is_contiguous()
    torch.testing.assert_close(aux['sr'], nchw, atol=1e-5, rtol=0)
    with torch.enable_grad():
        trained = net(lr, ref)
    torch.testing.assert_close(trained.detach(), aux['sr'], atol=1e-5, rtol=0)
