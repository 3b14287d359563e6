"""The battery of bad inputs, one or more per class of docs/errors.md and per entry point, run in-process through each
command line's ``main(argv)`` (the same error boundary, :func:`extracter.utils.cli.run_main`, as from a shell).

Every refusal is checked for: the exit status (2: a known error), exactly one ``error:`` line that names the culprit
(file, key or value), no traceback, and no file changed outside the expected outputs (checksums of the whole
temporary tree before and after). The inputs are small synthetic images and a network of a few thousand parameters,
so the whole battery runs in well under a minute on 2 CPU cores.
"""

import enum
import hashlib
import os
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from extracter.data import image_io
from extracter.registry import ARCH_REGISTRY
from tests.bench_helpers import run_benchmarks
from tests.data_helpers import REPO_ROOT
from tests.test_convert import to_original_layout

NET = dict(type='Extracter', num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, top_k=2, window=6,
           stride=2, padding=2, dfe_init='random')


# ----------------------------------------------------------------------------------------------------------- helpers
def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random RGB picture (upsampled noise), enough for the network to run on."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A 100-byte PNG whose header claims width x height pixels."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr) + _chunk(b'IDAT', zlib.compress(b'\0' * 64)) + \
        _chunk(b'IEND', b'')


def snapshot(root: Path) -> dict:
    """Every file (sha1) and folder under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.join(dirpath, d) + '/'] = 'dir'
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, 'rb') as fh:
                out[p] = hashlib.sha1(fh.read()).hexdigest()
    return out


def changed(before: dict, after: dict, allowed=()) -> list:
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k) and not any(k.startswith(str(a)) for a in allowed))


def call(main, argv, capsys):
    """(exit status, stdout, stderr) of ``main(argv)``."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc: int, err: str, *names, status: int = 2) -> None:
    """One clear error: the exit status, one ``error:`` line naming every one of ``names``, no traceback."""
    assert rc == status, err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1, err
    assert 'Traceback' not in err, err
    for name in names:
        assert str(name) in err, (name, err)


def run_refused(main, argv, capsys, root: Path, *names, allowed=(), status: int = 2) -> str:
    """Run a command that must refuse; nothing under ``root`` may change (but ``allowed``). Returns stderr."""
    before = snapshot(root)
    rc, _, err = call(main, argv, capsys)
    assert_refused(rc, err, *names, status=status)
    assert changed(before, snapshot(root), allowed) == []
    return err


