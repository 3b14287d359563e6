"""The chunked search & transfer equals the dense (faithful) one: indices, scores, textures and network outputs."""

import pytest
import torch

from extracter.archs.extracter_arch import Extracter
from extracter.archs.refsr_base import make_lr_up
from extracter.archs.search_transfer import SearchTransfer
from extracter.archs.ttsr_arch import TTSR

ATOL = 1e-5


def _features(lr_hw, ref_hw, channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lr = torch.randn(2, channels, *lr_hw, generator=g)
    ref3 = torch.randn(2, channels, *ref_hw, generator=g)
    refsr = ref3 + 0.1 * torch.randn(2, channels, *ref_hw, generator=g)
    ref2 = torch.randn(2, 5, 2 * ref_hw[0], 2 * ref_hw[1], generator=g)
    ref1 = torch.randn(2, 3, 4 * ref_hw[0], 4 * ref_hw[1], generator=g)
    return lr, refsr, ref1, ref2, ref3


# geometry, top_k, LR / ref relu3_1 sizes (non-square), chunk sizes that do not divide the patch counts
CASES = [
    ((3, 1, 1), 1, (7, 9), (10, 6), 5, 7),
    ((3, 1, 1), 2, (5, 11), (9, 7), 13, 4),
    ((6, 2, 2), 3, (10, 14), (12, 8), 7, 5),
    ((6, 2, 2), 2, (8, 6), (14, 10), 1, 3),
    ((12, 4, 4), 1, (12, 16), (16, 20), 3, 4),
    ((12, 4, 4), 3, (8, 12), (20, 12), 100, 2),
]


@pytest.mark.parametrize('geometry,top_k,lr_hw,ref_hw,chunk,key_chunk', CASES)
def test_chunked_equals_dense(geometry, top_k, lr_hw, ref_hw, chunk, key_chunk):
    lr, refsr, ref1, ref2, ref3 = _features(lr_hw, ref_hw)
    dense = SearchTransfer(*geometry, top_k=top_k, mode='dense')
    chunked = SearchTransfer(*geometry, top_k=top_k, mode='chunked', chunk_size=chunk, key_chunk_size=key_chunk)
    s_d, i_d = dense.search(lr, refsr)
    s_c, i_c = chunked.search(lr, refsr)
    assert s_c.shape == s_d.shape == (2, top_k, lr_hw[0] * lr_hw[1] // geometry[1] ** 2)
    assert torch.equal(i_c, i_d)
    torch.testing.assert_close(s_c, s_d, atol=ATOL, rtol=0)
    out_d = dense(lr, refsr, ref1, ref2, ref3)
    out_c = chunked(lr, refsr, ref1, ref2, ref3)
    for list_d, list_c in zip(out_d, out_c):
        assert len(list_d) == len(list_c) == top_k
        for a, b in zip(list_d, list_c):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


def test_ttsr_constant_normalisation_in_both_modes():
    lr, refsr, ref1, ref2, ref3 = _features((6, 7), (9, 8))
    dense = SearchTransfer(3, 1, 1, top_k=1, overlap_norm='ttsr')
    chunked = SearchTransfer(3, 1, 1, top_k=1, overlap_norm='ttsr', mode='chunked', chunk_size=4, key_chunk_size=9)
    for a, b in zip(dense(lr, refsr, ref1, ref2, ref3), chunked(lr, refsr, ref1, ref2, ref3)):
        torch.testing.assert_close(b[0], a[0], atol=ATOL, rtol=0)
    # TTSR's constant 9 leaves the border darker than the exact count would: the corner of T_lv3 is the centre
    # pixel-value sum of 4 patches divided by 9
    exact = SearchTransfer(3, 1, 1, top_k=1, mode='chunked', chunk_size=4, key_chunk_size=9)
    t_ttsr = chunked(lr, refsr, ref1, ref2, ref3)[1][0]
    t_exact = exact(lr, refsr, ref1, ref2, ref3)[1][0]
    torch.testing.assert_close(t_ttsr[..., 0, 0] * 9 / 4, t_exact[..., 0, 0], atol=ATOL, rtol=0)


@pytest.mark.parametrize('geometry', [(3, 1, 1), (6, 2, 2), (5, 2, 1)])
def test_separable_divisor_equals_fold_of_ones(geometry):
    dense = SearchTransfer(*geometry, mode='dense')
    chunked = SearchTransfer(*geometry, mode='chunked')
    like = torch.zeros(1)
    for level, hw in ((3, (9, 13)), (2, (18, 26)), (1, (36, 52))):
        assert torch.equal(chunked.divisor(level, hw, like), dense.divisor(level, hw, like))


def test_chunked_search_never_builds_the_whole_relevance_matrix(monkeypatch):
    lr, refsr, *_ = _features((12, 10), (14, 12))
    st = SearchTransfer(3, 1, 1, top_k=2, mode='chunked', chunk_size=16, key_chunk_size=20)
    sizes = []
    real_bmm = torch.bmm

    def spy(a, b):
        out = real_bmm(a, b)
        sizes.append(out.shape[1:])
        return out
    monkeypatch.setattr(torch, 'bmm', spy)
    st.search(lr, refsr)
    assert sizes and max(s[0] for s in sizes) <= 16 and max(s[1] for s in sizes) <= 20
    assert len(sizes) == -(-120 // 16) * -(-168 // 20)  # every LR block against every reference block


def test_prepared_and_cached_keys_give_the_same_result():
    lr, refsr, ref1, ref2, ref3 = _features((8, 9), (10, 7))
    st = SearchTransfer(3, 1, 1, top_k=2, mode='chunked', chunk_size=10, key_chunk_size=6)
    s0, i0 = st.search(lr, refsr)
    s1, i1 = st.search(lr, refsr, key_blocks=st.prepare_keys(refsr))
    st.set_chunking(cache_keys=True)
    s2, i2 = st.search(lr, refsr)
    assert torch.equal(i0, i1) and torch.equal(i0, i2)
    torch.testing.assert_close(s1, s0, atol=ATOL, rtol=0)
    torch.testing.assert_close(s2, s0, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match='key_blocks'):
        st.search(lr, refsr, key_blocks=st.prepare_keys(refsr[..., :5, :]))


def test_bad_settings_and_too_small_reference_raise():
    with pytest.raises(ValueError, match='search mode'):
        SearchTransfer(mode='sparse')
    with pytest.raises(ValueError, match='chunk sizes'):
        SearchTransfer(mode='chunked', chunk_size=0)
    lr, refsr, *_ = _features((4, 4), (1, 1))
    for mode in ('dense', 'chunked'):
        with pytest.raises(ValueError, match='fewer than top_k'):
            SearchTransfer(3, 1, 1, top_k=2, mode=mode).search(lr, refsr)


def _tiny_extracter(**kw):
    torch.manual_seed(0)
    return Extracter(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=16, top_k=2,
                     dfe_init='random', **kw).eval()


@pytest.mark.parametrize('geometry', [(3, 1, 1), (6, 2, 2)])
def test_networks_give_the_same_output_in_both_modes(geometry):
    torch.manual_seed(1)
    lr, ref = torch.rand(1, 3, 12, 10), torch.rand(1, 3, 40, 56)
    net = _tiny_extracter(window=geometry[0], stride=geometry[1], padding=geometry[2])
    with torch.no_grad():
        dense = net(lr, ref, return_aux=True)
        net.set_search_mode('chunked', chunk_size=7, key_chunk_size=11)
        chunked = net(lr, ref, return_aux=True)
    torch.testing.assert_close(chunked['sr'], dense['sr'], atol=ATOL, rtol=0)
    for a, b in zip(dense['T_lv1'], chunked['T_lv1']):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    assert net.search_transfer.mode == 'chunked'


def test_ttsr_gives_the_same_output_in_both_modes():
    torch.manual_seed(2)
    lr, ref = torch.rand(1, 3, 9, 11), torch.rand(1, 3, 24, 28)
    net = TTSR(num_res_blocks='1+1+1+1', n_feats=16, lte_init='random').eval()
    chunked_net = TTSR(num_res_blocks='1+1+1+1', n_feats=16, lte_init='random', search_mode='chunked',
                       chunk_size=10, key_chunk_size=9).eval()
    chunked_net.load_state_dict(net.state_dict())
    with torch.no_grad():
        dense = net(lr, ref, return_aux=True)
        chunked = chunked_net(lr, ref, return_aux=True)
        # the searches agree: the same relevances, and the same patches wherever the choice is not a tie (random
        # VGG weights leave many all-zero relu3_1 patches, all equally relevant; which one is kept is arbitrary)
        torch.testing.assert_close(chunked['scores'], dense['scores'], atol=ATOL, rtol=0)
        feats = net.encode_reference(ref)
        all_scores = net.search_transfer.search(net.search_features(make_lr_up(lr)), feats.search)
        top2 = TTSR(num_res_blocks='1+1+1+1', n_feats=16, lte_init='random').search_transfer
        top2.top_k = 2
        runner_up = top2.search(net.search_features(make_lr_up(lr)), feats.search)[0]
        clear = (runner_up[:, 0] - runner_up[:, 1]) > ATOL
        assert clear.float().mean() > 0.5 and torch.equal(all_scores[0], dense['scores'])
        assert torch.equal(chunked['index'][:, 0][clear], dense['index'][:, 0][clear])
        # the chunked transfer and the main network on the dense search's result give the dense output
        same_search = chunked_net.forward_features(lr, None, chunked_net.encode_reference(ref),
                                                   search=(dense['scores'], dense['index']))
        torch.testing.assert_close(same_search, dense['sr'], atol=ATOL, rtol=0)


BLOCK_CASES = [((3, 1, 1), (7, 9), [(10, 6)]), ((6, 2, 2), (10, 14), [(12, 8)]), ((12, 4, 4), (8, 12), [(16, 20)]),
               ((6, 2, 2), (8, 6), [(12, 8), (6, 10), (14, 4)]),  # several references of different sizes
               ((6, 2, 2), (7, 9), [(12, 8)])]  # an LR whose sides are not multiples of the stride


@pytest.mark.parametrize('geometry,lr_hw,ref_hws', BLOCK_CASES)
def test_block_transfer_of_channels_last_maps_equals_the_dense_fold_bit_for_bit(geometry, lr_hw, ref_hws):
    """Transfer by blocks (channels-last maps, the layout the engine gives the references on CPU) equals the faithful
    fold exactly, at every level, for every patch (random indices reach the borders, where blocks fall in the zero
    padding), batch 2, one or several references."""
    g = torch.Generator().manual_seed(3)
    dense = SearchTransfer(*geometry, top_k=1, mode='dense')
    chunked = SearchTransfer(*geometry, top_k=1, mode='chunked', chunk_size=5)
    for level, factor, channels in ((3, 1, 6), (2, 2, 5), (1, 4, 3)):
        maps = [torch.randn(2, channels, factor * h, factor * w, generator=g) for h, w in ref_hws]
        n_patches = sum(chunked.patch_counts([torch.zeros(1, 1, h, w) for h, w in ref_hws]))
        gh, gw = chunked.grid_size(*lr_hw)
        index = torch.randint(0, n_patches, (2, gh * gw), generator=g)
        index[:, :4] = torch.tensor([0, n_patches - 1, 1, n_patches - 2])  # corners of the first and last reference
        out_hw = (factor * lr_hw[0], factor * lr_hw[1])
        expected = dense.transfer_level(maps, index, level, out_hw)
        nhwc = [chunked.transfer_layout(m) for m in maps]
        assert all(m.is_contiguous(memory_format=torch.channels_last) for m in nhwc)
        assert chunked.blocks_apply(nhwc, level) and not chunked.blocks_apply(maps, level)
        out = chunked.transfer_level(nhwc, index, level, out_hw)
        assert out.shape == expected.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(out, expected)
        # the NCHW maps take the band-by-band path: the same result up to float rounding
        torch.testing.assert_close(chunked.transfer_level(maps, index, level, out_hw), expected, atol=ATOL, rtol=0)


def test_block_transfer_does_not_apply_where_the_window_is_not_a_multiple_of_the_stride():
    st = SearchTransfer(5, 2, 1, top_k=1, mode='chunked')
    maps = [st.transfer_layout(torch.randn(1, 3, 8, 8))]
    assert not st.blocks_apply(maps, 3)
    dense = SearchTransfer(5, 2, 1, top_k=1, mode='dense')
    index = torch.randint(0, 9, (1, 4))  # a 6 x 6 LR has 2 x 2 patches, the 8 x 8 reference 3 x 3
    torch.testing.assert_close(st.transfer_level(maps, index, 3, (6, 6)), dense.transfer_level(maps, index, 3, (6, 6)),
                               atol=ATOL, rtol=0)
    assert SearchTransfer(mode='dense').transfer_layout(maps[0].contiguous()).is_contiguous()  # dense: unchanged


def test_block_transfer_keeps_autograd_for_maps_that_require_grad():
    """With grad recorded (a trainable extractor), the block transfer allocates fresh tensors instead of its reusable
    buffers: the gradient reaches the reference maps and equals the dense fold's."""
    g = torch.Generator().manual_seed(5)
    dense = SearchTransfer(3, 1, 1, top_k=1, mode='dense')
    chunked = SearchTransfer(3, 1, 1, top_k=1, mode='chunked')
    for maps_n in (1, 2):
        maps = [torch.randn(1, 4, 6, 7, generator=g) for _ in range(maps_n)]
        index = torch.randint(0, 42 * maps_n, (1, 30), generator=g)
        grads = []
        for st, layout in ((dense, lambda m: m), (chunked, lambda m: m.contiguous(memory_format=torch.channels_last))):
            leaves = [layout(m.clone()).requires_grad_() for m in maps]
            assert st is dense or st.blocks_apply(leaves, 3)
            st.transfer_level(leaves, index, 3, (5, 6)).square().sum().backward()
            grads.append([leaf.grad for leaf in leaves])
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0)


@pytest.mark.parametrize('geometry,top_k,lr_hw,ref_hw,chunk,key_chunk', CASES)
def test_prepared_key_blocks_are_the_blocks_the_search_makes(geometry, top_k, lr_hw, ref_hw, chunk, key_chunk,
                                                              monkeypatch):
    """The blocks prepared once per reference (SearchMethod.prepare, kept by the inference's reference cache) are
    bit for bit those the search makes for itself, in the same order, and so is its result; prepared_bytes is what
    they hold."""
    from extracter.inference.reference_cache import held_bytes
    from extracter.search import SearchSpec

    lr, refsr = _features(lr_hw, ref_hw)[:2]
    lr, refsr = lr[:1], refsr[:1]  # batch 1, as the planner's figures
    spec = SearchSpec('chunked', *geometry, chunk_size=chunk, key_chunk_size=key_chunk)
    method = spec.search_method
    assert method.prepare(refsr, spec) is None and method.prepare_key(spec) is None  # only when asked
    cached = spec.replace(cache_keys=True)
    prepared = method.prepare(refsr, cached)
    assert method.prepare_key(cached) == ('chunked', geometry, key_chunk)
    assert held_bytes(prepared) == method.prepared_bytes(ref_hw, refsr.size(1), cached)
    made = []
    real_bmm = torch.bmm

    def spy(a, b):
        made.append(b.clone())
        return real_bmm(a, b)

    monkeypatch.setattr(torch, 'bmm', spy)
    plain = method.search(lr, refsr, spec, top_k)
    n_blocks = len(prepared.blocks)
    assert len(made) == n_blocks * -(-spec.patch_count(*lr_hw) // chunk)
    for i, block in enumerate(made):  # every LR block against the same key blocks, made as prepare made them
        assert torch.equal(block, prepared.blocks[i % n_blocks])
    with_blocks = method.search(lr, refsr, cached, top_k, prepared)
    assert torch.equal(plain[0], with_blocks[0]) and torch.equal(plain[1], with_blocks[1])


def test_prepared_key_blocks_of_a_720x480_reference():
    """The figure the docs state: about 200 MB of key blocks for a 720x480 reference at the demo's 3/1/1 (relu3_1
    180x120, 21,600 patches of 3x3x256; the blocks ending mid-row hold two rows more)."""
    from extracter.search import SearchSpec

    spec = SearchSpec('chunked', 3, 1, 1, cache_keys=True)
    assert spec.search_method.prepared_bytes((120, 180), 256, spec) == 4 * 2304 * 122 * 180 == 202_383_360
    assert spec.replace(cache_keys=False).search_method.prepared_bytes((120, 180), 256,
                                                                       spec.replace(cache_keys=False)) == 0
