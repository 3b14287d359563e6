"""Evaluation protocols on a CUFED5-layout fixture cut from real photographs: test.py with ``val.protocols`` (Y/RGB x
border 0/4 x PSNR/SSIM) and the reference protocols ``ref_level`` 1, 3, ``all`` and ``stitched``, each checked against
an independent computation (inputs made here with PIL and OpenCV as the original code makes them, the network called
directly, PSNR/SSIM written out in numpy/scipy), and shown to give different numbers."""

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.signal import correlate2d

from extracter import test as test_entry
from extracter.data import degradations as deg
from extracter.evaluation import expand_protocols, merge_metrics
from extracter.options.schema import OptionError, load_yaml, validate_options

REPO = Path(__file__).resolve().parents[1]
STITCH = 48  # canvas side for the small fixture (its references are at most 48 pixels); CUFED5 itself: MASA-SR's 512
SETS = {'L1': 1, 'L3': 3, 'ALL': 'all', 'STITCHED': 'stitched'}
# a small CUFED5-layout fixture (the network runs on every protocol twice): HR sides not multiples of 8, references
# of varied sizes, level 1 overlapping the HR most
HR_SIZES = [(70, 54), (61, 66)]
REF_SIZES = [(40, 44), (36, 48), (48, 40), (44, 36), (30, 46)]

pytestmark = pytest.mark.usefixtures('one_thread')


# ---------------------------------------------------------------- independent metrics (numpy / scipy)
def luma(img_rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of MATLAB's rgb2ycbcr on [0, 255] values (not rounded)."""
    r, g, b = (img_rgb[..., i].astype(np.float64) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse)


def ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004: Gaussian window 11, sigma 1.5, over the valid region."""
    x = np.arange(11) - 5
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    a, b = a.astype(np.float64), b.astype(np.float64)

    def f(img):
        return correlate2d(img, w, mode='valid')

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a ** 2, f(b * b) - mu_b ** 2, f(a * b) - mu_a * mu_b
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(np.mean(ssim_map))


def measure(sr: np.ndarray, hr: np.ndarray, measure_name: str, colour: str, border: int) -> float:
    if border:
        sr, hr = sr[border:-border, border:-border], hr[border:-border, border:-border]
    if colour == 'y':
        sr, hr = luma(sr), luma(hr)
        return psnr(sr, hr) if measure_name == 'psnr' else ssim_channel(sr, hr)
    if measure_name == 'psnr':
        return psnr(sr, hr)
    return float(np.mean([ssim_channel(sr[..., c], hr[..., c]) for c in range(3)]))


# ---------------------------------------------------------------- independent inputs (PIL / OpenCV)
def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


def top_left(img: np.ndarray, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[:h - h % multiple, :w - w % multiple]


def bicubic(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def masa_stitch(refs, canvas: int) -> np.ndarray:
    """MASA-SR's TestSet_multi: cv2.copyMakeBorder(BORDER_REPLICATE) centred on canvas x canvas, cv2.vconcat."""
    padded = []
    for ref in refs:
        h, w = ref.shape[:2]
        t, left = (canvas - h) // 2, (canvas - w) // 2
        padded.append(cv2.copyMakeBorder(np.ascontiguousarray(ref), t, canvas - h - t, left, canvas - w - left,
                                         cv2.BORDER_REPLICATE))
    return cv2.vconcat(padded)


def t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.float32).transpose(2, 0, 1) / 255)[None]


