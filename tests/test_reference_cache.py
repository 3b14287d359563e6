"""Encoded references reused within a run (extracter/inference/reference_cache.py): bit-identical to encoding again
in every search, tiled or not, with a budget; least recently used out first within the cap and within what the
memory plan leaves; entries keyed by what changes the encoding; a folder with one reference encodes it once."""

import numpy as np
import pytest
import torch
from PIL import Image

from extracter.data.inference_dataset import RefSRInferenceDataset
from extracter.inference import run_refsr
from extracter.inference.folder import infer_folder
from extracter.inference.memory_plan import cached_reference_bytes
from extracter.inference.reference_cache import ReferenceCache, held_bytes, tensor_digest
from extracter.search import get_method, method_names
from extracter.search.base import SearchMethod
from extracter.search.methods import approximate, exact
from extracter.search.methods.approximate import ApproximateSettings
from tests.test_engine import three_refs, tiny_net

TILED = {'tile': {'tile_size': 8, 'tile_pad': 8}}
BUDGET = {'max_memory': '400M', 'tile': {'tile_pad': 8}}  # leaves room for the cache (checked below)


@pytest.fixture(scope='module')
def net():
    return tiny_net()


# the approximate search on its own path (not its exact fallback) for these small references (25 to 54 patches), with
# a reduced index to prepare: every reference has more patches than max_candidates
APPROX = ApproximateSettings(channel_dims=8, patch_dims=32, candidates=2, max_candidates=12, exact_below=0, tile=4)


@pytest.mark.parametrize('mode', ['dense', 'chunked', 'approximate'])
@pytest.mark.parametrize('n_refs', [1, 3])
@pytest.mark.parametrize('how', ['untiled', 'tiled', 'budget'])
def test_reused_encodings_give_the_bit_identical_result(net, mode, n_refs, how, one_thread, monkeypatch):
    lr, refs = three_refs()
    refs = refs[:n_refs]
    kwargs = dict({'untiled': {}, 'tiled': TILED, 'budget': BUDGET}[how], search_mode=mode)
    if mode == 'approximate':
        kwargs['approximate'] = APPROX
    made = []  # the approximate search's reduced indices made (one per reference and encoding)
    build = approximate._reduced_reference
    monkeypatch.setattr(approximate, '_reduced_reference', lambda *a, **kw: made.append(1) or build(*a, **kw))
    fresh = run_refsr(net, lr, refs, **kwargs)
    cache = ReferenceCache()
    first = run_refsr(net, lr, refs, reference_cache=cache, **kwargs)
    assert cache.stats().total_hits == 0 and cache.stats().misses == {'keys': n_refs, 'textures': n_refs}
    # approximate: each reference's index was made once per encoding, with its keys (none by the searches)
    assert len(made) == (2 * n_refs if mode == 'approximate' else 0)
    again = run_refsr(net, lr, refs, reference_cache=cache, **kwargs)
    stats = cache.stats()
    assert stats.hits == {'keys': n_refs, 'textures': n_refs}, stats  # everything came from the cache
    assert torch.equal(first, fresh) and torch.equal(again, fresh)
    # another LR with the same references: the same as encoding them for it
    other = torch.rand(1, 3, 16, 24)
    assert torch.equal(run_refsr(net, other, refs, reference_cache=cache, **kwargs),
                       run_refsr(net, other, refs, **kwargs))
    # the cached indices served the second and third runs: only the last, fresh one made new ones
    assert len(made) == (3 * n_refs if mode == 'approximate' else 0)


def test_tile_size_is_not_part_of_the_key(net, one_thread):
    """The encodings never see the main network's tiles: entries made untiled serve a tiled run, exactly."""
    lr, refs = three_refs()
    cache = ReferenceCache()
    run_refsr(net, lr, refs, search_mode='chunked', reference_cache=cache)
    tiled = run_refsr(net, lr, refs, search_mode='chunked', reference_cache=cache, **TILED)
    assert cache.stats().hits == {'keys': 3, 'textures': 3}
    assert torch.equal(tiled, run_refsr(net, lr, refs, search_mode='chunked', **TILED))