@pytest.fixture(autouse=True)
def _restore_image_settings():
    saved = (image_io.get_max_image_pixels(), image_io.get_16bit_scaling(), Image.MAX_IMAGE_PIXELS,
             {k: os.environ.get(k) for k in (image_io.MAX_PIXELS_ENV, image_io.SCALING_ENV)})
    yield
    image_io._max_pixels, image_io._scaling, Image.MAX_IMAGE_PIXELS, env = saved
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Weights (good, mismatched, original layout, junk), images (good, odd, corrupt, colliding) and a CUFED-layout
    folder with option files, all small."""
    root = tmp_path_factory.mktemp('world')
    w = root / 'w'
    w.mkdir()
    torch.manual_seed(0)
    opt = {k: v for k, v in NET.items() if k != 'type'}
    net = ARCH_REGISTRY.get('Extracter')(**opt)
    torch.save({'params': net.state_dict()}, w / 'tiny.pth')
    (w / 'tiny.yml').write_text(yaml.safe_dump({'network_g': NET}))
    wide = ARCH_REGISTRY.get('Extracter')(**dict(opt, n_feats=16))
    torch.save({'params': wide.state_dict()}, w / 'wide.pth')
    (w / 'wide.yml').write_text(yaml.safe_dump({'network_g': dict(NET, n_feats=16)}))
    for name, payload in (('tensor', None), ('junk', os.urandom(2000)), ('official', None), ('badyml', None)):
        path = w / f'{name}.pth'
        if name == 'tensor':
            torch.save(torch.zeros(3), path)
        elif name == 'official':  # the original code's layout: SR.*, FE.*
            torch.save({'SR.' + k: v for k, v in net.state_dict().items()}, path)
        elif name == 'badyml':
            path.write_bytes((w / 'tiny.pth').read_bytes())
        else:
            path.write_bytes(payload)
        (w / f'{name}.yml').write_text('network_g: [type: Extracter\n  n_feats: {\n' if name == 'badyml'
                                       else yaml.safe_dump({'network_g': NET}))
    im = root / 'img'
    save(photo(16, 20, 1), im / 'lr' / 'a.png')
    save(photo(16, 16, 2), im / 'lr' / 'b.png')
    save(photo(64, 64, 3), im / 'ref.png')
    save(photo(16, 20, 4), im / 'coll' / 'a.png')
    save(photo(16, 16, 5), im / 'coll' / 'a.jpg', quality=95)
    save(photo(16, 20, 4), im / 'coll2' / 'a.png')
    save(photo(16, 16, 5), im / 'coll2' / 'a.PNG')
    for folder in ('mid', 'mid_header'):
        save(photo(16, 20, 6), im / folder / 'a.png')
        save(photo(16, 20, 7), im / folder / 'c.png')
    good = save(photo(16, 20, 8), im / 'good_b.png').read_bytes()
    (im / 'mid' / 'b.png').write_bytes(good[:len(good) // 2])  # valid header, truncated pixel data
    (im / 'mid_header' / 'b.png').write_text('notes, not an image')  # no image header at all
    (im / 'bomb.png').write_bytes(bomb_png())
    save(photo(16, 20, 9), im / 'bombdir' / 'a.png')
    (im / 'bombdir' / 'b.png').write_bytes(bomb_png())
    rgba = np.dstack([photo(16, 20, 10), np.where(np.arange(20) < 10, 0, 255)[None].repeat(16, 0).astype(np.uint8)])
    save(rgba, im / 'alpha.png')
    Image.fromarray((photo(16, 20, 11).mean(2) * 4).astype(np.uint16)).save(im / 'ten_bit.png')  # 10-bit data
    # CUFED layout: train pairs and a CUFED5 test set (HR NNN_0 and references NNN_1..5)
    cu = root / 'CUFED'
    for i in range(4):
        save(photo(64, 64, 20 + i), cu / 'train' / 'input' / f'{i:06d}.png')
        save(photo(64, 64, 30 + i), cu / 'train' / 'ref' / f'{i:06d}.png')
    for g in range(3):
        for level in range(6):
            save(photo(48, 48, 40 + 6 * g + level), cu / 'test' / 'CUFED5' / f'{g:03d}_{level}.png')
    train = yaml.safe_load((REPO_ROOT / 'options' / 'train' / 'tiny_rec_cpu.yml').read_text())
    train['network_g'] = dict(NET)
    train['datasets']['train'].update(dataroot_gt=str(cu / 'train' / 'input'), dataroot_ref=str(cu / 'train' / 'ref'))
    train['datasets']['val']['dataroot'] = str(cu / 'test' / 'CUFED5')
    train['train']['total_iter'] = 2
    train['logger'].update(save_checkpoint_freq=2, print_freq=1)
    test = yaml.safe_load((REPO_ROOT / 'options' / 'test' / 'tiny_cufed5_cpu.yml').read_text())
    test['network_g'] = dict(NET)
    test['datasets']['test_1']['dataroot'] = str(cu / 'test' / 'CUFED5')
    test['path']['pretrain_network_g'] = str(w / 'tiny.pth')
    return {'root': root, 'w': w, 'img': im, 'cufed': cu, 'train': train, 'test': test}


def option_file(world, tmp_path: Path, kind: str, *edits) -> Path:
    """The train or test options of ``world`` with ``edits`` (dotted key, value; ``None`` deletes the key)."""
    import copy

    opt = copy.deepcopy(world[kind])
    for dotted, value in edits:
        node, keys = opt, dotted.split('.')
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    path = tmp_path / f'{kind}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def infer_main():
    from extracter.infer import main

    return main


def infer_args(world, tmp_path, *extra, weights='tiny', lr=None, ref=None):
    """infer.py's arguments; ``weights``: a name in ``world['w']`` or a path."""
    lr = lr or world['img'] / 'lr' / 'a.png'
    ref = ref or world['img'] / 'ref.png'
    weights = weights if isinstance(weights, Path) else world['w'] / f'{weights}.pth'
    return ['--weights', weights, '--lr', lr, '--ref', ref, '-o', tmp_path / 'out', *extra]


# ------------------------------------------------------------------------------------------- 1. no output is lost
def test_names_differing_only_in_extension_get_distinct_outputs(world, tmp_path, capsys):
    rc, _, err = call(infer_main(), infer_args(world, tmp_path, lr=world['img'] / 'coll'), capsys)
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / 'out').iterdir())
    assert names == sorted(f'a_{ext}_{kind}.png' for ext in ('jpg', 'png') for kind in ('sr', 'bicubic', 'compare'))


def test_names_differing_only_in_case_are_refused_before_any_work(world, tmp_path, capsys):
    run_refused(infer_main(), infer_args(world, tmp_path, lr=world['img'] / 'coll2'), capsys, tmp_path, 'a_png')


