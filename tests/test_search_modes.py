"""The approximate search wired as a third search mode: SearchTransfer's contract, the inference engine with tiles,
budgets and several references, the options block, the memory planner, ``--search auto`` and the optional faiss
backend's fallback."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from extracter.archs.extracter_arch import Extracter
from extracter.archs.search_transfer import SearchTransfer, split_index
from extracter.infer import run
from extracter.inference import InferenceOptionError, InferenceOptions, run_refsr
from extracter.inference.memory_plan import NetSpec, estimate, plan_memory
from extracter.options.schema import OptionError, validate_options
from extracter.search.methods import approximate as search_approximate
from extracter.search.methods.approximate import ApproximateSettings, approximate_search, faiss_available, uses_exact

NET_OPT = dict(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, top_k=2, window=6, stride=2,
               padding=2, dfe_init='random')


def _features(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.nn.functional.avg_pool2d(torch.randn(*shape, generator=g), 3, 1, 1) + 0.1)


def covering(n_keys: int, side: int, refine: int = 0) -> ApproximateSettings:
    """Settings whose candidate windows cover the whole reference (``n_keys`` patches, patch grids at most ``side``
    long), on the approximate path (no fallback)."""
    return ApproximateSettings(channel_dims=8, patch_dims=32, candidates=2, fallback=False, jitter=side,
                               max_candidates=n_keys, tile=3, refine=refine)


def tiny_net(seed: int = 0) -> Extracter:
    torch.manual_seed(seed)
    return Extracter(**NET_OPT).eval()


def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return float('inf') if mse == 0 else 10 * np.log10(1 / mse)


@pytest.mark.parametrize('geometry,top_k,refine', [((3, 1, 1), 1, 0), ((6, 2, 2), 3, 0), ((6, 2, 2), 2, 5)])
def test_search_transfer_approximate_mode_contract_and_union(geometry, top_k, refine):
    lr = _features((2, 16, 10, 12), 0)
    refs = [_features((2, 16, 12, 9), 1), _features((2, 16, 8, 14), 2)]
    exact = SearchTransfer(*geometry, top_k=top_k, mode='chunked').search(lr, refs)
    st = SearchTransfer(*geometry, top_k=top_k, mode='approximate', approximate=covering(200, 14, refine))
    scores, index = st.search(lr, refs)
    assert scores.shape == index.shape == exact[0].shape
    torch.testing.assert_close(scores, exact[0], atol=1e-5, rtol=0)
    assert (index != exact[1]).float().mean() < 0.01  # ties within float rounding aside
    # the union: both references contribute; the index runs over their patches in order
    ref_id, _ = split_index(index[:, 0].reshape(-1), st.patch_counts(refs))
    assert set(ref_id.tolist()) == {0, 1}
    # the transfer is the chunked one (transfer by index)
    assert st.divisor(3, (10, 12), lr).shape == (1, 1, 10, 12)
    assert 'approximate=' in repr(st)
    with pytest.raises(ValueError, match='search mode'):
        st.set_chunking('fast')


def test_engine_approximate_with_tiles_budget_and_references_equals_exact_when_covering():
    net = tiny_net()
    torch.manual_seed(1)
    lr = torch.rand(1, 3, 20, 28)
    refs = [torch.rand(1, 3, 48, 64), torch.rand(1, 3, 40, 40)]
    exact = run_refsr(net, lr, refs, search_mode='chunked', return_aux=True)
    cover = covering(sum(exact.patch_counts), 8)
    for kwargs in ({}, {'tile': {'tile_size': 8, 'tile_pad': 6}}, {'max_memory': '200M', 'tile': {'tile_pad': 6}}):
        res = run_refsr(net, lr, refs, search_mode='approximate', approximate=cover, return_aux=True, **kwargs)
        torch.testing.assert_close(res.scores, exact.scores, atol=1e-5, rtol=0)
        assert (res.index != exact.index).float().mean() < 0.01
        assert psnr(res.sr, exact.sr) > 50
        assert res.search_used.startswith('approximate search')
        if 'max_memory' in kwargs:
            assert res.plan.search_mode == 'approximate'
    # the net's own settings are restored
    assert net.search_transfer.mode == 'dense' and net.search_transfer.approximate == ApproximateSettings()
    # default settings on this small input: the fallback is the exact chunked search, said so
    small = run_refsr(net, lr, refs, search_mode='approximate', return_aux=True)
    assert torch.equal(small.index, exact.index)
    assert 'small input' in small.search_used


def test_auto_chooses_by_the_exact_search_cost_and_reports(monkeypatch):
    net = tiny_net()
    lr, ref = torch.rand(1, 3, 12, 16), torch.rand(1, 3, 48, 48)
    res = run_refsr(net, lr, ref, search_mode='auto', return_aux=True)
    assert res.search_used.startswith('dense search (auto:') and '<=' in res.search_used
    res = run_refsr(net, lr, ref, search_mode='auto', max_memory='1G', return_aux=True)
    assert res.search_used.startswith('chunked search (auto:') and res.plan.search_mode == 'chunked'
    monkeypatch.setattr(search_approximate, 'AUTO_APPROXIMATE_ABOVE', 0)
    res = run_refsr(net, lr, ref, search_mode='auto', return_aux=True)
    assert res.search_used.startswith('approximate search') and '>' in res.search_used
    assert net.search_transfer.mode == 'dense'


def test_options_block_parses_validates_and_refuses_approximate_training():
    opt = InferenceOptions.from_mapping({'search': {'mode': 'approximate', 'approximate': {'candidates': 16}}},
                                        'val.')
    assert opt.run_kwargs()['approximate'] == ApproximateSettings(candidates=16)
    assert InferenceOptions.from_mapping({'search': {'mode': 'auto'}}).run_kwargs()['search_mode'] == 'auto'
    with pytest.raises(InferenceOptionError, match=r"val\.search\.approximate\.candidates"):
        InferenceOptions.from_mapping({'search': {'approximate': {'candidates': 0}}}, 'val.')
    with pytest.raises(InferenceOptionError, match="did you mean 'val.search.approximate.jitter'"):
        InferenceOptions.from_mapping({'search': {'approximate': {'jiter': 2}}}, 'val.')
    with pytest.raises(InferenceOptionError, match='backend'):
        InferenceOptions.from_mapping({'search': {'approximate': {'backend': 'annoy'}}})
    with pytest.raises(InferenceOptionError, match='search.mode'):
        InferenceOptions.from_mapping({'search': {'mode': 'fast'}})
    ds = {'name': 'x', 'type': 'CUFED5Dataset', 'dataroot': '.'}
    base = {'name': 'x', 'model_type': 'RefSRModel', 'network_g': {'type': 'Extracter', **NET_OPT},
            'datasets': {'test_1': ds},
            'val': {'search': {'mode': 'approximate', 'approximate': {'max_candidates': 0}}}}
    with pytest.raises(OptionError, match=r't\.yml: val\.search\.approximate\.max_candidates must be'):
        validate_options(base, is_train=False, source='t.yml', check_files=False)
    base['val']['search']['approximate']['max_candidates'] = 512
    validate_options(base, is_train=False, source='t.yml', check_files=False)


def test_training_refuses_the_approximate_search(tmp_path):
    from tests.test_train_options import _tiny

    opt = _tiny(tmp_path)
    opt['network_g']['search_mode'] = 'approximate'
    with pytest.raises(OptionError, match='network_g.search_mode: approximate is for inference only'):
        validate_options(opt, is_train=True, source='tiny.yml')
    opt['network_g']['search_mode'] = 'faiss'  # exact, but its scores carry no gradient
    with pytest.raises(OptionError, match='network_g.search_mode: faiss is for inference only .*dense or chunked'):
        validate_options(opt, is_train=True, source='tiny.yml')


def test_planner_counts_the_approximate_search():
    spec = NetSpec.from_net(tiny_net())
    big = dataclasses.replace(spec, approximate=ApproximateSettings())
    lr_hw, ref_hw = (512, 512), (2048, 2048)
    approx = estimate(big, lr_hw, ref_hw, 'approximate', 4096, 8192)
    chunked = estimate(big, lr_hw, ref_hw, 'chunked', 4096, 8192)
    assert approx['search_blocks'] != chunked['search_blocks']  # its own estimate at this size
    plan = plan_memory(big, lr_hw, ref_hw, '8G', search_mode='approximate')
    assert plan.search_mode == 'approximate' and plan.estimate <= 8 * 2 ** 30
    # smaller retrieval blocks under a tighter budget
    tight = plan_memory(big, lr_hw, ref_hw, plan.estimate - 2 ** 27, search_mode='approximate')
    assert (tight.chunk_size < plan.chunk_size or tight.tile_size is not None
            or (tight.lv1_storage, plan.lv1_storage) == ('recomputed', 'stored'))
    # small inputs: the exact fallback's (chunked) estimate
    small = estimate(big, (32, 32), (64, 64), 'approximate', 4096, 8192)
    assert small['search_blocks'] == estimate(big, (32, 32), (64, 64), 'chunked', 4096, 8192)['search_blocks']


def test_faiss_backend_absent_falls_back_with_a_message():
    lr, ref = _features((1, 16, 10, 12), 3), _features((1, 16, 12, 10), 4)
    settings = ApproximateSettings(channel_dims=8, patch_dims=32, candidates=3, fallback=False, max_candidates=20,
                                   tile=3)
    torch_result = approximate_search(lr, ref, 3, 1, 1, 2, settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        faiss_result = approximate_search(lr, ref, 3, 1, 1, 2, settings, backend='faiss')
    if faiss_available():
        assert not [w for w in caught if 'faiss' in str(w.message)]
        torch.testing.assert_close(faiss_result[0], torch_result[0], atol=1e-5, rtol=0)
    else:
        assert any('faiss-cpu' in str(w.message) for w in caught)
        assert torch.equal(faiss_result[1], torch_result[1])
    assert not uses_exact(100, 100, settings) and uses_exact(100, 100, ApproximateSettings())


def _write_pair(folder):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / 'lr.png')
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / 'ref.png')


def test_infer_search_flag(tmp_path, capsys):
    opt = {'type': 'Extracter', **NET_OPT}
    net = tiny_net()
    torch.save({'params': net.state_dict()}, tmp_path / 'w.pth')
    (tmp_path / 'w.yml').write_text(yaml.safe_dump({'network_g': opt}))
    _write_pair(tmp_path)
    base = ['--weights', str(tmp_path / 'w.pth'), '--lr', str(tmp_path / 'lr.png'), '--ref', str(tmp_path / 'ref.png')]
    run(base + ['-o', str(tmp_path / 'auto')])  # the default is auto
    assert 'lr.png: dense search (auto: exact search' in capsys.readouterr().out
    run(base + ['-o', str(tmp_path / 'approx'), '--search', 'approximate'])
    assert 'lr.png: approximate search' in capsys.readouterr().out
    exact = np.asarray(Image.open(tmp_path / 'auto' / 'lr_sr.png'))
    approx = np.asarray(Image.open(tmp_path / 'approx' / 'lr_sr.png'))
    assert np.array_equal(exact, approx)  # small input: the exact fallback
    run(base + ['-o', str(tmp_path / 'budget'), '--max-memory', '1G'])  # the plan is printed with the search
    assert 'lr.png: chunked search (auto: exact search' in (out := capsys.readouterr().out)
    assert '; memory plan: chunked search (chunk' in out and 'estimated peak' in out
    with pytest.raises(SystemExit):
        run(base + ['-o', str(tmp_path / 'x'), '--search', 'fast'])