def test_entries_are_keyed_by_what_changes_the_encoding(net, one_thread):
    lr, refs = three_refs()
    cache = ReferenceCache()
    run_refsr(net, lr, refs[0], search_mode='chunked', reference_cache=cache)
    # the dense transfer reads another layout of the textures, and the dense search's keys are the bare ones (the
    # chunked search's carry its key blocks); the bare keys do not depend on the method (none prepares)
    dense = run_refsr(net, lr, refs[0], search_mode='dense', reference_cache=cache)
    stats = cache.stats()
    assert stats.hits == {'keys': 0, 'textures': 0} and stats.misses == {'keys': 2, 'textures': 2}
    assert torch.equal(dense, run_refsr(net, lr, refs[0], search_mode='dense'))
    # another geometry: the same padded reference, the same keys; the result is the fresh one
    geo = dict(search_mode='chunked', search_geometry=(12, 4, 4))
    assert torch.equal(run_refsr(net, lr, refs[0], reference_cache=cache, **geo), run_refsr(net, lr, refs[0], **geo))
    # the same content in another tensor is found; another content, or dtype, is not
    run_refsr(net, lr, refs[0].clone(), search_mode='chunked', reference_cache=cache)
    before = cache.stats()
    changed = refs[0].clone()
    changed[0, 0, 0, 0] += 1e-3
    run_refsr(net, lr, changed, search_mode='chunked', reference_cache=cache)
    after = cache.stats()
    assert after.misses['keys'] == before.misses['keys'] + 1
    assert tensor_digest(refs[0]) != tensor_digest(refs[0].double())
    assert tensor_digest(refs[0]) != tensor_digest(refs[0], refs[0])  # with its down-up version: another key
    with pytest.raises(ValueError, match='serves one network'):
        run_refsr(tiny_net(seed=1), lr, refs[0], reference_cache=cache)


