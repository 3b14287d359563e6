"""The approximate search: equal to the exact search where its candidates cover everything, finds a known shift,
returns exact relevances, respects its memory knobs, and the recall helpers count ties as the benchmark does."""

import pytest
import torch
import torch.nn.functional as F

from extracter.archs.search_transfer import SearchTransfer
from extracter.inference.reference_cache import held_bytes
from extracter.search import SearchSpec, get_method, search_references
from extracter.search.methods import approximate as approximate_module
from extracter.search.methods.approximate import (
    ApproximateSettings,
    ReducedIndex,
    approximate_search,
    exact_search_queries,
    grid_size,
    prepare_reduced_index,
    recall_at_1,
    recall_at_k,
)

ATOL = 1e-5
# small retrieval dimensions for the 16-channel test features
SMALL = dict(channel_dims=8, patch_dims=32, candidates=3)


def _features(shape, seed):
    """Non-negative, spatially correlated features (like relu3_1): ReLU of smoothed noise."""
    g = torch.Generator().manual_seed(seed)
    return F.relu(F.avg_pool2d(torch.randn(*shape, generator=g), 3, stride=1, padding=1) + 0.1)


def _exact(lr, ref, geometry, top_k):
    return SearchTransfer(*geometry, top_k=top_k, mode='chunked').search(lr, ref)


def _relevance(lr, ref, geometry, index):
    """The cosine relevance of every LR patch with the reference patches at ``index`` [N, k, L], recomputed from
    normalised unfolded patches (TTSR Eq. 4)."""
    k, s, p = geometry
    q = F.normalize(F.unfold(lr, k, padding=p, stride=s), dim=1)
    r = F.normalize(F.unfold(ref, k, padding=p, stride=s), dim=1)
    out = []
    for rank in range(index.size(1)):
        picked = torch.gather(r, 2, index[:, rank:rank + 1].expand(-1, r.size(1), -1))
        out.append((q * picked).sum(1))
    return torch.stack(out, 1)


CASES = [  # geometry, top_k, LR / reference feature sizes (non-square), tile
    ((3, 1, 1), 1, (9, 13), (11, 8), 4),
    ((3, 1, 1), 3, (10, 7), (8, 12), 3),
    ((6, 2, 2), 2, (12, 18), (14, 10), 2),
    ((6, 2, 2), 3, (16, 10), (10, 16), 5),
]


# the exact step on every candidate; or the prefilter (down to top_k per query) on channel-reduced patches that keep
# every channel (an orthogonal projection: the reduced relevance is the exact one), so nothing is lost either way
PREFILTERS = [dict(SMALL, prefilter=0), dict(SMALL, prefilter=1, channel_dims=16)]


@pytest.mark.parametrize('prefilter', PREFILTERS, ids=['prefilter-off', 'prefilter-lossless'])
@pytest.mark.parametrize('geometry,top_k,lr_hw,ref_hw,tile', CASES)
def test_windows_covering_everything_equal_exact(geometry, top_k, lr_hw, ref_hw, tile, prefilter):
    lr, ref = _features((2, 16, *lr_hw), 0), _features((2, 16, *ref_hw), 1)
    n_keys = grid_size(*ref_hw, *geometry)
    # the tiled path, with windows as large as the reference grid
    approx = approximate_search(lr, ref, *geometry, top_k, fallback=False, max_candidates=n_keys[0] * n_keys[1],
                                jitter=max(n_keys), tile=tile, **prefilter)
    exact = _exact(lr, ref, geometry, top_k)
    gh, gw = grid_size(*lr_hw, *geometry)
    assert approx[0].shape == approx[1].shape == (2, top_k, gh * gw)
    torch.testing.assert_close(approx[0], exact[0], atol=ATOL, rtol=0)
    # indices equal except where two reference patches tie within float rounding
    differs = approx[1] != exact[1]
    assert differs.float().mean() < 0.01
    torch.testing.assert_close(approx[0][differs], exact[0][differs], atol=ATOL, rtol=0)


