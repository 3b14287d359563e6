"""The one inference engine: several references in every search mode, with tiles and budgets; the texture map is the
run's own search; folder inference (collisions, --skip-existing, torchrun sharding and its shared folder lock); the
options' one route."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from extracter.archs.extracter_arch import Extracter
from extracter.archs.search_transfer import split_index
from extracter.infer import InferenceError, run
from extracter.inference import InferenceOptionError, InferenceOptions, run_refsr
from extracter.inference.folder import output_stems
from extracter.options.schema import OptionError, validate_options

REPO = Path(__file__).resolve().parents[1]
NET_OPT = dict(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, top_k=2, window=6, stride=2,
               padding=2, dfe_init='random')


def tiny_net(seed: int = 0) -> Extracter:
    torch.manual_seed(seed)
    return Extracter(**NET_OPT).eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float('inf') if mse == 0 else 10 * np.log10(1 / mse)


def three_refs():
    torch.manual_seed(1)
    lr = torch.rand(1, 3, 20, 28)
    return lr, [torch.rand(1, 3, 48, 64), torch.rand(1, 3, 40, 40), torch.rand(1, 3, 72, 56)]


def test_several_references_chunked_tiled_and_budgeted_equal_dense_untiled():
    net = tiny_net()
    lr, refs = three_refs()
    dense = run_refsr(net, lr, refs, search_mode='dense', return_aux=True)
    chunked = run_refsr(net, lr, refs, search_mode='chunked', chunk_size=7, key_chunk_size=11, return_aux=True)
    assert torch.equal(chunked.index, dense.index)
    torch.testing.assert_close(chunked.sr, dense.sr, atol=2e-6, rtol=0)
    tiled = run_refsr(net, lr, refs, tile={'tile_size': 8, 'tile_pad': 6}, return_aux=True)
    assert torch.equal(tiled.index, dense.index)  # one search for the whole LR, whatever the tiles
    assert psnr(tiled.sr, dense.sr) > 50
    budget = run_refsr(net, lr, refs, max_memory='80M', tile={'tile_pad': 6}, return_aux=True)
    assert budget.plan is not None and budget.plan.search_mode == 'chunked'
    assert torch.equal(budget.index, dense.index)
    assert psnr(budget.sr, dense.sr) > 50
    # every reference contributes somewhere, and the union's top-1 beats each reference's own
    ref_id, local = split_index(dense.index[0, 0], dense.patch_counts)
    assert set(ref_id.tolist()) == {0, 1, 2}
    for r, ref in enumerate(refs):
        own = run_refsr(net, lr, ref, return_aux=True)
        assert (dense.scores[0, 0] >= own.scores[0, 0] - 1e-6).all()
        mine = ref_id == r
        assert torch.equal(local[mine], own.index[0, 0][mine])


def test_one_reference_in_a_list_is_the_plain_forward():
    net = tiny_net()
    lr, refs = three_refs()
    ref = refs[0]
    with torch.no_grad():
        expected = net(lr, ref)
    torch.testing.assert_close(run_refsr(net, lr, [ref]), expected, atol=0, rtol=0)


def test_stage_and_progress_callbacks_report_each_stage_in_order():
    net = tiny_net()
    lr, refs = three_refs()
    events = []
    run_refsr(net, lr, refs[:2], stage=lambda text: events.append(text))
    assert events == ['encoding reference 1/2', 'encoding reference 2/2', 'search', 'textures', 'main network']
    events.clear()
    run_refsr(net, lr, refs[:1], tile={'tile_size': 8, 'tile_pad': 2}, stage=events.append,
              progress=lambda done, total: events.append(f'tiles {done}/{total}'))
    assert events[:4] == ['encoding reference 1/1', 'search', 'textures', 'main network']
    tiles = events[4:]
    assert tiles and tiles[-1] == f'tiles {len(tiles)}/{len(tiles)}' and len(tiles) > 1  # 20x28 LR in 8-px tiles


def test_texture_map_is_the_runs_own_search(tmp_path, monkeypatch):
    """infer.py draws the texture-source picture from the search result of the run that made the SR: it searches once
    (the search function is called exactly once per image) and the panels are built from that result."""
    from extracter.inference import folder

    net = tiny_net()
    lr, refs = three_refs()
    seen = {}
    real_panels = folder.texture_source_panels

    def spy(scores, ref_id, index, *args, **kwargs):
        seen['scores'], seen['ref_id'], seen['index'] = scores.clone(), ref_id.clone(), index.clone()
        return real_panels(scores, ref_id, index, *args, **kwargs)

    calls = {'n': 0}
    real_search = type(net.search_transfer).search

    def counting_search(self, *args, **kwargs):
        calls['n'] += 1
        return real_search(self, *args, **kwargs)

    monkeypatch.setattr(folder, 'texture_source_panels', spy)
    monkeypatch.setattr(type(net.search_transfer), 'search', counting_search)
    sample = {'lq': lr, 'lq_up': torch.nn.functional.interpolate(lr, scale_factor=4, mode='bicubic'),
              'lq_size': torch.tensor([[20, 28]]), 'ref': refs, 'ref_downup': [r.clone() for r in refs]}
    result = folder.super_resolve(net, sample, 'cpu', {}, texture_map=True)
    assert calls['n'] == 1
    monkeypatch.setattr(type(net.search_transfer), 'search', real_search)
    own = run_refsr(net, lr, refs, lr_up=sample['lq_up'], ref_downup=sample['ref_downup'], return_aux=True)
    ref_id, index = split_index(own.index[0, 0], own.patch_counts)
    assert torch.equal(seen['ref_id'], ref_id) and torch.equal(seen['index'], index)
    assert torch.equal(seen['scores'], own.scores[0, 0])
    assert result['relevance']['max'] == pytest.approx(float(own.scores[0, 0].max()))


def test_inference_options_one_route_and_errors():
    opts = InferenceOptions.from_mapping({'tile': {'tile_size': 64, 'tile_pad': 8}, 'max_memory': '2G',
                                          'search': {'mode': 'chunked', 'window': 12, 'stride': 4, 'padding': 4}})
    assert opts.run_kwargs() == {'tile': {'tile_size': 64, 'tile_pad': 8}, 'max_memory': '2G',
                                 'search_mode': 'chunked', 'search_geometry': (12, 4, 4)}
    with pytest.raises(InferenceOptionError, match=r'val\.tile\.tile_size must be >= 1'):
        InferenceOptions.from_mapping({'tile': {'tile_size': 0}}, 'val.')
    with pytest.raises(InferenceOptionError, match='search.mode'):
        InferenceOptions.from_mapping({'search': {'mode': 'fast'}})
    with pytest.raises(InferenceOptionError, match='was renamed'):
        InferenceOptions.from_mapping({'search_geometry': {'window': 6}})


def _test_options(stride_in_dataset=None, val=None):
    ds = {'name': 'x', 'type': 'CUFED5Dataset', 'dataroot': '.'}
    if stride_in_dataset is not None:
        ds['stride'] = stride_in_dataset
    opt = {'name': 't', 'model_type': 'RefSRModel', 'network_g': {'type': 'Extracter', **NET_OPT},
           'datasets': {'test_1': ds}}
    if val is not None:
        opt['val'] = val
    return opt


def test_dataset_stride_comes_from_the_network():
    opt = _test_options()
    validate_options(opt, is_train=False, source='t.yml', check_files=False)
    assert opt['datasets']['test_1']['stride'] == 2  # network_g.stride
    opt = _test_options(val={'search': {'window': 12, 'stride': 4, 'padding': 4}})
    validate_options(opt, is_train=False, source='t.yml', check_files=False)
    assert opt['datasets']['test_1']['stride'] == 4  # the geometry the test runs with
    with pytest.raises(OptionError, match=r't\.yml: datasets\.test_1\.stride: 1 disagrees with the search stride 2'):
        validate_options(_test_options(stride_in_dataset=1), is_train=False, source='t.yml', check_files=False)
    validate_options(_test_options(stride_in_dataset=2), is_train=False, source='t.yml', check_files=False)
    with pytest.raises(OptionError, match=r'val\.search_geometry was renamed: use val\.search\.window'):
        validate_options(_test_options(val={'search_geometry': {'window': 6, 'stride': 2, 'padding': 2}}),
                         is_train=False, source='t.yml', check_files=False)


def test_output_names_never_collide():
    assert output_stems(['d/a.png', 'd/a.jpg', 'd/b.png']) == ['a_png', 'a_jpg', 'b']
    with pytest.raises(ValueError, match='rename one'):
        output_stems(['d/a.png', 'd/a.PNG'])


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp('weights')
    net = tiny_net()
    torch.save({'params': net.state_dict()}, folder / 'tiny.pth')
    (folder / 'tiny.yml').write_text(yaml.safe_dump({'network_g': {'type': 'Extracter', **NET_OPT}}))
    return folder / 'tiny.pth'


@pytest.fixture(scope='module')
def lr_folder(tmp_path_factory):
    """Five small LR images (random content is enough here: this is about files) and one reference."""
    folder = tmp_path_factory.mktemp('lrs')
    rng = np.random.default_rng(0)
    (folder / 'lr').mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (14 + i, 18, 3), dtype=np.uint8)).save(folder / 'lr' / f'im{i}.png')
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / 'ref.png')
    return folder


def test_skip_existing_finishes_an_interrupted_folder(weights, lr_folder, tmp_path):
    out = tmp_path / 'out'
    args = ['--weights', str(weights), '--lr', str(lr_folder / 'lr'), '--ref', str(lr_folder / 'ref.png'),
            '-o', str(out)]
    run(args)
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert len(first) == 15
    for kind in ('sr', 'bicubic', 'compare'):  # "interrupted": im3 lost its outputs
        (out / f'im3_{kind}.png').unlink()
    with pytest.raises(FileExistsError, match='--skip-existing'):
        run(args)
    written = run(args + ['--skip-existing'])
    assert [p['sr'].name for p in written] == ['im3_sr.png']
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert len(after) == 15
    assert all(after[n] == t for n, t in first.items() if not n.startswith('im3_'))


def test_torchrun_shards_a_folder_and_writes_every_output_once(weights, lr_folder, tmp_path):
    out = tmp_path / 'sharded'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29533',
           str(REPO / 'extracter' / 'infer.py'), '--weights', str(weights), '--lr', str(lr_folder / 'lr'),
           '--ref', str(lr_folder / 'ref.png'), '-o', str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f'im{i}_{k}.png' for i in range(5) for k in ('sr', 'bicubic', 'compare'))
    # each process wrote its own share: "wrote N files" lines add up to all 15 (torchrun passes both processes'
    # stdout through one pipe, where one process's line can run into the other's: found anywhere, not per line)
    counts = [int(n) for n in re.findall(r'wrote (\d+) files', proc.stdout)]
    assert sorted(counts) == [6, 9], f'stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}'  # (diagnosis)
    # the same outputs as one process
    single = tmp_path / 'single'
    run(['--weights', str(weights), '--lr', str(lr_folder / 'lr'), '--ref', str(lr_folder / 'ref.png'),
         '-o', str(single)])
    for name in names:
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(single / name)))
    # both processes shared the launch's lock on the folder; --skip-existing makes the damaged inputs again
    (out / 'im1_compare.png').unlink()
    (out / 'im2_sr.png').write_bytes((out / 'im2_sr.png').read_bytes()[:100])
    proc = subprocess.run(cmd + ['--skip-existing'], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'im1.png: im1_compare.png is missing' in proc.stderr and 'im2.png: im2_sr.png is truncated' in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == names  # no lock left
    for name in names:
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(single / name)))


def test_tile_zero_is_an_error_not_untiled(weights, lr_folder, tmp_path):
    with pytest.raises(InferenceError, match='^--tile: must be >= 1, got 0$'):  # the flag named once
        run(['--weights', str(weights), '--lr', str(lr_folder / 'lr'), '--ref', str(lr_folder / 'ref.png'),
             '-o', str(tmp_path / 'o'), '--tile', '0'])
    assert not (tmp_path / 'o').exists()


def test_cpu_inference_transfers_by_blocks_from_channels_last_textures(monkeypatch):
    """On CPU the engine's textures are channels-last (VGG-19 runs so), so every level's transfer takes the block
    path; the result equals the dense, untiled run (the block fold is bit-exact, the layouts change rounding only)."""
    from extracter.search import transfer

    net = tiny_net()
    lr, ref = torch.rand(1, 3, 24, 20), torch.rand(1, 3, 64, 48)
    calls = {'blocks': 0, 'bands': 0}
    blocks, bands = transfer.fold_blocks, transfer.fold_by_index

    def spy_blocks(*a, **kw):
        calls['blocks'] += 1
        return blocks(*a, **kw)

    def spy_bands(*a, **kw):
        calls['bands'] += 1
        return bands(*a, **kw)
    monkeypatch.setattr(transfer, 'fold_blocks', spy_blocks)
    monkeypatch.setattr(transfer, 'fold_by_index', spy_bands)
    dense = run_refsr(net, lr, ref)
    assert calls == {'blocks': 0, 'bands': 0}  # the dense transfer folds unfolded patches
    tiled = run_refsr(net, lr, ref, search_mode='chunked', tile={'tile_size': 12, 'tile_pad': 8}, return_aux=True)
    st = net.search_transfer
    tiles = 4  # 24 x 20 in tiles of 12
    assert calls == {'blocks': tiles * st.top_k * 3, 'bands': 0}
    assert psnr(tiled.sr, dense) > 50
