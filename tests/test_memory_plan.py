"""The memory-budget planner: budget parsing, its choices, and its refusals."""

import math

import pytest
import torch

from extracter.archs.extracter_arch import Extracter
from extracter.inference.engine import run_refsr
from extracter.inference.memory_plan import (
    DEFAULT_CHUNK,
    DEFAULT_KEY_CHUNK,
    MIN_CHUNK,
    MIN_KEY_CHUNK,
    MemoryBudgetError,
    NetSpec,
    estimate,
    parse_memory,
    plan_memory,
    reuse_fits,
    tile_work,
)

# the released EXTRACTER size with the paper's geometry (window 6 / stride 2), without building it
RELEASED = NetSpec('Extracter', n_params=9_426_447, n_feats=64, top_k=2, window=6, stride=2, padding=2,
                   main_maps_per_lr_px=Extracter.descriptor.main_maps_per_lr_px)


@pytest.mark.parametrize('text,expected', [('6G', 6 * 2 ** 30), ('512M', 512 * 2 ** 20), ('1.5GB', 3 * 2 ** 29),
                                           ('2GiB', 2 * 2 ** 30), ('100k', 102400), (12345, 12345), ('7', 7)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize('bad', ['', 'lots', '6X', '-1G', 0, '0G'])
def test_parse_memory_rejects(bad):
    with pytest.raises(ValueError, match='max_memory'):
        parse_memory(bad)


def test_small_request_runs_untiled_with_default_chunks():
    plan = plan_memory(RELEASED, (64, 64), (256, 256), '6G')
    assert plan.tile_size is None and plan.search_mode == 'chunked'
    assert (plan.chunk_size, plan.key_chunk_size) == (DEFAULT_CHUNK, DEFAULT_KEY_CHUNK)
    assert plan.estimate <= plan.budget


def test_tighter_budgets_tile_smaller_and_stay_within_budget():
    tiles = []
    for budget in ('4G', '3G', '2G'):
        plan = plan_memory(RELEASED, (256, 256), (1024, 1024), budget)
        assert plan.estimate <= parse_memory(budget)
        assert plan.tile_size is not None and plan.tile_size % RELEASED.stride == 0
        assert plan.tile_pad % RELEASED.stride == 0
        tiles.append(plan.tile_size)
    assert tiles[0] >= tiles[1] >= tiles[2] and tiles[0] > tiles[2]  # equal tiles: sizes come in steps
    # the 2048x2048 case of the issue fits 6G, tiled
    plan = plan_memory(RELEASED, (512, 512), (2048, 2048), '6G')
    assert plan.tile_size is not None and plan.estimate <= 6 * 2 ** 30


def test_estimates_grow_with_size_and_dense_is_quadratic():
    sizes = (128, 256, 512)
    dense = [estimate(RELEASED, (s, s), (4 * s, 4 * s), mode='dense')['search_blocks'] for s in sizes]
    chunked = [estimate(RELEASED, (s, s), (4 * s, 4 * s))['search_blocks'] for s in sizes]
    assert dense[2] / dense[1] > 5  # 4x the pixels: the relevance matrix (patches^2) takes over
    assert chunked[2] / chunked[1] < 2  # blocks of fixed size
    parts = estimate(RELEASED, (256, 256), (1024, 1024), cache_keys=True)
    assert parts['cached_keys'] == 4 * 256 * 36 * 128 * 128


def test_refusals_say_why():
    with pytest.raises(MemoryBudgetError, match=r'encoded 4096x4096 reference.*relu1_1 recomputed.*raise max_memory'):
        plan_memory(RELEASED, (1024, 1024), (4096, 4096), '2G', search_mode='approximate')
    with pytest.raises(MemoryBudgetError, match=r'tile_size=256.*smaller tile'):
        plan_memory(RELEASED, (512, 512), (1024, 1024), '2G', tile=(256, 16))
    with pytest.raises(MemoryBudgetError, match=r'dense search.*chunked'):
        plan_memory(RELEASED, (512, 512), (2048, 2048), '16G', search_mode='dense')


@pytest.mark.parametrize('lr_hw,ref_hw,budget', [((512, 512), (2048, 2048), '6G'), ((512, 512), (2048, 2048), '8G'),
                                                  ((256, 384), (1024, 1024), '3G'), ((300, 200), (512, 768), '2G')])
def test_planner_tiles_with_the_least_main_network_work_that_fits(lr_hw, ref_hw, budget):
    """The tiles' context is recomputed, so among the tile sizes that fit (with the smallest search blocks) the plan
    has the least work: every other size that fits processes at least as many LR pixels."""
    plan = plan_memory(RELEASED, lr_hw, ref_hw, budget)
    assert plan.tile_size is not None and plan.estimate <= parse_memory(budget)
    mult, pad = RELEASED.stride, plan.tile_pad
    chosen = tile_work(lr_hw, plan.tile_size, pad, mult)
    fitting = [size for size in range(mult, max(lr_hw), mult)
               if any(estimate(RELEASED, lr_hw, ref_hw, 'chunked', MIN_CHUNK, MIN_KEY_CHUNK, False, (size, pad),
                               lv1)['total'] <= parse_memory(budget) for lv1 in ('stored', 'recomputed'))]
    assert plan.tile_size in fitting
    assert chosen == min(tile_work(lr_hw, size, pad, mult) for size in fitting)


def test_tile_work_counts_each_tile_with_its_context():
    assert tile_work((512, 512), 128, 16, 2) == (512 + 2 * 16 * 3) ** 2  # 4 tiles per side: 3 inner borders
    assert tile_work((512, 512), 104, 16, 2) == (512 + 2 * 16 * 4) ** 2  # 104 + a remainder of 96: 5 per side
    assert tile_work((100, 60), 100, 16, 2) == 100 * 60


def test_given_tile_is_kept_and_rounded_to_the_stride():
    plan = plan_memory(RELEASED, (256, 256), (1024, 1024), '4G', tile=(63, 5))
    assert (plan.tile_size, plan.tile_pad) == (62, 6)


def test_run_refsr_with_a_budget_tiles_and_agrees_with_untiled():
    torch.manual_seed(0)
    net = Extracter(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=16, top_k=2, dfe_init='random',
                    window=6, stride=2, padding=2).eval()
    lr, ref = torch.rand(1, 3, 32, 24), torch.rand(1, 3, 64, 64)
    spec = NetSpec.from_net(net)
    assert (spec.n_feats, spec.top_k, spec.stride) == (16, 2, 2)
    # below what the untiled run needs even with the smallest search blocks: the planner must tile
    untiled_need = estimate(spec, (32, 24), (64, 64), chunk=MIN_CHUNK, key_chunk=MIN_KEY_CHUNK)['total']
    budget = int(untiled_need * 0.9)
    pad = net.min_tile_pad + net.min_tile_pad % 2  # at least the network's floor, a multiple of the stride
    sr, plan = run_refsr(net, lr, ref, max_memory=budget, tile={'tile_pad': pad}, return_plan=True)
    assert plan.tile_size is not None and plan.tile_pad == pad and plan.search_mode == 'chunked'
    assert plan.estimate <= budget
    full = run_refsr(net, lr, ref)
    mse = float(((sr - full) ** 2).mean())
    assert mse == 0 or 10 * math.log10(1 / mse) >= 50
    assert net.search_transfer.mode == 'dense'  # restored
    with pytest.raises(MemoryBudgetError, match='max_memory'):
        run_refsr(net, lr, ref, max_memory=spec.n_params * 4)


def test_reuse_caches_the_key_blocks_where_the_cache_has_room():
    """With a cache of encoded references (reuse), the key blocks are prepared once per reference even for one
    block of LR patches, where the plan with them fits and leaves the cache room for what it keeps."""
    lr, ref = (64, 64), (256, 256)  # one block of LR patches: nothing to gain within one search
    plain = plan_memory(RELEASED, lr, ref, '4G')
    assert not plain.cache_keys and plain.parts['cached_keys'] == 0
    reused = plan_memory(RELEASED, lr, ref, '4G', reuse=True)
    assert reused.cache_keys and reuse_fits(reused.parts, reused.budget)
    # the blocks are made as each reference's keys are encoded: both peaks that hold the keys count them
    assert reused.parts['keys_peak'] - plain.parts['keys_peak'] == reused.parts['cached_keys'] > 0
    tight = plan_memory(RELEASED, lr, ref, reused.estimate, reuse=True)  # fits, but leaves the cache no room
    assert not tight.cache_keys and not reuse_fits(reused.parts, reused.estimate)