def test_output_folder_that_is_the_input_folder_is_refused(world, tmp_path, capsys):
    lr = world['img'] / 'lr'
    args = ['--weights', world['w'] / 'tiny.pth', '--lr', lr, '--ref', world['img'] / 'ref.png', '-o', lr]
    run_refused(infer_main(), args, capsys, world['root'], str(lr), 'another folder')


def test_existing_outputs_are_kept(world, tmp_path, capsys):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'a_sr.png').write_bytes(b'the user\'s picture')
    run_refused(infer_main(), infer_args(world, tmp_path), capsys, tmp_path, 'a_sr.png', '--overwrite')


def test_test_sets_with_one_name_are_refused(world, tmp_path, capsys):
    from extracter.test import main

    path = option_file(world, tmp_path, 'test')
    opt = yaml.safe_load(path.read_text())
    opt['datasets']['test_2'] = dict(opt['datasets']['test_1'], ref_level=2)
    path.write_text(yaml.safe_dump(opt))
    run_refused(main, ['-opt', path, '--root_path', tmp_path], capsys, tmp_path, path, 'datasets.test_2.name',
                'CUFED5_L1')


def test_convert_official_refuses_an_output_that_would_replace_its_yaml_or_input(world, tmp_path, capsys):
    from extracter.tools.convert_official import main

    src = world['w'] / 'official.pth'
    run_refused(main, [src, '-o', tmp_path / 'x.yml'], capsys, tmp_path, 'x.yml')
    run_refused(main, [src, '-o', src, '--overwrite'], capsys, world['root'], 'would replace the input')


def test_show_dataset_keeps_an_existing_output(world, tmp_path, capsys):
    from extracter.tools.show_dataset import main

    (tmp_path / 'grid.png').write_bytes(b'user file')
    argv = ['--type', 'CUFED5Dataset', '--set', f'dataroot={world["cufed"] / "test" / "CUFED5"}', '-o',
            tmp_path / 'grid.png']
    run_refused(main, argv, capsys, tmp_path, 'grid.png', '--overwrite')


# ------------------------------------------------------------------- 2. a failed start never blocks the fixed rerun
def test_train_bad_option_creates_nothing_and_the_fixed_rerun_starts(world, tmp_path, capsys):
    from extracter.train import main

    bad = option_file(world, tmp_path, 'train', ('datasets.train.batch_size_per_gpu', 'nine'))
    run_refused(main, ['-opt', bad, '--root_path', tmp_path / 'root'], capsys, tmp_path,
                'datasets.train.batch_size_per_gpu', 'nine', bad)
    assert not (tmp_path / 'root').exists()
    # a start that fails after the data are built (a mismatched pretrained network) leaves nothing either
    bad = option_file(world, tmp_path, 'train', ('path.pretrain_network_g', str(world['w'] / 'wide.pth')))
    run_refused(main, ['-opt', bad, '--root_path', tmp_path / 'root'], capsys, tmp_path, 'wide.pth',
                'path.pretrain_network_g')
    # a folder left by an older failed start (a log, empty models/) or by a run killed outright while it saved its
    # first checkpoint (a temporary file in models/) is reused, and the temporary file removed
    from extracter.utils.file_io import host_tag

    exp = tmp_path / 'root' / 'experiments' / 'tiny_rec_cpu'
    (exp / 'models').mkdir(parents=True)
    (exp / 'train_tiny_rec_cpu_old.log').write_text('failed start\n')
    stale = exp / 'models' / f'.net_g_2.pth.extracter-tmp-{host_tag()}-999999999.x1y2z3ab.tmp'
    stale.write_bytes(b'half a checkpoint')
    good = option_file(world, tmp_path, 'train')
    rc, _, err = call(main, ['-opt', good, '--root_path', tmp_path / 'root'], capsys)
    assert rc == 0, err
    assert (exp / 'models' / 'net_g_2.pth').is_file() and not stale.exists()
    assert f'removed stale temporary {stale}' in err


