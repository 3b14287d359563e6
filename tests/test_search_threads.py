"""One network, several threads, different search settings: every call's result equals the same call made alone.

The search settings travel with each call (:class:`extracter.search.SearchSpec`); nothing of a call is stored on the
shared network. (Before the search subsystem, ``run_refsr`` set and restored the mode and geometry on the network's
``SearchTransfer``, and concurrent calls with different settings got each other's: 12 of 16 differed.)
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from extracter.archs.extracter_arch import Extracter
from extracter.inference.engine import run_refsr
from extracter.search import SearchSpec
from extracter.search.methods.approximate import ApproximateSettings

# 4 calls that differ in method and geometry (each geometry changes the padded sizes, the grids and the transfer)
CALLS = [
    {'search_mode': 'chunked', 'search_geometry': (6, 2, 2), 'chunk_size': 64, 'key_chunk_size': 96},
    {'search_mode': 'dense', 'search_geometry': (3, 1, 1)},
    {'search_mode': 'chunked', 'search_geometry': (9, 3, 3), 'tile': {'tile_size': 12, 'tile_pad': 12}},
    {'search_mode': 'approximate', 'search_geometry': (6, 2, 2),
     'approximate': ApproximateSettings(fallback=False, max_candidates=64, candidates=4, refine=0, fit_samples=512,
                                        channel_dims=16, patch_dims=32)},
]


def _net() -> Extracter:
    torch.manual_seed(0)
    return Extracter(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=16, top_k=2, dfe_init='random',
                     window=3, stride=1, padding=1).eval()


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 24, 36, generator=g), torch.rand(1, 3, 96, 96, generator=g)


def test_concurrent_calls_with_different_specs_equal_the_sequential_ones():
    net = _net()
    lr, ref = _inputs()
    expected = [run_refsr(net, lr, ref, **kw) for kw in CALLS]
    assert not torch.equal(expected[0], expected[1])  # the settings matter, so a mix-up would show
    start = threading.Barrier(len(CALLS))

    def call(i: int) -> torch.Tensor:
        start.wait()  # all calls at once
        return run_refsr(net, lr, ref, **CALLS[i])

    rounds = 3
    with ThreadPoolExecutor(max_workers=len(CALLS)) as pool:
        for _ in range(rounds):
            got = list(pool.map(call, range(len(CALLS))))
            for i, (out, exp) in enumerate(zip(got, expected)):
                assert torch.equal(out, exp), f'call {CALLS[i]} differs when run beside the others'
    assert net.default_search_spec == SearchSpec('dense', 3, 1, 1)  # the network was never changed


def test_a_spec_passed_down_equals_the_keyword_route():
    net = _net()
    lr, ref = _inputs()
    spec = net.search_spec(method='chunked', geometry=(6, 2, 2), chunk_size=64, key_chunk_size=96)
    assert spec == SearchSpec('chunked', 6, 2, 2, 64, 96) and hash(spec) == hash(SearchSpec('chunked', 6, 2, 2, 64, 96))
    torch.testing.assert_close(run_refsr(net, lr, ref, search_spec=spec), run_refsr(net, lr, ref, **CALLS[0]),
                               atol=0, rtol=0)
    with torch.no_grad():  # the network's own forward with the same spec: the same search and transfer
        feats = net.encode_reference(ref)
        from extracter.archs.refsr_base import make_lr_up
        direct = net.forward_features(lr, make_lr_up(lr), feats, spec=spec)
    assert direct.shape == (1, 3, 96, 144)


def test_spec_values_are_normalised_and_bad_ones_named():
    import numpy as np
    import pytest

    spec = SearchSpec('chunked', np.int64(6), 2, 2, chunk_size=np.int32(512), cache_keys=1)
    assert (spec.window, spec.chunk_size, spec.cache_keys) == (6, 512, True) and type(spec.window) is int
    with pytest.raises(ValueError, match='chunk_size must be an integer >= 1, got 1024.5'):
        SearchSpec('chunked', chunk_size=1024.5)
    with pytest.raises(ValueError, match='search mode must be one of dense, chunked, approximate'):
        SearchSpec('sparse')
    with pytest.raises(TypeError, match='spec must be a SearchSpec'):
        run_refsr(_net(), *_inputs(), search_spec='chunked')


def test_a_whole_spec_keeps_its_method_under_a_budget():
    net = _net()
    lr, ref = _inputs()
    spec = net.search_spec(method='approximate', geometry=(6, 2, 2))
    res = run_refsr(net, lr, ref, search_spec=spec, max_memory='1G', return_aux=True)
    assert res.spec.method == 'approximate' and res.plan.search_mode == 'approximate'
    res = run_refsr(net, lr, ref, max_memory='1G', return_aux=True)  # nothing asked: a budget means chunked
    assert res.spec.method == 'chunked'


def test_prepared_key_blocks_refuse_another_spec():
    import pytest

    net = _net()
    st = net.search_transfer
    lr, ref = _inputs()
    with torch.no_grad():
        keys = net.encode_search_keys(ref)
        query = net.search_features(torch.nn.functional.interpolate(lr, scale_factor=4, mode='bicubic'))
    a = net.search_spec(method='chunked', key_chunk_size=40)
    blocks = st.prepare_keys(keys, a)
    torch.testing.assert_close(st.search(query, keys, blocks, a)[0], st.search(query, keys, None, a)[0],
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='key_chunk_size 40; this search has .* 80'):
        st.search(query, keys, blocks, a.replace(key_chunk_size=80))