@pytest.mark.parametrize('n_refs', [1, 3])
@pytest.mark.parametrize('how', ['untiled', 'tiled', 'budget'])
def test_chunked_key_blocks_are_prepared_once_per_reference_and_reused(net, n_refs, how, monkeypatch, one_thread):
    """With a cache, the chunked search's normalised key blocks are made once per reference (with its keys) and
    every later LR image's search is given them: bit-identical to the search that makes its own."""
    lr, refs = three_refs()
    refs = refs[:n_refs]
    kwargs = {'untiled': {}, 'tiled': TILED, 'budget': BUDGET}[how]
    other = torch.rand(1, 3, 16, 24)
    fresh = [run_refsr(net, x, refs, search_mode='chunked', **kwargs) for x in (lr, other)]
    made, given = [], []
    real_prepare, real_search = exact.prepare_key_blocks, exact.chunked_search
    monkeypatch.setattr(exact, 'prepare_key_blocks', lambda keys, spec: made.append(1) or real_prepare(keys, spec))
    monkeypatch.setattr(exact, 'chunked_search',
                        lambda *a, **k: given.append(a[-1] is not None) or real_search(*a, **k))
    cache = ReferenceCache()
    first = run_refsr(net, lr, refs, search_mode='chunked', reference_cache=cache, return_aux=True, **kwargs)
    assert first.spec.cache_keys and (how != 'budget' or first.plan.cache_keys)
    prepared = sum(first.spec.search_method.prepared_bytes((h // 4, w // 4), 256, first.spec)
                   for h, w in first.padded_ref_hw)
    assert prepared > 0 and cache.stats().bytes > prepared  # held with the keys and the textures
    again = run_refsr(net, other, refs, search_mode='chunked', reference_cache=cache, **kwargs)
    assert len(made) == n_refs and given == [True] * (2 * n_refs)  # made once, given to both LR images' searches
    assert cache.stats().hits == {'keys': n_refs, 'textures': n_refs}
    assert torch.equal(first.sr, fresh[0]) and torch.equal(again, fresh[1])


def test_key_blocks_are_cached_only_where_they_fit(net, one_thread):
    """A cache whose cap holds the keys and textures but not the key blocks too: no blocks (the keys and textures
    are reused as before); the same under a budget whose plan leaves the cache no room for them."""
    lr, refs = three_refs()
    res = run_refsr(net, lr, refs, search_mode='chunked', reference_cache=ReferenceCache(), return_aux=True)
    sizes = res.padded_ref_hw
    without = cached_reference_bytes(res.spec.replace(cache_keys=False), sizes)
    assert cached_reference_bytes(res.spec, sizes) > without
    small = ReferenceCache(max_bytes=without)
    res = run_refsr(net, lr, refs, search_mode='chunked', reference_cache=small, return_aux=True)
    assert not res.spec.cache_keys
    run_refsr(net, lr, refs, search_mode='chunked', reference_cache=small)
    assert small.stats().hits['keys'] == 3  # the bare keys still reused
    plain = run_refsr(net, lr, refs, search_mode='chunked', max_memory='400M', tile={'tile_pad': 8},
                      return_aux=True)
    blocks = cached_reference_bytes(res.spec.replace(cache_keys=True), sizes) - without
    tight = plain.plan.estimate + blocks * 3 // 2  # fits the plan with the blocks, not a cache that keeps them
    res = run_refsr(net, lr, refs, search_mode='chunked', max_memory=tight, tile={'tile_pad': 8},
                    reference_cache=ReferenceCache(), return_aux=True)
    assert not res.plan.cache_keys and not res.spec.cache_keys
    assert torch.equal(res.sr, run_refsr(net, lr, refs, search_mode='chunked', max_memory=tight,
                                         tile={'tile_pad': 8}))


def test_every_method_that_prepares_states_what_it_depends_on():
    for name in method_names():
        method = type(get_method(name))
        if method.prepare is not SearchMethod.prepare:
            assert method.prepare_key is not SearchMethod.prepare_key, f'{name} prepares keys without prepare_key'


def test_least_recently_used_go_first_within_the_cap(net, one_thread):
    lr, refs = three_refs()
    sizes = []
    for r in refs:  # what one reference's entries weigh
        probe = ReferenceCache()
        run_refsr(net, lr, r, search_mode='chunked', reference_cache=probe)
        sizes.append(probe.stats().bytes)
    cap = sizes[1] + sizes[2]  # the last two fit, not all three (refs[0] fits beside refs[1])
    assert sizes[0] <= sizes[2] and cap < sum(sizes)
    cache = ReferenceCache(max_bytes=cap)
    for r in refs:
        run_refsr(net, lr, r, search_mode='chunked', reference_cache=cache)
        assert cache.stats().bytes <= cap
    stats = cache.stats()  # refs[0], the least recently used, made room for refs[2]
    assert stats.evictions == 2 and stats.entries == 4 and stats.bytes == sizes[1] + sizes[2]
    run_refsr(net, lr, refs[1], search_mode='chunked', reference_cache=cache)  # still there, now the most recent
    assert cache.stats().hits == {'keys': 1, 'textures': 1}
    run_refsr(net, lr, refs[0], search_mode='chunked', reference_cache=cache)  # was evicted: encoded again
    assert cache.stats().hits == {'keys': 1, 'textures': 1} and cache.stats().evictions == 4
    run_refsr(net, lr, refs[1], search_mode='chunked', reference_cache=cache)  # kept: refs[2] went instead
    assert cache.stats().hits == {'keys': 2, 'textures': 2}
    run_refsr(net, lr, refs[2], search_mode='chunked', reference_cache=cache)
    assert cache.stats().hits == {'keys': 2, 'textures': 2}
    nothing = ReferenceCache(max_bytes=0)  # keeps nothing, counts everything
    run_refsr(net, lr, refs, search_mode='chunked', reference_cache=nothing)
    run_refsr(net, lr, refs, search_mode='chunked', reference_cache=nothing)
    assert nothing.stats().total_hits == 0 and nothing.stats().not_kept == 12 and nothing.stats().entries == 0


def test_under_a_budget_the_cache_holds_only_what_the_plan_leaves(net, one_thread):
    lr, refs = three_refs()
    cache = ReferenceCache()
    res = run_refsr(net, lr, refs, reference_cache=cache, return_aux=True, **BUDGET)
    room = res.plan.budget - res.plan.estimate
    assert 0 < cache.stats().bytes <= room
    tight = ReferenceCache()  # a budget the plan nearly fills: the cache keeps less, the result is the same
    budget = res.plan.estimate + cache.stats().bytes // 2
    small = run_refsr(net, lr, refs, reference_cache=tight, max_memory=budget, tile={'tile_pad': 8},
                      return_aux=True)
    assert tight.stats().bytes <= small.plan.budget - small.plan.estimate
    assert tight.stats().bytes < cache.stats().bytes
    assert torch.equal(small.sr, run_refsr(net, lr, refs, max_memory=budget, tile={'tile_pad': 8}))


def test_bytes_are_counted_from_the_storages():
    a = torch.zeros(10, 10)
    assert held_bytes([a, a[2:], {'b': torch.zeros(3, dtype=torch.float64)}]) == 400 + 24  # a view: once


def test_a_folder_with_one_reference_encodes_it_once(net, tmp_path, one_thread):
    rng = np.random.default_rng(0)
    (tmp_path / 'lr').mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (14 + 2 * i, 18, 3), dtype=np.uint8)).save(tmp_path / 'lr' / f'f{i}.png')
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / 'ref.png')
    dataset = RefSRInferenceDataset({'dataroot_lq': str(tmp_path / 'lr'), 'ref_path': str(tmp_path / 'ref.png'),
                                     'stride': 2})
    report = infer_folder(net, dataset, tmp_path / 'out', {})
    assert len(report.written) == 4
    stats = report.reference_cache
    assert stats.misses == {'keys': 1, 'textures': 1} and stats.hits == {'keys': 3, 'textures': 3}
    # the outputs are those of encoding the reference for every frame
    nocache = infer_folder(net, dataset, tmp_path / 'out2', {}, reference_cache=ReferenceCache(max_bytes=0))
    assert nocache.reference_cache.total_hits == 0
    for a, b in zip(report.written, nocache.written):
        assert np.array_equal(np.asarray(Image.open(a['sr'])), np.asarray(Image.open(b['sr'])))
    # references that no two inputs share: nothing to reuse, no cache (and no memory held for one)
    (tmp_path / 'refs').mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(tmp_path / 'refs' / f'f{i}.png')
    own = RefSRInferenceDataset({'dataroot_lq': str(tmp_path / 'lr'), 'dataroot_ref': str(tmp_path / 'refs'),
                                 'stride': 2})
    assert infer_folder(net, own, tmp_path / 'out3', {}).reference_cache is None


@pytest.mark.slow
def test_the_benchmark_runs_at_its_quick_size(tmp_path):
    from tests.bench_helpers import run_benchmark

    proc = run_benchmark('reference_reuse', '--quick', '--threads', '1', '--out', tmp_path / 'rr')
    assert proc.returncode == 0, proc.stderr
    assert 'Speed-up with reuse' in proc.stdout
    assert {p.name for p in (tmp_path / 'rr').iterdir()} == {'results.csv', 'results.md', 'reuse.png'}
    proc = run_benchmark('reference_reuse', '--quick', '--out', tmp_path / 'rr')  # results are kept
    assert proc.returncode != 0 and '--overwrite' in proc.stderr
