"""The reference gallery (extracter/gallery/): retrieval on real photos, the index (reuse, incremental update, a lock
against two updates, another model or recipe, never inside the gallery), the exclusion of the LR's upscale, the bad
inputs, references.csv, and infer.py --gallery end to end with the CPU demo model."""

import csv
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extracter.data.degradations import make_lq, make_lq_up
from extracter.data.image_io import read_image
from extracter.gallery.descriptor import RECIPE, describe_image
from extracter.gallery.folder import CSV_COLUMNS, choose_references, references_for_files
from extracter.gallery.index import GalleryError, GalleryIndex, default_index_path, image_describer, update_index
from extracter.gallery.select import greedy_coverage, is_upscale_of, select_references, shortlist_exact
from extracter.infer import InferenceError, main, run
from extracter.inference.network import load_network

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / 'pretrained' / 'demo_cpu' / 'extracter_demo_cpu.pth'


@pytest.fixture(scope='module')
def net():
    if not DEMO.is_file():
        pytest.skip(f'the CPU demo model {DEMO} is missing')
    return load_network(str(DEMO), None, 'cpu', None)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """The default index folder under this test's own cache folder (never the user's)."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))


def _frame(shared_data, clip: str, n: int) -> Path:
    return shared_data / 'video' / f'vid4-{clip}' / f'frame_{n:03d}.png'


def _crop(src: Path, box, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert('RGB').crop(box).save(dest)
    return dest


def _small_gallery(shared_data, folder: Path, n: int = 4) -> Path:
    """``n`` small real crops (192 x 160) of different pictures."""
    sources = sorted((shared_data / 'train' / 'bsd200').iterdir())[:n]
    for i, src in enumerate(sources):
        _crop(src, (0, 0, 192, 160), folder / f'g{i}.png')
    return folder


@pytest.fixture(scope='module')
def real_gallery(shared_data, tmp_path_factory):
    """Vid4 calendar and city keyframes (every 8th frame) among BSD200 and Sintel distractors."""
    folder = tmp_path_factory.mktemp('gallery')
    for clip, frames in (('calendar', (1, 9, 17, 25)), ('city', (1, 9, 17))):
        for n in frames:
            os.symlink(_frame(shared_data, clip, n), folder / f'{clip}_{n:03d}.png')
    for src in sorted((shared_data / 'train' / 'bsd200').iterdir())[:5]:
        os.symlink(src, folder / f'bsd_{src.name}')
    for src in sorted((shared_data / 'video' / 'sintel').iterdir())[:2]:
        os.symlink(src, folder / f'sintel_{src.name}')
    return folder


def test_retrieval_chooses_the_query_scene(net, shared_data, real_gallery, tmp_path):
    index, stats = update_index(net, real_gallery, tmp_path / 'index.npz', progress=False)
    assert (len(index), stats.described, stats.skipped) == (14, 14, [])
    for clip, frame, nearest in (('calendar', 13, {'calendar_009.png', 'calendar_017.png'}),
                                 ('city', 4, {'city_001.png', 'city_009.png'})):
        lr = make_lq(read_image(_frame(shared_data, clip, frame)))
        selection = select_references(net, lr, index, k=2)
        names = [os.path.basename(p) for p in selection.paths]
        assert len(names) == 2 and all(n.startswith(clip) for n in names), (clip, names, selection.notes)
        assert names[0] in nearest, names
        assert [c.rank for c in selection.chosen] == [1, 2]
        assert selection.chosen[0].rerank_score > 0.8


def test_index_reused_and_updated_incrementally(net, shared_data, tmp_path):
    gallery = _small_gallery(shared_data, tmp_path / 'gal')
    index_path = tmp_path / 'idx' / 'index.npz'
    index, stats = update_index(net, gallery, index_path, progress=False)
    assert (stats.described, stats.reused, len(index)) == (4, 0, 4)
    index, stats = update_index(net, gallery, index_path, progress=False)  # unchanged: nothing described
    assert (stats.described, stats.reused, stats.removed) == (0, 4, 0)
    stored = GalleryIndex.load(index_path)
    assert stored.names == index.names and np.array_equal(stored.descriptors, index.descriptors)
    assert stored.descriptors.dtype == np.float16
    # added, removed, changed
    _crop(sorted((shared_data / 'train' / 'yang91').iterdir())[0], (0, 0, 96, 96), gallery / 'sub' / 'new.png')
    (gallery / 'g1.png').unlink()
    changed = np.array(Image.open(gallery / 'g2.png'))[::-1].copy()
    Image.fromarray(changed).save(gallery / 'g2.png')
    os.utime(gallery / 'g2.png', ns=(time.time_ns(), time.time_ns() + 10**9))
    index, stats = update_index(net, gallery, index_path, progress=False)
    assert (stats.described, stats.reused, stats.removed) == (2, 2, 2)  # new + changed; g1 gone, old g2 replaced
    assert index.names == ['g0.png', 'g2.png', 'g3.png', os.path.join('sub', 'new.png')]
    row = index.names.index('g2.png')
    assert np.array_equal(index.descriptors[row], describe_image(net, changed))


def test_two_updates_at_once_describe_each_file_once(net, shared_data, tmp_path):
    gallery = _small_gallery(shared_data, tmp_path / 'gal', 3)
    index_path = tmp_path / 'index.npz'
    calls = []
    real = image_describer(net)

    def slow(path):
        calls.append(path)
        time.sleep(0.2)  # both runs are inside the update at once
        return real(path)

    results = []
    threads = [threading.Thread(target=lambda: results.append(
        update_index(net, gallery, index_path, progress=False, describe=slow))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 3  # the second waited for the lock, then found the index up to date
    assert sorted(s.described for _, s in results) == [0, 3]
    assert len(GalleryIndex.load(index_path)) == 3


def test_upscale_of_the_lr_is_never_chosen_its_hr_is(net, shared_data, tmp_path):
    hr = np.array(Image.open(_frame(shared_data, 'calendar', 20)).crop((160, 96, 480, 352)))  # 320 x 256
    lr = make_lq(hr)
    up = make_lq_up(lr)
    assert is_upscale_of(up, lr) and not is_upscale_of(hr, lr)
    gallery = tmp_path / 'gal'
    gallery.mkdir()
    Image.fromarray(up).save(gallery / 'a_upscale.png')
    Image.fromarray(hr).save(gallery / 'b_hr.png')
    _crop(_frame(shared_data, 'city', 1), (0, 0, 320, 256), gallery / 'c_city.png')
    index, _ = update_index(net, gallery, tmp_path / 'i.npz', progress=False)
    selection = select_references(net, lr, index, k=3)
    names = [os.path.basename(p) for p in selection.paths]
    assert 'a_upscale.png' not in names and names[0] == 'b_hr.png'
    assert any('a_upscale.png' in n and 'upscale of the LR' in n for n in selection.notes)


def test_near_duplicates_add_nothing():
    a = torch.tensor([0.9, 0.9, 0.2, 0.2])
    b = torch.tensor([0.2, 0.2, 0.8, 0.8])
    chosen, dups = greedy_coverage([a, a.clone(), b], k=3)
    assert [c for c, _ in chosen] == [0, 2] and dups == [1]  # the copy of a is left out, b covers the rest
    assert chosen[1][1] == pytest.approx(float(torch.maximum(a, b).mean() - a.mean()))


def test_shortlist_is_the_exact_cosine_top_m():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((1000, 16)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    q = d[7] + 0.01
    scores, rows = shortlist_exact(d.astype(np.float16), q, 5)
    exact = np.argsort(-(d.astype(np.float16).astype(np.float32) @ q))[:5]
    assert list(rows) == list(exact) and rows[0] == 7 and np.all(np.diff(scores) <= 0)


def test_bad_gallery_files_are_skipped_and_listed(net, shared_data, tmp_path):
    gallery = _small_gallery(shared_data, tmp_path / 'gal', 2)
    (gallery / 'broken.png').write_bytes(b'not an image')
    Image.new('RGB', (20, 20)).save(gallery / 'tiny.png')
    (gallery / 'empty.jpg').write_bytes(b'')
    index, stats = update_index(net, gallery, tmp_path / 'i.npz', progress=False)
    assert index.names == ['g0.png', 'g1.png']
    assert len(stats.skipped) == 3
    assert any('tiny.png' in s and 'too small' in s for s in stats.skipped)
    assert any('broken.png' in s for s in stats.skipped) and any('empty.jpg' in s for s in stats.skipped)
    _, stats = update_index(net, gallery, tmp_path / 'i.npz', progress=False)  # not read again, still listed
    assert stats.described == 0 and len(stats.skipped) == 3


def test_empty_or_unusable_gallery_is_an_error(net, tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(GalleryError, match='no images'):
        update_index(net, tmp_path / 'empty', tmp_path / 'i.npz', progress=False)
    (tmp_path / 'bad').mkdir()
    (tmp_path / 'bad' / 'x.png').write_bytes(b'nope')
    with pytest.raises(GalleryError, match='none of its 1 image file'):
        update_index(net, tmp_path / 'bad', tmp_path / 'j.npz', progress=False)
    with pytest.raises(GalleryError, match='no such folder'):
        update_index(net, tmp_path / 'missing', tmp_path / 'k.npz', progress=False)


def test_index_of_another_model_or_recipe_is_rebuilt(net, shared_data, tmp_path):
    gallery = _small_gallery(shared_data, tmp_path / 'gal', 2)
    path = tmp_path / 'i.npz'
    index, _ = update_index(net, gallery, path, progress=False)
    for field, value, said in (('model', '0' * 32, 'another model'), ('recipe', 'old recipe', 'recipe')):
        stale = GalleryIndex.load(path)
        setattr(stale, field, value)
        stale.descriptors = np.zeros_like(stale.descriptors)
        stale.save(path)
        rebuilt, stats = update_index(net, gallery, path, progress=False)
        assert stats.described == 2 and any(said in n and 'rebuilding' in n for n in stats.notes)
        assert np.array_equal(rebuilt.descriptors, index.descriptors) and rebuilt.recipe == RECIPE
    path.write_bytes(b'garbage')
    _, stats = update_index(net, gallery, path, progress=False)
    assert stats.described == 2 and any('not a gallery index' in n for n in stats.notes)


def test_index_goes_to_the_cache_never_into_the_gallery(net, shared_data, tmp_path):
    gallery = _small_gallery(shared_data, tmp_path / 'gal', 2)
    before = sorted(p.name for p in gallery.rglob('*'))
    gallery.chmod(0o555)  # read-only (a root user can still write: the listing below is the check)
    try:
        index, stats = update_index(net, gallery, progress=False)
    finally:
        gallery.chmod(0o755)
    assert sorted(p.name for p in gallery.rglob('*')) == before
    cache = tmp_path / 'cache' / 'extracter' / 'gallery'
    assert Path(stats.path).parent == cache and Path(stats.path).is_file()
    assert Path(stats.path) == default_index_path(gallery, index.model)
    with pytest.raises(GalleryError, match='inside the gallery'):
        update_index(net, gallery, gallery / 'index.npz', progress=False)


def test_more_references_asked_than_the_gallery_has(net, shared_data, tmp_path):
    gallery = _small_gallery(shared_data, tmp_path / 'gal', 2)
    lr = make_lq(np.array(Image.open(gallery / 'g0.png')))
    selection = references_for_files(net, lr, [str(p) for p in sorted(gallery.iterdir())], k=5)
    assert len(selection.chosen) == 2 and any('using them all' in n for n in selection.notes)


@pytest.fixture(scope='module')
def tiny_case(shared_data, tmp_path_factory):
    """Two LR crops (40 x 32) of calendar and city, and a gallery of 4 crops (160 x 128) of their neighbouring frames
    and a distractor."""
    root = tmp_path_factory.mktemp('tiny')
    box = (200, 160, 360, 288)
    for clip, n in (('calendar', 12), ('city', 12)):
        hr = np.array(Image.open(_frame(shared_data, clip, n)).convert('RGB').crop(box))
        (root / 'lr').mkdir(exist_ok=True)
        Image.fromarray(make_lq(hr)).save(root / 'lr' / f'{clip}.png')
        _crop(_frame(shared_data, clip, 9), box, root / 'gallery' / f'{clip}_009.png')
    _crop(_frame(shared_data, 'calendar', 17), box, root / 'gallery' / 'calendar_017.png')
    _crop(sorted((shared_data / 'train' / 'bsd200').iterdir())[0], (0, 0) + box[2:], root / 'gallery' / 'bsd.png')
    return root


def test_infer_with_a_gallery_end_to_end(tiny_case, tmp_path, capsys):
    out = tmp_path / 'out'
    argv = ['--weights', str(DEMO), '--lr', str(tiny_case / 'lr'), '--gallery', str(tiny_case / 'gallery'),
            '--refs-per-image', '2', '--gallery-index', str(tmp_path / 'i.npz'), '-o', str(out)]
    if not DEMO.is_file():
        pytest.skip(f'the CPU demo model {DEMO} is missing')
    written = run(argv)
    assert len(written) == 2 and all(p.is_file() for w in written for p in w.values())
    with open(out / 'references.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    by_lr = {}
    for row in rows:
        by_lr.setdefault(row['lr'], []).append(row)
    assert sorted(by_lr) == ['calendar.png', 'city.png']
    for lr, chosen in by_lr.items():
        assert [int(r['rank']) for r in chosen] == list(range(1, len(chosen) + 1))
        assert os.path.basename(chosen[0]['reference']).startswith(lr[:-4])  # its own scene first
        assert all(-1 <= float(r[c]) <= 1 for r in chosen for c in ('score', 'shortlist_score', 'rerank_score'))
    assert 'image(s) described' in capsys.readouterr().out
    # a second run: references.csv is an output (kept without --overwrite); nothing is described again
    with pytest.raises(FileExistsError):
        run(argv)
    capsys.readouterr()
    run(argv + ['--overwrite'])
    assert '0 image(s) described, 4 reused' in capsys.readouterr().out
    assert sorted(p.name for p in (tiny_case / 'gallery').iterdir()) == [
        'bsd.png', 'calendar_009.png', 'calendar_017.png', 'city_009.png']


def test_infer_gallery_flag_errors(tiny_case, tmp_path, capsys):
    base = ['--weights', str(DEMO), '--lr', str(tiny_case / 'lr'), '-o', str(tmp_path / 'o')]
    gallery = ['--gallery', str(tiny_case / 'gallery')]
    for extra, said in ((['--ref', str(tiny_case / 'lr' / 'city.png')], '--gallery chooses the references'),
                        (['--self-ref'], 'leave out --self-ref'),
                        (['--refs-per-image', '0'], '--refs-per-image must be >= 1')):
        assert main(base + gallery + extra) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert main(base + ['--refs-per-image', '2', '--self-ref']) == 2
    assert '--refs-per-image work with --gallery' in capsys.readouterr().err
    assert main(base[:-1] + [str(tiny_case / 'gallery' / 'out')] + gallery) == 2
    assert 'inside --gallery' in capsys.readouterr().err
    assert main(base + ['--gallery', str(tmp_path / 'nowhere')]) == 2
    assert 'no such folder' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()
    with pytest.raises(InferenceError, match='--gallery'):
        run(base + gallery + ['--ref-dir', str(tiny_case / 'lr')])


def test_choice_for_a_folder_gives_the_dataset_refs(net, tiny_case, tmp_path):
    from extracter.data.inference_dataset import RefSRInferenceDataset

    lr_paths = sorted(str(p) for p in (tiny_case / 'lr').iterdir())
    choice = choose_references(net, lr_paths, tiny_case / 'gallery', 2, tmp_path / 'i.npz', progress=False)
    dataset = RefSRInferenceDataset(dataroot_lq=str(tiny_case / 'lr'), refs=choice.refs)
    assert [len(r) for r in dataset.ref_paths] == [len(choice.refs[os.path.basename(p)]) for p in lr_paths]
    shutil.rmtree(tmp_path / 'cache', ignore_errors=True)


def _gallery_test_options(tiny_case, tmp_path, **dataset):
    import yaml

    net_opt = yaml.safe_load(DEMO.with_suffix('.yml').read_text())['network_g']
    net_opt['dfe_init'] = 'random'  # the checkpoint holds the DFE weights
    net_opt.pop('vgg19_path', None)
    opt = {'name': 'gallery_test', 'model_type': 'RefSRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'test_1': {'name': 'tiny', 'type': 'RefSRInferenceDataset',
                                   'dataroot_lq': str(tiny_case / 'lr'), **dataset}},
           'network_g': net_opt, 'path': {'pretrain_network_g': str(DEMO), 'param_key_g': 'params',
                                          'strict_load_g': True},
           'val': {'save_img': True, 'pbar': False}}
    yml = tmp_path / 'gallery_test.yml'
    yml.write_text(yaml.safe_dump(opt, sort_keys=False))
    return yml


def test_test_py_dataset_with_a_gallery(tiny_case, tmp_path):
    from extracter import test as test_entry

    if not DEMO.is_file():
        pytest.skip(f'the CPU demo model {DEMO} is missing')
    yml = _gallery_test_options(tiny_case, tmp_path, gallery=str(tiny_case / 'gallery'), refs_per_image=1,
                                gallery_index=str(tmp_path / 'i.npz'))
    test_entry.test_pipeline(str(REPO), ['-opt', str(yml), '--root_path', str(tmp_path)])
    results = tmp_path / 'results' / 'gallery_test'
    with open(results / 'references_tiny.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['lr'], r['rank']) for r in rows] == [('calendar.png', '1'), ('city.png', '1')]
    assert all(os.path.basename(r['reference']).startswith(r['lr'][:-4]) for r in rows)
    assert len(list((results / 'visualization' / 'tiny').glob('*.png'))) == 2


@pytest.mark.parametrize('dataset, said', [
    ({'gallery': 'nowhere'}, 'datasets.test_1.gallery'),
    ({'gallery': '{gallery}', 'ref_path': '{gallery}/bsd.png'}, 'gallery chooses the references: leave out '
                                                                'datasets.test_1.ref_path'),
    ({'gallery': '{gallery}', 'refs_per_image': 0}, 'datasets.test_1.refs_per_image must be an integer >= 1'),
    ({'ref_path': '{gallery}/bsd.png', 'refs_per_image': 2}, 'datasets.test_1.refs_per_image works with'),
])
def test_test_py_gallery_option_errors(tiny_case, tmp_path, dataset, said):
    from extracter.options.schema import OptionError, parse_options

    dataset = {k: v.format(gallery=tiny_case / 'gallery') if isinstance(v, str) else v for k, v in dataset.items()}
    yml = _gallery_test_options(tiny_case, tmp_path, **dataset)
    with pytest.raises(OptionError, match=said.replace('.', r'\.')):
        parse_options(str(REPO), is_train=False, argv=['-opt', str(yml), '--root_path', str(tmp_path)])
    assert not (tmp_path / 'results').exists()


def test_dataset_built_directly_with_a_gallery_says_how(tiny_case):
    from extracter.data.inference_dataset import RefSRInferenceDataset

    with pytest.raises(ValueError, match='gallery: the references are chosen with the network'):
        RefSRInferenceDataset(dataroot_lq=str(tiny_case / 'lr'), gallery=str(tiny_case / 'gallery'))


@pytest.mark.slow
def test_torchrun_processes_share_the_indexing_and_the_choice(tiny_case, tmp_path):
    import subprocess
    import sys

    if not DEMO.is_file():
        pytest.skip(f'the CPU demo model {DEMO} is missing')
    import socket

    with socket.socket() as sock:  # a free port (a fixed one may be taken by another test run)
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
           str(REPO / 'extracter' / 'infer.py'), '--weights', str(DEMO), '--lr', str(tiny_case / 'lr'),
           '--gallery', str(tiny_case / 'gallery'), '--gallery-index', str(tmp_path / 'i.npz'), '-o',
           str(tmp_path / 'two')]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('4 image(s) described') == 1  # rank 0 reports the shared update
    assert len(GalleryIndex.load(tmp_path / 'i.npz')) == 4
    run(['--weights', str(DEMO), '--lr', str(tiny_case / 'lr'), '--gallery', str(tiny_case / 'gallery'),
         '--gallery-index', str(tmp_path / 'j.npz'), '-o', str(tmp_path / 'one')])

    def choice(folder):
        with open(folder / 'references.csv', newline='') as f:
            return [(r['lr'], r['rank'], r['reference']) for r in csv.DictReader(f)]

    assert choice(tmp_path / 'two') == choice(tmp_path / 'one')
    assert sorted(p.name for p in (tmp_path / 'two').iterdir()) == sorted(p.name for p in (tmp_path / 'one').iterdir())


def test_an_unreadable_lr_stops_before_anything_is_written(tiny_case, tmp_path):
    lr = tmp_path / 'lr'
    shutil.copytree(tiny_case / 'lr', lr)
    (lr / 'broken.png').write_bytes(b'not a png')
    if not DEMO.is_file():
        pytest.skip(f'the CPU demo model {DEMO} is missing')
    with pytest.raises(InferenceError, match=r'no references for 1 input\(s\) \(broken.png\); nothing was written'):
        run(['--weights', str(DEMO), '--lr', str(lr), '--gallery', str(tiny_case / 'gallery'), '--gallery-index',
             str(tmp_path / 'i.npz'), '-o', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


def test_faiss_shortlist_finds_the_neighbours():
    pytest.importorskip('faiss', reason='faiss-cpu (optional extra) is not installed')
    from extracter.gallery.select import FaissShortlist

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    d = np.repeat(centres, 100, axis=0) + 0.1 * rng.standard_normal((2000, 32)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    index = FaissShortlist(d, nlist=20, nprobe=20)  # every list probed: the exact top-M
    for row in (3, 777, 1999):
        scores, rows = index.search(d[row], 5)
        exact_scores, exact_rows = shortlist_exact(d.astype(np.float16), d[row], 5)
        assert rows[0] == row and set(rows) == set(exact_rows)
        assert np.allclose(scores, exact_scores, atol=2e-3)


def test_a_video_with_a_gallery_of_stills(tiny_case, tmp_path, capsys):
    pytest.importorskip('av', reason='PyAV is not installed (the optional extra: pip install "extracter[video]")')
    from extracter.inference.video import probe_video
    from tests.test_video import LR_HW, _frames, write_clip

    if not DEMO.is_file():
        pytest.skip(f'the CPU demo model {DEMO} is missing')
    frames = _frames(4)
    clip = write_clip(tmp_path / 'clip.mp4', frames)
    stills = tmp_path / 'stills'
    stills.mkdir()
    for i in (0, 3):  # high-resolution stills of the scene, and a distractor
        Image.fromarray(frames[i]).resize((4 * LR_HW[1], 4 * LR_HW[0]), Image.BICUBIC).save(stills / f'still{i}.png')
    shutil.copy(tiny_case / 'gallery' / 'bsd.png', stills / 'other.png')
    out = tmp_path / 'out'
    assert main(['--weights', str(DEMO), '--lr', str(clip), '--gallery', str(stills), '--refs-per-image', '1',
                 '--gallery-index', str(tmp_path / 'i.npz'), '-o', str(out)]) == 0
    assert '3 image(s) described' in capsys.readouterr().out
    assert probe_video(out / 'clip_sr.mkv').frames == 4
    with open(out / 'references.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['lr'], r['rank']) for r in rows] == [(f'frame_{i:06d}', '1') for i in range(1, 5)]
    assert all(os.path.basename(r['reference']).startswith('still') for r in rows)
    # the frames depend on the stills: a resume after the gallery changed is refused, not mixed in
    base = ['--weights', str(DEMO), '--lr', str(clip), '--gallery', str(stills), '--refs-per-image', '1',
            '--gallery-index', str(tmp_path / 'i.npz'), '-o', str(out)]
    assert main(base + ['--frames', '--overwrite']) == 0
    (out / 'clip_sr.mkv').unlink()
    (out / 'clip_sr_frames' / 'frame_000004.png').unlink()
    Image.fromarray(frames[1]).resize((4 * LR_HW[1], 4 * LR_HW[0]), Image.BICUBIC).save(stills / 'still1.png')
    capsys.readouterr()
    assert main(base + ['--frames', '--skip-existing']) == 2
    assert 'made with another depends_on' in capsys.readouterr().err
    assert not (out / 'clip_sr_frames' / 'frame_000004.png').exists()