@pytest.mark.parametrize('geometry', [(3, 1, 1), (6, 2, 2)])
def test_small_inputs_fall_back_to_exact(geometry):
    lr, ref = _features((1, 16, 10, 12), 2), _features((1, 16, 12, 10), 3)
    exact = _exact(lr, ref, geometry, 2)
    for kwargs in ({}, {'exact_below': 0, 'max_candidates': 120}):  # small product; candidates cover all
        scores, index = approximate_search(lr, ref, *geometry, 2, **kwargs)
        assert torch.equal(index, exact[1])
        torch.testing.assert_close(scores, exact[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize('refine', [0, 16])
@pytest.mark.parametrize('geometry,shift', [((3, 1, 1), (3, 5)), ((6, 2, 2), (4, 6))])
def test_finds_a_shifted_copy(geometry, shift, refine):
    """The reference contains the LR features shifted by a few pixels: the top-1 of every interior LR patch (not
    touching the zero padding) must be the shifted position."""
    k, s, p = geometry
    dy, dx = shift
    big = _features((1, 32, 40, 44), 4)
    lr = big[:, :, 8:32, 6:34]  # 24 x 28
    ref = big[:, :, 8 - dy:40 - dy, 6 - dx:42 - dx]  # 32 x 36, holds the LR at (dy, dx)
    gh, gw = grid_size(24, 28, *geometry)
    rgh, rgw = grid_size(32, 36, *geometry)
    scores, index = approximate_search(lr, ref, *geometry, 1, fallback=False, max_candidates=256,
                                       channel_dims=16, patch_dims=64, candidates=4, refine=refine)
    gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing='ij')
    expected = (gy + dy // s) * rgw + gx + dx // s
    interior = ((gy * s - p >= 0) & (gy * s - p + k <= 24) & (gx * s - p >= 0) & (gx * s - p + k <= 28)).view(-1)
    hit = index[0, 0] == expected.view(-1)
    assert hit[interior].float().mean() >= 0.98
    torch.testing.assert_close(scores[0, 0, interior & hit], torch.ones(int((interior & hit).sum())), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize('top_k,refine,prefilter', [(1, 0, 0), (2, 0, 0), (3, 0, 0), (2, 9, 0), (1, 9, 1),
                                                     (3, 0, 2)])
def test_scores_are_exact_relevances_and_sorted(top_k, refine, prefilter):
    """With the prefilter on (1, 2: below the tiles' candidates per query; at least top_k is kept) as well."""
    geometry = (6, 2, 2)
    lr, ref = _features((2, 16, 20, 14), 5), _features((2, 16, 18, 22), 6)
    scores, index = approximate_search(lr, ref, *geometry, top_k, fallback=False, max_candidates=20, tile=3,
                                       refine=refine, prefilter=prefilter, **SMALL)
    torch.testing.assert_close(scores, _relevance(lr, ref, geometry, index), atol=ATOL, rtol=0)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    # distinct reference patches per LR patch
    for a in range(top_k):
        for b in range(a + 1, top_k):
            assert (index[:, a] != index[:, b]).all()
    # never better than the exact search, and close to it on these smooth features
    exact = _exact(lr, ref, geometry, top_k)
    assert (scores[:, 0] <= exact[0][:, 0] + ATOL).all()


def test_max_candidates_bounds_every_tile():
    """A tile's LR patches choose among at most ``max_candidates`` reference patches (the memory bound)."""
    geometry, tile, cap = (3, 1, 1), 4, 5
    lr, ref = _features((1, 16, 12, 16), 7), _features((1, 16, 14, 14), 8)
    scores, index = approximate_search(lr, ref, *geometry, 3, fallback=False, max_candidates=cap, tile=tile,
                                       jitter=2, **SMALL)
    gh, gw = grid_size(12, 16, *geometry)
    idx = index[0].view(3, gh, gw)
    for y0 in range(0, gh, tile):
        for x0 in range(0, gw, tile):
            assert idx[:, y0:y0 + tile, x0:x0 + tile].unique().numel() <= cap
    # the retrieval block size changes memory, not the result
    again = approximate_search(lr, ref, *geometry, 3, fallback=False, max_candidates=cap, tile=tile, jitter=2,
                               query_chunk_size=7, **SMALL)
    assert torch.equal(again[1], index)
    with pytest.raises(ValueError):
        approximate_search(lr, ref, *geometry, 3, max_candidates=2)
    with pytest.raises(ValueError):
        approximate_search(lr, ref[:, :, :2, :2], *geometry, 5)


# the approximate path on a reference of 30 x 26 features: its patch PCA fitted on a random sample (c' k^2 > d),
# re-scoring (refine) and the prefilter; several descriptor bands (query_chunk_size)
PREPARED = dict(SMALL, fallback=True, exact_below=0, max_candidates=24, tile=3, refine=6, prefilter=2)


@pytest.mark.parametrize('geometry', [(3, 1, 1), (6, 2, 2)])
@pytest.mark.parametrize('backend', ['torch', 'faiss'])
def test_a_prepared_index_gives_the_bit_identical_result(geometry, backend):
    """The reduced index made once (batch of 2: the PCA's samples drawn element after element) and read by several
    searches equals every search computing it itself, bit for bit; it belongs to its settings and reference."""
    if backend == 'faiss' and not approximate_module.faiss_available():
        pytest.skip('the faiss backend needs the optional package faiss-cpu')
    cfg = ApproximateSettings(backend=backend, **PREPARED)
    ref = _features((2, 16, 30, 26), 11)
    index = prepare_reduced_index(ref, *geometry, cfg, query_chunk_size=7)
    assert isinstance(index, ReducedIndex) and len(index.refs) == 2
    assert index.refs[0].patch_proj is not None  # the randomly sampled patch PCA is part of it
    for seed, lr_hw in ((12, (20, 24)), (13, (16, 34))):  # two LR maps reuse one index
        lr = _features((2, 16, *lr_hw), seed)
        fresh = approximate_search(lr, ref, *geometry, 2, cfg, query_chunk_size=7)
        reused = approximate_search(lr, ref, *geometry, 2, cfg, query_chunk_size=7, prepared=index)
        assert torch.equal(reused[0], fresh[0]) and torch.equal(reused[1], fresh[1])
    # the second batch element's own index differs from the first's (its own PCA), and is used as such
    assert not torch.equal(index.refs[0].keys_t, index.refs[1].keys_t)
    # an index of other settings, block size or reference is refused
    for other in (dict(seed=1), dict(channel_dims=4), dict(query_chunk_size=8)):
        chunk = other.pop('query_chunk_size', 7)
        with pytest.raises(ValueError, match='prepared reduced index'):
            approximate_search(lr, ref, *geometry, 2, cfg, query_chunk_size=chunk, prepared=index, **other)
    with pytest.raises(ValueError, match='prepared reduced index'):
        approximate_search(lr, ref[:1], *geometry, 2, cfg, query_chunk_size=7, prepared=index)
    # a reference every search of which runs the exact search has nothing to prepare
    assert prepare_reduced_index(ref[:, :, :4, :4], *geometry, cfg) is None


def test_the_method_prepares_its_index_and_states_its_bytes():
    """Through the search-method contract: ``prepare`` makes the index (None for a small reference), the searches
    of one or several references with it equal those without, and ``prepared_bytes`` is what the index holds."""
    method = get_method('approximate')
    spec = SearchSpec('approximate', 6, 2, 2, chunk_size=9, approximate=ApproximateSettings(**PREPARED))
    refs = [_features((1, 16, 30, 26), 14), _features((1, 16, 24, 36), 15)]
    lr = _features((1, 16, 20, 22), 16)
    prepared = [method.prepare(r, spec) for r in refs]
    for ref, index in zip(refs, prepared):
        assert isinstance(index, ReducedIndex)
        assert method.prepared_bytes(tuple(ref.shape[-2:]), 16, spec) == held_bytes(index)
    for keys, prep in ((refs[0], [prepared[0]]), (refs, prepared)):
        with_index = search_references(lr, keys, spec, 2, prep)
        without = search_references(lr, keys, spec, 2)
        assert torch.equal(with_index[0], without[0]) and torch.equal(with_index[1], without[1])
    small = _features((1, 16, 8, 8), 17)
    assert method.prepare(small, spec) is None and method.prepared_bytes((8, 8), 16, spec) == 0
    # what the index depends on is its key: another block size or seed, another key; the tiles' settings, not
    assert method.prepare_key(spec) != method.prepare_key(spec.replace(chunk_size=10))
    assert method.prepare_key(spec) != method.prepare_key(
        spec.replace(approximate=ApproximateSettings(**dict(PREPARED, seed=3))))
    assert method.prepare_key(spec) == method.prepare_key(
        spec.replace(approximate=ApproximateSettings(**dict(PREPARED, tile=5, jitter=2))))


def test_exact_search_queries_equals_chunked_on_its_subset():
    geometry = (6, 2, 2)
    lr, ref = _features((2, 16, 14, 10), 9), _features((2, 16, 12, 16), 10)
    exact = _exact(lr, ref, geometry, 2)
    subset = torch.tensor([0, 3, 7, 20, 34])
    scores, index = exact_search_queries(lr, ref, *geometry, 2, subset, key_chunk_size=5, query_chunk_size=2)
    assert torch.equal(index, exact[1][:, :, subset])
    torch.testing.assert_close(scores, exact[0][:, :, subset], atol=ATOL, rtol=0)


def test_recall_counts_ties_within_tolerance():
    exact = (torch.tensor([[[0.9, 0.8, 0.7], [0.5, 0.4, 0.3]]]), torch.tensor([[[1, 2, 3], [4, 5, 6]]]))
    # patch 0: same index; patch 1: another index within 1e-4 (a tie); patch 2: another index, clearly worse
    approx = (torch.tensor([[[0.9, 0.79995, 0.6], [0.5, 0.4, 0.3]]]), torch.tensor([[[1, 9, 8], [4, 5, 6]]]))
    assert recall_at_1(approx, exact) == pytest.approx(2 / 3)
    # rank 2: indices all found (same, tie-equal score at patch 1 counts via the k-th score, patch 2 via index 6)
    assert recall_at_k(approx, exact) == pytest.approx(5 / 6)


def test_settings_defaults_follow_the_geometry_and_bad_values_name_the_field():
    default = ApproximateSettings()
    # 8 matches per feature pixel of stride (the reference sub-grid is key_step patches apart)
    assert (default.resolved_candidates(1), default.resolved_candidates(2)) == (8, 16)
    assert ApproximateSettings(candidates=5).resolved_candidates(2) == 5
    assert ApproximateSettings(prefilter=0).prefilter == 0
    for field, value in (('prefilter', -1), ('candidates', 0), ('key_step', None), ('refine', 1.5)):
        with pytest.raises(ValueError, match=f'^{field} must be an integer'):
            ApproximateSettings(**{field: value})