def test_test_failing_on_a_corrupt_image_leaves_a_reusable_folder(world, tmp_path, capsys):
    import shutil

    from extracter.test import main

    data = tmp_path / 'CUFED5'
    shutil.copytree(world['cufed'] / 'test' / 'CUFED5', data)
    good = (data / '001_0.png').read_bytes()
    (data / '001_0.png').write_bytes(good[:len(good) // 2])
    path = option_file(world, tmp_path, 'test', ('datasets.test_1.dataroot', str(data)))
    argv = ['-opt', path, '--root_path', tmp_path / 'root']
    rc, _, err = call(main, argv, capsys)
    assert_refused(rc, err, '001_0.png', 'corrupt or truncated')
    (data / '001_0.png').write_bytes(good)
    rc, _, err = call(main, argv, capsys)  # no --overwrite needed: the first run finished no test set
    assert rc == 0, err
    assert (tmp_path / 'root' / 'results' / 'tiny_cufed5_cpu' / 'metrics_CUFED5_L1.csv').is_file()


# ---------------------------------------------------------------------------- 3. types and ranges, before any disk
TRAIN_OPTION_CASES = [
    ('datasets.train.batch_size_per_gpu', 0),
    ('datasets.train.batch_size_per_gpu', 2.5),
    ('train.optim_g.lr', 'fast'),
    ('datasets.train.num_worker_per_gpu', -1),
    ('datasets.val.ref_level', 'one'),
    ('datasets.train.dataroot_gt', None),
    ('datasets.train.use_hflip', 'maybe'),
    ('train.optim_g.betas', [2, 3]),
    ('train.optim_g.lr', float('inf')),
    ('train.optim_g.betas', [0.9, float('nan')]),
    ('train.scheduler.milestones', ['a']),
    ('network_g.n_feats', 'eight'),
    ('network_g.n_feats', 7),
    ('network_g.search_mode', 'fast'),
    ('network_g.num_res_blocks', 'a+b'),
    ('name', '../escape'),
    ('num_gpu', 'x'),
    ('datasets.train.io_backend', {'type': 'foo'}),
    ('train.pixel_opt.reduction', 'avg'),
    ('logger.use_tb_logger', 'yes'),
    ('val.metrics.psnr_y_b4.crop_border', 'x'),
    ('path.strict_load_g', 'x'),
    ('val.tile', {'tile_size': 0, 'tile_pad': 4}),
    ('val.max_memory', 0),
]


@pytest.mark.parametrize('key,value', TRAIN_OPTION_CASES, ids=[f'{k}={v}' for k, v in TRAIN_OPTION_CASES])
def test_train_option_types_and_ranges(world, tmp_path, capsys, key, value):
    from extracter.train import main

    path = option_file(world, tmp_path, 'train', (key, value))
    last = key.split('.')[-1]
    run_refused(main, ['-opt', path, '--root_path', tmp_path / 'root'], capsys, tmp_path, path.name, last)
    assert not (tmp_path / 'root').exists()


@pytest.mark.parametrize('key,value', [('datasets.test_1.ref_level', 6), ('val.save_img', 'x'),
                                       ('val.suffix', [1]), ('val.tile', {'tile_size': -1, 'tile_pad': 0})])
def test_test_option_types_and_ranges(world, tmp_path, capsys, key, value):
    from extracter.test import main

    path = option_file(world, tmp_path, 'test', (key, value))
    run_refused(main, ['-opt', path, '--root_path', tmp_path / 'root'], capsys, tmp_path, path.name,
                key.split('.')[-1])


@pytest.mark.parametrize('flags,names', [
    (['--tile', '-1'], ['--tile', '-1']), (['--tile', '8', '--tile-pad', '-1'], ['--tile-pad', '-1']),
    (['--max-memory', '6X'], ['--max-memory', '6X']), (['--search-geometry', '0', '0', '0'], ['--search-geometry']),
    (['--tile', 'big'], ['--tile', 'big']), (['--max-image-pixels', '-1'], ['--max-image-pixels', '-1']),
    (['--param-key', 'foo'], ['foo', 'tiny.pth']),
])
def test_infer_flag_types_and_ranges(world, tmp_path, capsys, flags, names):
    run_refused(infer_main(), infer_args(world, tmp_path, *flags), capsys, tmp_path, *names)


# ----------------------------------------------------------------------- 4. nothing escapes the command line's boundary
@pytest.mark.parametrize('weights,names', [
    ('tensor', ['tensor.pth', 'Tensor']), ('junk', ['junk.pth', 'not a PyTorch weights file']),
    ('badyml', ['badyml.yml', 'not valid YAML', 'line 2']),
])
def test_infer_unusable_weights(world, tmp_path, capsys, weights, names):
    run_refused(infer_main(), infer_args(world, tmp_path, weights=weights), capsys, world['root'], *names)


@pytest.mark.parametrize('device', ['tpu', 'cuda:7'])
def test_infer_unusable_device(world, tmp_path, capsys, device):
    if device.startswith('cuda') and torch.cuda.device_count() > 7:
        pytest.skip('this machine has a cuda:7')
    run_refused(infer_main(), infer_args(world, tmp_path, '--device', device), capsys, tmp_path, device)


def test_an_output_folder_that_cannot_be_written_is_found_before_any_work(world, tmp_path, capsys, monkeypatch):
    import errno

    from extracter.inference import folder
    from extracter.utils import file_io

    def read_only(*args, **kwargs):  # what a read-only mount answers (also to root, unlike a chmod)
        raise OSError(errno.EROFS, 'Read-only file system')

    ran = []
    monkeypatch.setattr(file_io.tempfile, 'mkstemp', read_only)
    monkeypatch.setattr(folder, 'super_resolve', lambda *a, **k: ran.append(a))
    run_refused(infer_main(), infer_args(world, tmp_path), capsys, tmp_path, 'cannot write into', 'out',
                'Read-only file system')
    assert ran == []  # refused before the inference, not after it


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders; the case above covers it')
def test_a_read_only_output_folder_is_refused(world, tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    out.chmod(0o555)
    try:
        run_refused(infer_main(), infer_args(world, tmp_path), capsys, tmp_path, 'cannot write into', 'out')
    finally:
        out.chmod(0o755)


def test_decompression_bombs_name_the_file_and_the_flag(world, tmp_path, capsys):
    from extracter.tools.create_lmdb import main as lmdb_main

    run_refused(infer_main(), infer_args(world, tmp_path, lr=world['img'] / 'bomb.png'), capsys, tmp_path,
                'bomb.png', '400,000,000 pixels', '--max-image-pixels')
    run_refused(infer_main(), infer_args(world, tmp_path, ref=world['img'] / 'bomb.png'), capsys, tmp_path,
                'bomb.png', '--max-image-pixels')
    run_refused(lmdb_main, ['--folder', world['img'] / 'bombdir', '--lmdb', tmp_path / 'x.lmdb', '--no-progress'],
                capsys, tmp_path, 'b.png', '--max-image-pixels')


def test_test_py_mismatched_checkpoint_is_one_line_with_the_shapes(world, tmp_path, capsys):
    from extracter.test import main

    path = option_file(world, tmp_path, 'test', ('path.pretrain_network_g', str(world['w'] / 'wide.pth')))
    err = run_refused(main, ['-opt', path, '--root_path', tmp_path / 'root'], capsys, tmp_path, 'wide.pth',
                      'path.pretrain_network_g', 'in the file', 'in the network', 'convert_official.py')
    assert len(err.strip().splitlines()[-1]) < 600  # a summary, not the 14 KB of key names


# the user tools (extracter/tools/, run in-process) and the developer benchmarks (benchmarks/, run as
# ``python -m benchmarks.<name>`` in a subprocess: they are not part of the package)
SCRIPT_CASES = [
    ('prepare_vgg19', ['--source', 'torchvision', '--input', '{w}/junk.pth', '-o', '{tmp}/v.pth'], ['junk.pth']),
    ('convert_official', ['{w}/junk.pth', '-o', '{tmp}/c.pth'], ['junk.pth']),
    ('convert_official', ['{w}/tiny.pth', '-o', '{tmp}/c.pth'],
     ['tiny.pth', "already in this toolkit's format (Extracter", 'use it as it is', '--weights']),
    ('create_lmdb', ['--folder', '{w}', '--lmdb', '{tmp}/x.lmdb', '--compress-level', '12'],
     ['--compress-level', '12']),
    ('make_demo_trainset', ['--shared', '{tmp}/nowhere', '--num', '0', '-o', '{tmp}/dt'], ['--num', '0']),
    ('show_dataset', ['--type', 'Foo', '-o', '{tmp}/s.png'], ['Foo']),
    ('show_dataset', ['--yaml', '{w}/badyml.yml', '--section', 'x', '-o', '{tmp}/s.png'], ['badyml.yml', 'line 2']),
    ('model_stats', ['--lr-size', '0', '0'], ['--lr-size']),
    ('make_demo_trainset', ['--shared', '{tmp}/nowhere', '--num', '2', '-o', '{tmp}/dt'], ['nowhere']),
    ('demo', ['--weights', '{w}/junk.pth', '-o', '{tmp}/demo'], ['junk.pth']),
    ('demo', ['--weights', '{w}/tiny.pth', '-o', '{w}/tiny.pth'], ['tiny.pth', 'is a file']),
    ('bench_data', ['--src', '{tmp}/nowhere', '--num', '2'], ['nowhere']),
    ('benchmark_quality', ['--weights', '{w}/tiny.pth', '--shared', '{tmp}/nowhere'], ['nowhere']),
    ('benchmark_quality', ['--model', 'tiny={w}/tiny.pth', '--max-images', '-1'], ['--max-images', '-1']),
    ('benchmark_quality', ['--model', 'tiny'], ['--model', "'tiny'", 'LABEL=WEIGHTS']),  # was exit status 1
    ('benchmark_quality', ['--model', 'tiny={w}/tiny.pth', '--max-memory', '6X'], ['--max-memory: must', "'6X'"]),
    ('benchmark_scaling', ['--budget', '2048=lots', '--out', '{tmp}/bs'], ['--budget 2048=lots', "'lots'"]),
    ('benchmark_search', ['--knobs', 'nonsense', '--out', '{tmp}/s'], ['--knobs']),
    ('profile_inference', ['--tile-pad', '-1'], ['--tile-pad', '-1']),
    ('benchmark_scaling', ['--sizes', '0', '--out', '{tmp}/bs'], ['--sizes']),
    ('benchmark_search', ['--sizes', 'x'], ['--sizes', "'x'"]),
    ('measure_tile_pad', ['--pads', '-1'], ['--pads']),
    ('memory_phases', ['--tile-pad', '-1'], ['--tile-pad', '-1']),
]


def is_benchmark(script: str) -> bool:
    return (REPO_ROOT / 'benchmarks' / f'{script}.py').is_file()


@pytest.fixture(scope='module')
def benchmark_refusals(world, tmp_path_factory):
    """The benchmarks' cases, run at once, each in a folder of its own: (the run, its folder, what changed in
    ``world`` meanwhile)."""
    folders = {i: tmp_path_factory.mktemp(f'{script}{i}') for i, (script, _, _) in enumerate(SCRIPT_CASES)
               if is_benchmark(script)}
    before = snapshot(world['root'])
    runs = run_benchmarks({i: (SCRIPT_CASES[i][0], *(a.format(w=world['w'], tmp=folders[i]) for a in
                                                     SCRIPT_CASES[i][1])) for i in folders}, cwd=folders)
    world_changes = changed(before, snapshot(world['root']))
    return {i: (runs[i], folders[i], world_changes) for i in folders}


@pytest.mark.parametrize('case', range(len(SCRIPT_CASES)), ids=[f'{s}-{i}' for i, (s, _, _) in enumerate(SCRIPT_CASES)])
def test_scripts_refuse_bad_input_in_one_line(world, tmp_path, capsys, request, case):
    import importlib

    script, argv, names = SCRIPT_CASES[case]
    if is_benchmark(script):
        proc, tmp_path, world_changes = request.getfixturevalue('benchmark_refusals')[case]
        assert_refused(proc.returncode, proc.stderr, *names)
        assert world_changes == []
    else:
        argv = [a.format(w=world['w'], tmp=tmp_path) for a in argv]
        main = importlib.import_module(f'extracter.tools.{script}').main
        run_refused(main, argv, capsys, world['root'], *names)
    assert changed({}, snapshot(tmp_path)) == []  # nothing created where the outputs would have gone


# ----------------------------------------------------------------------------------------------- 5. the right words
@pytest.mark.parametrize('case,names', [
    ('lr-missing-file', ['nope.png', 'no such image file']), ('lr-missing-folder', ['nodir', 'file or folder']),
    ('ref-folder', ['--ref', 'is a folder', '--ref-dir']), ('out-file', ['-o', 'is a file']),
    ('max-memory-0', ['--max-memory', 'positive']), ('weights-missing', ['nope.pth']),
    ('official', ['official.pth', 'original EXTRACTER', 'convert_official.py']),
    ('ref-dir-file', ['--ref-dir', 'is a file']),
])
def test_messages_say_what_is_wrong(world, tmp_path, capsys, case, names):
    im = world['img']
    args = {
        'lr-missing-file': infer_args(world, tmp_path, lr=im / 'nope.png'),
        'lr-missing-folder': infer_args(world, tmp_path, lr=im / 'nodir'),
        'ref-folder': infer_args(world, tmp_path, ref=im / 'lr'),
        'out-file': infer_args(world, tmp_path)[:-1] + [im / 'ref.png'],
        'max-memory-0': infer_args(world, tmp_path, '--max-memory', '0'),
        'weights-missing': infer_args(world, tmp_path, weights='nope'),
        'official': infer_args(world, tmp_path, weights='official'),
        'ref-dir-file': ['--weights', world['w'] / 'tiny.pth', '--lr', im / 'lr', '--ref-dir', im / 'ref.png', '-o',
                         tmp_path / 'out'],
    }[case]
    run_refused(infer_main(), args, capsys, world['root'], *names)
    assert not (tmp_path / 'out').exists()


# ----------------------------------------------------------------------------------------------- 6. no silent surprise
@pytest.mark.parametrize('image,words', [('alpha.png', ['alpha channel is dropped', '50.0%']),
                                         ('ten_bit.png', ['16-bit image whose maximum', '--16bit-scaling'])])
def test_lossy_inputs_are_read_with_a_warning(world, tmp_path, capsys, image, words):
    rc, _, err = call(infer_main(), infer_args(world, tmp_path, lr=world['img'] / image), capsys)
    assert rc == 0, err
    warning = [line for line in err.splitlines() if line.startswith('warning:')]
    assert len(warning) == 1 and image in warning[0] and all(w in warning[0] for w in words), err


def test_tile_zero_is_an_error_and_a_small_pad_is_raised_with_a_note(world, tmp_path, capsys):
    run_refused(infer_main(), infer_args(world, tmp_path, '--tile', '0'), capsys, tmp_path, '--tile', '0')
    rc, _, err = call(infer_main(), infer_args(world, tmp_path, '--tile', '8', '--tile-pad', '0'), capsys)
    assert rc == 0, err
    assert 'warning: tile_pad 0 is below what Extracter needs' in err and 'using tile_pad 8' in err


# ------------------------------------------------------------------------------------------------- 7. interruptions
def test_sigterm_while_writing_leaves_no_temporary_file(world, tmp_path, capsys, monkeypatch):
    from extracter.utils import visualize

    real = visualize.Image.Image.save

    def save_then_sigterm(self, fp, *a, **k):  # the signal arrives while a picture is being written
        real(self, fp, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(visualize.Image.Image, 'save', save_then_sigterm)
    rc, _, err = call(infer_main(), infer_args(world, tmp_path), capsys)
    assert_refused(rc, err, 'terminated by SIGTERM', 'no input was left partly written', status=128 + signal.SIGTERM)
    # the temporary file and the lock were removed, and so the folder the run made: nothing partial
    assert not (tmp_path / 'out').exists()


def test_stale_temporary_files_of_a_killed_run_are_removed_by_the_next(world, tmp_path, capsys):
    from extracter.utils.file_io import host_tag

    out = tmp_path / 'out'
    out.mkdir()
    stale = out / f'.a_sr.png.extracter-tmp-{host_tag()}-999999999.k2j9x0ab.tmp'  # a pid that cannot exist
    stale.write_bytes(b'')
    rc, _, err = call(infer_main(), infer_args(world, tmp_path), capsys)
    assert rc == 0, err
    assert not stale.exists() and f'removed stale temporary {stale}' in err
    assert sorted(p.name for p in out.iterdir()) == ['a_bicubic.png', 'a_compare.png', 'a_sr.png']


# ------------------------------------------------------------------------------------ 8. a corrupt image in a folder
def test_unreadable_header_in_a_folder_stops_before_any_output(world, tmp_path, capsys):
    from extracter.tools.create_lmdb import main as lmdb_main

    run_refused(infer_main(), infer_args(world, tmp_path, lr=world['img'] / 'mid_header'), capsys, tmp_path,
                'b.png', 'nothing was written')
    run_refused(lmdb_main, ['--folder', world['img'] / 'mid', '--lmdb', tmp_path / 'm.lmdb', '--no-progress'],
                capsys, tmp_path, 'b.png')


def test_corrupt_pixels_in_a_folder_the_rest_is_written_and_skip_existing_finishes(world, tmp_path, capsys):
    import shutil

    folder = tmp_path / 'lr'
    shutil.copytree(world['img'] / 'mid', folder)
    args = infer_args(world, tmp_path, lr=folder)
    rc, _, err = call(infer_main(), args, capsys)
    assert_refused(rc, err, 'b.png', 'corrupt or truncated', '--skip-existing')
    out = tmp_path / 'out'
    assert sorted(p.name for p in out.iterdir()) == sorted(f'{s}_{k}.png' for s in 'ac'
                                                           for k in ('sr', 'bicubic', 'compare'))
    written = snapshot(out)
    (folder / 'b.png').write_bytes((world['img'] / 'good_b.png').read_bytes())  # the user fixes the file
    rc, out_text, err = call(infer_main(), args + ['--skip-existing'], capsys)
    assert rc == 0, err
    assert 'skipped 2 input(s)' in out_text and (out / 'b_sr.png').is_file()
    assert all(snapshot(out)[p] == h for p, h in written.items())  # the earlier outputs were not touched


# ---------------------------------------------------------------------- 9. memory budgets: the flag or key named once
def test_memory_budget_errors_name_the_flag_or_the_key_once(world, tmp_path, capsys):
    err = run_refused(infer_main(), infer_args(world, tmp_path, '--max-memory', 'lots'), capsys, tmp_path,
                      "--max-memory: must look like '6G'", "got 'lots'")
    assert 'max_memory' not in err, err
    from extracter.train import main

    path = option_file(world, tmp_path, 'train', ('val.max_memory', 'lots'))
    err = run_refused(main, ['-opt', path, '--root_path', tmp_path / 'root'], capsys, tmp_path, path.name,
                      "val.max_memory must look like '6G'", "got 'lots'")
    assert err.count('max_memory') == 1, err


# --------------------------------------------------------------------------- 10. checkpoints that would run code
class _Call:
    """Unpickling this with plain pickle would call ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Stage(enum.Enum):  # metadata of the kinds training frameworks store: pickled by reference, never imported
    TRAIN = 'train'


class History:
    def mean(self):
        return 0.0


def hostile_payloads(marker: Path) -> dict:
    """{case: (payload, the callable the message names)}: each would create ``marker`` if it were run."""
    import subprocess

    return {
        'system': (_Call(os.system, (f'touch {marker}',)), 'os.system'),
        'eval': (_Call(eval, (f'open({str(marker)!r}, "w").close()',)), 'builtins.eval'),
        'subprocess': (_Call(subprocess.check_call, (['touch', str(marker)],)), 'subprocess.check_call'),
        'method': (_Call(marker.touch, ()), f'pathlib.{type(marker).__name__}.touch'),  # getattr, then a call
    }


@pytest.mark.parametrize('case', ['system', 'eval', 'subprocess', 'method'])
def test_a_checkpoint_that_would_run_code_is_refused_by_the_converter_and_infer(world, tmp_path, capsys, case):
    from extracter.tools.convert_official import main as convert_main

    marker = tmp_path / 'pwned'
    payload, name = hostile_payloads(marker)[case]
    tiny = torch.load(world['w'] / 'tiny.pth', weights_only=True)['params']
    evil = tmp_path / 'w' / 'evil.pth'
    evil.parent.mkdir()
    torch.save({'state_dict': to_original_layout('Extracter', tiny), 'meta': {'note': payload}}, evil)
    run_refused(convert_main, [evil, '-o', tmp_path / 'c.pth'], capsys, tmp_path, 'evil.pth: refused: the pickle '
                f'calls {name} (a checkpoint never needs to run code); nothing was run')
    torch.save({'params': tiny, 'meta': payload}, evil)  # our layout, and the payload
    run_refused(infer_main(), infer_args(world, tmp_path, weights=evil), capsys, tmp_path, 'evil.pth',
                f'calls {name}', 'nothing was run')
    assert not marker.exists()


def test_a_raw_pickle_that_would_run_code_is_named_as_such(world, tmp_path, capsys):
    from extracter.tools.convert_official import main as convert_main

    marker = tmp_path / 'pwned'
    evil = tmp_path / 'w' / 'evil.pth'
    evil.parent.mkdir()
    evil.write_bytes(b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.")  # protocol 0: INST os.system
    run_refused(convert_main, [evil, '-o', tmp_path / 'c.pth'], capsys, tmp_path, 'evil.pth', 'calls os.system')
    assert not marker.exists()


def test_training_metadata_objects_are_kept_as_placeholders_not_refused(world, tmp_path, capsys):
    import argparse
    import collections
    import datetime

    state = to_original_layout('Extracter', torch.load(world['w'] / 'tiny.pth', weights_only=True)['params'])
    meta = {'seed': np.int64(5), 'curve': np.arange(3.0), 'stage': Stage.TRAIN, 'work_dir': Path('/runs/x'),
            'time': datetime.datetime(2024, 1, 2), 'counts': collections.defaultdict(list, a=[1]),
            'args': argparse.Namespace(lr=1e-4), 'ranks': collections.Counter('aab'), 'statistic': History.mean,
            'history': History()}
    src = tmp_path / 'w' / 'official_meta.pth'
    src.parent.mkdir()
    torch.save({'state_dict': state, 'meta': meta}, src)
    from extracter.tools.convert_official import main as convert_main

    rc, out, err = call(convert_main, [src, '-o', tmp_path / 'c.pth'], capsys)
    assert rc == 0, err
    # collections.Counter (MultiStepLR's milestones) is read as itself; the other 9 become placeholders
    assert 'note: not loaded (replaced by placeholders): 9 object(s)' in out and 'argparse.Namespace' in out, out
    assert 'Counter' not in out
    assert (tmp_path / 'c.pth').is_file() and (tmp_path / 'c.yml').is_file()


def test_a_checkpoint_in_pickle_protocol_4_loads_without_a_console_warning(world, tmp_path, capsys):
    tiny = torch.load(world['w'] / 'tiny.pth', weights_only=True)
    weights = tmp_path / 'w' / 'p4.pth'
    weights.parent.mkdir()
    torch.save(tiny, weights, pickle_protocol=4)  # torch's weights-only reader warns about it, then cannot read it
    (weights.parent / 'p4.yml').write_text(yaml.safe_dump({'network_g': NET}))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        rc, _, err = call(infer_main(), infer_args(world, tmp_path, weights=weights), capsys)
    assert rc == 0, err
    assert 'warning' not in err.lower() and 'protocol' not in err, err
