"""Tiled inference agrees with untiled inference; run_refsr's padding, geometry switch and options."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from extracter.archs.extracter_arch import Extracter
from extracter.archs.refsr_base import make_lr_up
from extracter.archs.ttsr_arch import TTSR
from extracter.inference.engine import pad_to_multiple, refsr_kwargs_from_options, run_refsr
from extracter.inference.tiling import round_tile, search_features_tiled, tile_pad_floor, tile_spans, tiled_forward
from extracter.utils.input_warning import InputWarning

DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'refsr-pairs' / 'ttsr-demo'


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def tiny_extracter(**kw):
    torch.manual_seed(0)
    return Extracter(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=16, top_k=2,
                     dfe_init='random', **kw).eval()


@pytest.mark.parametrize('length,size,pad,multiple', [(37, 10, 3, 1), (40, 12, 5, 4), (8, 100, 4, 2), (24, 8, 0, 2)])
def test_tile_spans_cover_the_axis_once(length, size, pad, multiple):
    length = length // multiple * multiple
    spans = tile_spans(length, size, pad, multiple)
    size_r, pad_r = round_tile(size, pad, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (o0, o1, i0, i1), nxt in zip(spans, spans[1:] + [None]):
        assert i0 <= o0 < o1 <= i1 and 0 <= i0 and i1 <= length
        assert o0 - i0 == min(o0, pad_r) and i1 - o1 == min(length - o1, pad_r)
        assert all(v % multiple == 0 for v in (o0, o1, i0, i1))
        if nxt is not None:
            assert nxt[0] == o1 and o1 - o0 == size_r


def test_round_tile_and_bad_tiles():
    assert round_tile(30, 5, 4) == (28, 8)
    assert round_tile(3, 0, 4) == (4, 0)
    with pytest.raises(ValueError, match='tile_size'):
        round_tile(0, 4, 1)
    with pytest.raises(ValueError, match='multiple'):
        tile_spans(10, 4, 2, 4)


@pytest.mark.parametrize('geometry,mode', [((3, 1, 1), 'dense'), ((6, 2, 2), 'chunked')])
def test_tiled_agrees_with_untiled(geometry, mode):
    torch.manual_seed(3)
    lr, ref = torch.rand(1, 3, 16, 24), torch.rand(1, 3, 48, 40)
    net = tiny_extracter(window=geometry[0], stride=geometry[1], padding=geometry[2])
    full = run_refsr(net, lr, ref, search_mode=mode)
    tiled = run_refsr(net, lr, ref, tile={'tile_size': 12, 'tile_pad': 8}, search_mode=mode)
    assert tiled.shape == full.shape == (1, 3, 64, 96)
    assert psnr(tiled, full) >= 50
    # without context the seams show: the tile pad matters (the tile loop itself, which uses the pad it is given)
    with torch.no_grad():
        seams = tiled_forward(net, lr, make_lr_up(lr), net.encode_reference(ref), tile_size=12, tile_pad=0,
                              spec=net.search_spec(method=mode))
    assert psnr(seams, full) < psnr(tiled, full)


def test_tile_pad_below_the_floor_is_raised_with_a_warning():
    torch.manual_seed(3)
    lr, ref = torch.rand(1, 3, 16, 24), torch.rand(1, 3, 48, 40)
    net = tiny_extracter()
    floor = net.min_tile_pad
    assert floor == Extracter.descriptor.min_tile_pad > 0
    at_floor = run_refsr(net, lr, ref, tile={'tile_size': 12, 'tile_pad': floor})
    with pytest.warns(InputWarning, match=f'tile_pad 0 is below what Extracter needs.*using tile_pad {floor}'):
        raised = run_refsr(net, lr, ref, tile={'tile_size': 12, 'tile_pad': 0})
    torch.testing.assert_close(raised, at_floor, atol=0, rtol=0)
    assert tile_pad_floor(net, floor + 3) == floor + 3  # a larger pad is kept as given


def test_untiled_run_refsr_equals_forward_and_restores_settings():
    torch.manual_seed(4)
    lr, ref = torch.rand(2, 3, 12, 8), torch.rand(2, 3, 32, 36)
    net = tiny_extracter()
    with torch.no_grad():
        expected = net(lr, ref)
    torch.testing.assert_close(run_refsr(net, lr, ref), expected, atol=0, rtol=0)
    out = run_refsr(net, lr, ref, search_mode='chunked', chunk_size=5, key_chunk_size=7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    st = net.search_transfer
    assert (st.mode, st.chunk_size, st.key_chunk_size) == ('dense', 4096, 8192)


def test_run_refsr_pads_awkward_sizes_and_crops_back():
    torch.manual_seed(5)
    lr, ref = torch.rand(1, 3, 13, 11), torch.rand(1, 3, 45, 38)  # not multiples of stride 4 / 16
    net = tiny_extracter()
    out = run_refsr(net, lr, ref, search_geometry=(12, 4, 4))
    assert out.shape == (1, 3, 52, 44)
    lr_p, added = pad_to_multiple(lr, 4)
    assert added == (3, 1)
    ref_p, _ = pad_to_multiple(ref, 16)
    net.set_search_geometry(12, 4, 4)
    with torch.no_grad():
        expected = net(lr_p, ref_p)[:, :, :52, :44]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_geometry_switch_is_for_this_call_only():
    net = tiny_extracter()
    lr, ref = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)
    run_refsr(net, lr, ref, search_geometry=(12, 4, 4), tile={'tile_size': 4, 'tile_pad': 4})
    st = net.search_transfer
    assert (st.window, st.stride, st.padding) == (3, 1, 1)
    ttsr = TTSR(num_res_blocks='1+1+1+1', n_feats=16, lte_init='random').eval()
    with pytest.raises(ValueError, match='fixed search geometry'):
        run_refsr(ttsr, lr, ref, search_geometry=(6, 2, 2))


def test_options_parsing():
    kwargs = refsr_kwargs_from_options({
        'tile': {'tile_size': 128, 'tile_pad': 16}, 'max_memory': '6G',
        'search': {'mode': 'chunked', 'window': 12, 'stride': 4, 'padding': 4, 'chunk_size': 1024}})
    assert kwargs == {'tile': {'tile_size': 128, 'tile_pad': 16}, 'max_memory': '6G', 'search_mode': 'chunked',
                      'chunk_size': 1024, 'search_geometry': (12, 4, 4)}
    assert refsr_kwargs_from_options(None) == {}
    with pytest.raises(ValueError, match="'tile'"):
        refsr_kwargs_from_options({'tile': {'size': 3}})
    with pytest.raises(ValueError, match='window, stride and padding'):
        refsr_kwargs_from_options({'search': {'window': 12}})
    with pytest.raises(ValueError, match="unknown keys \\['strid'\\]"):
        refsr_kwargs_from_options({'search': {'strid': 4}})
    with pytest.raises(ValueError, match='max_memory'):
        refsr_kwargs_from_options({'max_memory': 'lots'})


def test_bad_inputs_name_the_argument():
    net = tiny_extracter()
    with pytest.raises(ValueError, match='lr must be an RGB batch'):
        run_refsr(net, torch.rand(3, 8, 8), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='lr_up'):
        run_refsr(net, torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32), lr_up=torch.rand(1, 3, 16, 16))


@pytest.mark.skipif(not (DATA / 'lr.png').is_file(), reason='../shared/data/refsr-pairs/ttsr-demo is missing')
def test_tiled_agrees_with_untiled_on_a_real_pair():
    from PIL import Image

    def load(name, box):
        arr = np.asarray(Image.open(DATA / name).convert('RGB').crop(box), dtype=np.float32) / 255
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None]
    lr = load('lr.png', (20, 30, 56, 58))  # 36x28 crop of the real LR
    ref = load('ref.png', (80, 120, 200, 224))  # 120x104 crop of its real reference
    net = tiny_extracter(window=6, stride=2, padding=2)
    full = run_refsr(net, lr, ref, search_mode='chunked')
    tiled = run_refsr(net, lr, ref, tile={'tile_size': 12, 'tile_pad': 8})
    assert psnr(tiled, full) >= 50


def test_tiles_share_one_search_of_the_whole_lr(monkeypatch):
    torch.manual_seed(6)
    net = tiny_extracter(window=6, stride=2, padding=2)
    lr, ref = torch.rand(1, 3, 16, 20), torch.rand(1, 3, 32, 48)
    lr_up = make_lr_up(lr)
    with torch.no_grad():
        # the query features, computed tile by tile with a margin, equal the untiled ones
        torch.testing.assert_close(search_features_tiled(net, lr_up, 6), net.search_features(lr_up),
                                   atol=1e-5, rtol=0)
        st = net.search_transfer
        calls = []
        real_search = st.search
        monkeypatch.setattr(st, 'search', lambda *a, **k: calls.append(a[0].shape) or real_search(*a, **k))
        tiled_forward(net, lr, lr_up, net.encode_reference(ref), tile_size=6, tile_pad=4)
    assert calls == [torch.Size([1, 256, 16, 20])]  # once, for the whole LR