def expected_sr(net, folder: Path, group: str, level, multiple: int):
    """(SR uint8, HR) for one CUFED5 group under a reference protocol, built without the dataset or the engine."""
    hr = top_left(read_rgb(folder / f'{group}_0.png'), multiple)
    h, w = hr.shape[:2]
    lr = bicubic(hr, w // 4, h // 4)
    lr_up = bicubic(lr, w, h)
    levels = [level] if isinstance(level, int) else [1, 2, 3, 4, 5]
    refs = [read_rgb(folder / f'{group}_{lv}.png') for lv in levels]
    if level == 'stitched':
        refs = [masa_stitch(refs, STITCH)]
    refs = [top_left(r, multiple) for r in refs]
    downups = [bicubic(bicubic(r, r.shape[1] // 4, r.shape[0] // 4), r.shape[1], r.shape[0]) for r in refs]
    with torch.no_grad():
        encoded = [net.encode_reference(t(r), t(d)) for r, d in zip(refs, downups)]
        sr = net.forward_features(t(lr), t(lr_up), encoded if len(encoded) > 1 else encoded[0])
    return (sr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), hr


# ---------------------------------------------------------------- the run
@pytest.fixture(scope='module')
def small_cufed5(tmp_path_factory) -> Path:
    """``NNN_0.png`` .. ``NNN_5.png`` cut from real photographs of ../shared/data (BSD200)."""
    from tests.data_helpers import shared_data_dir

    photos = shared_data_dir('train', 'bsd200')
    folder = tmp_path_factory.mktemp('CUFED5_small')
    for g, (name, (h, w)) in enumerate(zip(sorted(p.name for p in photos.iterdir())[10:], HR_SIZES)):
        img = read_rgb(photos / name)
        Image.fromarray(img[20:20 + h, 30:30 + w]).save(folder / f'{g:03d}_0.png')
        for level, (rh, rw) in enumerate(REF_SIZES, start=1):
            top, left = 20 + 12 * level, 30 + 10 * level
            Image.fromarray(img[top:top + rh, left:left + rw]).save(folder / f'{g:03d}_{level}.png')
    return folder


@pytest.fixture(scope='module')
def protocol_run(tmp_path_factory, small_cufed5):
    from extracter.archs.extracter_arch import Extracter

    tmp = tmp_path_factory.mktemp('protocols')
    opt = load_yaml(str(REPO / 'options' / 'test' / 'tiny_cufed5_cpu.yml'))
    opt['name'] = 'protocols'
    net_opt = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    torch.manual_seed(5)
    net = Extracter(**net_opt).eval()
    with torch.no_grad():  # non-trivial texture paths: the reference must matter for the output
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ckpt = tmp / 'net_g.pth'
    torch.save({'params': net.state_dict()}, ckpt)
    folder = small_cufed5
    base = opt['datasets']['test_1']
    opt['datasets'] = {f'test_{i}': dict(base, name=f'CUFED5_{name}', dataroot=str(folder), ref_level=level)
                       for i, (name, level) in enumerate(SETS.items(), start=1)}
    opt['datasets']['test_4']['stitch_size'] = STITCH
    opt['path']['pretrain_network_g'] = str(ckpt)
    opt['val'] = {'save_img': True, 'pbar': False,
                  'protocols': {'colour': ['y', 'rgb'], 'border': [0, 'scale'], 'metrics': ['psnr', 'ssim']}}
    yml = tmp / 'protocols.yml'
    yml.write_text(yaml.safe_dump(opt, sort_keys=False))
    test_entry.test_pipeline(str(REPO), ['-opt', str(yml), '--root_path', str(tmp)])
    return {'results': tmp / 'results' / 'protocols', 'net': net, 'folder': folder, 'stride': net_opt['stride']}


def rows_of(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


NAMES = ['psnr_y_b0', 'ssim_y_b0', 'psnr_y_b4', 'ssim_y_b4', 'psnr_rgb_b0', 'ssim_rgb_b0', 'psnr_rgb_b4', 'ssim_rgb_b4']


@pytest.mark.parametrize('set_name', list(SETS))
def test_each_protocol_equals_an_independent_computation(protocol_run, set_name):
    level = SETS[set_name]
    results = protocol_run['results']
    rows = rows_of(results / f'metrics_CUFED5_{set_name}.csv')
    assert list(rows[0])[1:] == NAMES + ['protocol']
    assert f'ref_level {level}' in rows[0]['protocol']
    md = (results / f'metrics_CUFED5_{set_name}.md').read_text()
    assert md.startswith(f'Protocol: CUFED5 ref_level {level}')
    assert 'psnr_rgb_b4: PSNR on RGB, border 4' in md and 'ssim_y_b0: SSIM on Y (BT.601, BasicSR), border 0' in md
    for row in rows[:-1]:
        sr, hr = expected_sr(protocol_run['net'], protocol_run['folder'], row['image'][:-2], level,
                             4 * protocol_run['stride'])
        saved = np.asarray(Image.open(results / 'visualization' / f'CUFED5_{set_name}' /
                                      f'{row["image"]}_protocols.png').convert('RGB'))
        assert saved.shape == sr.shape
        assert np.abs(saved.astype(int) - sr.astype(int)).max() <= 1  # the same SR (float rounding at most)
        for name in NAMES:
            m, colour, border = name.split('_')
            assert float(row[name]) == pytest.approx(measure(saved, hr, m, colour, int(border[1:])), abs=2e-4), name
    for name in NAMES:
        assert float(rows[-1][name]) == pytest.approx(np.mean([float(r[name]) for r in rows[:-1]]), abs=1e-4)


def test_protocols_give_different_numbers_and_one_summary(protocol_run):
    results = protocol_run['results']
    means = {s: rows_of(results / f'metrics_CUFED5_{s}.csv')[-1] for s in SETS}
    for s in SETS:  # colour and border change the numbers
        values = [float(means[s][n]) for n in NAMES if n.startswith('psnr')]
        assert len({round(v, 4) for v in values}) == 4, values
    for name in ('psnr_y_b0', 'psnr_rgb_b4'):  # and so does the reference protocol
        values = [float(means[s][name]) for s in SETS]
        assert len({round(v, 4) for v in values}) == len(SETS), (name, values)
    summary = rows_of(results / 'summary.csv')
    assert [r['test set'] for r in summary] == [f'CUFED5_{s}' for s in SETS]
    for r, s in zip(summary, SETS):
        assert r['images'] == str(len(HR_SIZES)) and f'ref_level {SETS[s]}' in r['reference protocol']
        for name in NAMES:
            assert r[name] == means[s][name]
    md = (results / 'summary.md').read_text()
    assert '| test set | reference protocol | images | psnr_y_b0 |' in md and 'stitched' in md


def test_stitch_references_is_masa_srs_test_set_multi(cufed_root):
    folder = cufed_root / 'test' / 'CUFED5'
    refs = [read_rgb(folder / f'001_{lv}.png') for lv in range(1, 6)]
    ours = deg.stitch_references(refs, 144)
    assert ours.shape == (5 * 144, 144, 3)
    assert np.array_equal(ours, masa_stitch(refs, 144))
    with pytest.raises(ValueError, match=r'001_2.png: size 120x140 is larger than the stitching canvas 128x128'):
        deg.stitch_references(refs, 128, [str(folder / f'001_{lv}.png') for lv in range(1, 6)])


def test_all_and_stitched_samples(small_cufed5):
    from extracter.data.cufed5_dataset import CUFED5Dataset

    folder = small_cufed5
    all_refs = CUFED5Dataset(dataroot=str(folder), ref_level='all', stride=2)[1]
    assert isinstance(all_refs['ref'], list) and len(all_refs['ref']) == len(all_refs['ref_downup']) == 5
    assert [Path(p).name for p in all_refs['ref_path']] == [f'001_{lv}.png' for lv in range(1, 6)]
    for ref, lv in zip(all_refs['ref'], range(1, 6)):  # each reference cropped on its own to a multiple of 8
        h, w = read_rgb(folder / f'001_{lv}.png').shape[:2]
        assert tuple(ref.shape[-2:]) == (h - h % 8, w - w % 8)
    stitched = CUFED5Dataset(dataroot=str(folder), ref_level='stitched', stitch_size=STITCH, stride=2)[1]
    assert tuple(stitched['ref'].shape) == (3, 5 * STITCH, STITCH)
    assert torch.equal(stitched['gt'], all_refs['gt']) and torch.equal(stitched['lq'], all_refs['lq'])
    with pytest.raises(ValueError, match='larger than the stitching canvas 44x44'):
        CUFED5Dataset(dataroot=str(folder), ref_level='stitched', stitch_size=44)[0]


def _test_opt(**val):
    opt = load_yaml(str(REPO / 'options' / 'test' / 'tiny_cufed5_cpu.yml'))
    opt['val'].update(val)
    return opt


@pytest.mark.parametrize('change, message', [
    ({'ref_level': 6}, "datasets.test_1.ref_level must be one of 1, 2, 3, 4, 5, all, stitched, got 6"),
    ({'ref_level': 'union'}, "got 'union'"),
])
def test_bad_ref_level_is_an_option_error(change, message):
    opt = _test_opt()
    opt['datasets']['test_1'].update(change)
    with pytest.raises(OptionError, match=message):
        validate_options(opt, is_train=False, source='t.yml', check_files=False)


@pytest.mark.parametrize('protocols, message', [
    ({'colour': 'yuv', 'border': 0, 'metrics': 'psnr'}, r"t.yml: val.protocols.colour must be one of y, rgb"),
    ({'colour': 'y', 'border': [4, 'scale'], 'metrics': 'psnr'}, 'names psnr_y_b4 twice'),
    ({'colour': 'y', 'border': 0, 'metric': 'psnr'}, "did you mean 'val.protocols.metrics'"),
    ({'colour': 'y', 'border': 0}, 'val.protocols.metrics is missing'),
    ({'colour': 'y', 'border': -4, 'metrics': 'psnr'}, "border must be 'scale' or a number of pixels >= 0"),
    ({'colour': 'rgb', 'border': 4, 'metrics': 'psnr'}, None),  # fine
])
def test_protocol_option_errors(protocols, message):
    opt = _test_opt(protocols=protocols)
    if message is None:
        validate_options(opt, is_train=False, source='t.yml', check_files=False)
        assert opt['val']['metrics']['psnr_rgb_b4'] == {'type': 'calculate_psnr', 'crop_border': 4,
                                                        'test_y_channel': False}
        return
    with pytest.raises(OptionError, match=message):
        validate_options(opt, is_train=False, source='t.yml', check_files=False)


def test_a_hand_written_metric_must_agree_with_the_protocol_of_its_name():
    spec = {'colour': 'y', 'border': 'scale', 'metrics': 'psnr'}
    same = {'psnr_y_b4': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}
    assert merge_metrics(same, spec) == expand_protocols(spec)
    with pytest.raises(ValueError, match='val.metrics.psnr_y_b4 differs'):
        merge_metrics({'psnr_y_b4': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True}}, spec)


def test_cufed5_protocols_yml_is_the_published_table():
    opt = load_yaml(str(REPO / 'options' / 'test' / 'cufed5_protocols.yml'))
    validate_options(opt, is_train=False, source='cufed5_protocols.yml', check_files=False)
    levels = [ds['ref_level'] for _, ds in sorted(opt['datasets'].items(), key=lambda kv: int(kv[0].split('_')[1]))]
    assert levels == [1, 2, 3, 4, 5, 'all', 'stitched']
    assert set(opt['val']['metrics']) == set(NAMES)
