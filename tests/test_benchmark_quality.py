"""benchmarks/benchmark_quality.py (in a subprocess) on tiny inputs cut from real pictures: the comparison mode
(RefSR models with real and self references, a single-image model, the bicubic row; Y and RGB metrics, time and
memory; tables and crops) checked against direct computations, its errors, and the single-model mode still working."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from basicsr.metrics import calculate_psnr, calculate_ssim
from PIL import Image

from tests.bench_helpers import run_benchmark, run_benchmarks

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = {
    'Extracter': dict(num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, top_k=2, window=6, stride=2,
                      padding=2, dfe_init='random'),
    'TTSR': dict(num_res_blocks='1+1+1+1', n_feats=8, lte_init='random'),
    'DRCT': dict(upscale=4, img_size=16, window_size=8, embed_dim=24, gc=10, depths=[2], num_heads=[4], mlp_ratio=2,
                 upsampler='pixelshuffle'),
}


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture(scope='module')
def tiny_shared(tmp_path_factory, shared_data):
    """A ../shared/data look-alike: 17 frames of a Vid4 region (for the t+16 reference), two Set5 and Set14 images."""
    from extracter.data.image_io import list_images, read_image

    root = tmp_path_factory.mktemp('shared')
    frames = shared_data / 'video' / 'vid4-calendar'
    for i, name in enumerate(list_images(frames)[:17]):
        _save(np.ascontiguousarray(read_image(frames / name)[200:264, 300:364]), root / 'video' / 'vid4-tiny' /
              f'frame_{i:03d}.png')
    for name in ('Set5', 'Set14'):
        folder = shared_data / 'sisr' / name
        for fname in list_images(folder)[:2]:
            img = read_image(folder / fname)
            _save(np.ascontiguousarray(img[:44, :40]), root / 'sisr' / name / fname)
    return root


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    from extracter.registry import ARCH_REGISTRY

    folder = tmp_path_factory.mktemp('models')
    out = {}
    for i, (arch, options) in enumerate(TINY.items()):
        torch.manual_seed(10 + i)
        net = ARCH_REGISTRY.get(arch)(**options)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
        weights = folder / f'{arch.lower()}.pth'
        torch.save({'params': net.state_dict()}, weights)
        (folder / f'{arch.lower()}.yml').write_text(yaml.safe_dump({'network_g': {'type': arch, **options}}))
        out[arch] = (weights, net.eval())
    return out


def _main(*argv):
    proc = run_benchmark('benchmark_quality', *argv)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _rows(path: Path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def comparison(tmp_path_factory, tiny_shared, tiny_models):
    out = tmp_path_factory.mktemp('compare') / 'report'
    _main('--model', f'EXT={tiny_models["Extracter"][0]}', '--model', f'TTSR={tiny_models["TTSR"][0]}',
          '--model', f'DRCT={tiny_models["DRCT"][0]}', '--shared', tiny_shared, '-o', out, '--crop', 32,
          '--margin', 8, '--frame-step', 100, '--sisr-crop', 32, '--motorcycle-crop', 32,
          '--motorcycle-ref-crop', 96, '--crop-size', 16, '--zoom', 2, '--note', 'shared machine')
    return out


def test_comparison_rows_cover_every_set_reference_and_model(comparison):
    summary = _rows(comparison / 'compare.csv')
    got = {(r['dataset'], r['reference'], r['model']) for r in summary}
    ladder = [f'frame t+{k}' for k in (1, 2, 4, 8, 16)]
    expected = set()
    for dataset, real in (('Vid4', ladder), ('Set5', []), ('Set14', []), ('motorcycle', ['right view'])):
        expected |= {(dataset, 'none', 'bicubic'), (dataset, 'none', 'DRCT')}
        expected |= {(dataset, ref, m) for ref in real + ['self-reference'] for m in ('EXT', 'TTSR')}
    assert got == expected
    images = {r['dataset']: int(r['images']) for r in summary if r['model'] == 'bicubic'}
    assert images == {'Vid4': 1, 'Set5': 2, 'Set14': 2, 'motorcycle': 1}
    for r in summary:
        assert float(r['seconds']) > 0 and float(r['peak_mib']) >= 0
        assert 0 < float(r['ssim_rgb_b4']) <= 1 and float(r['psnr_y_b4']) > 5
    per_image = _rows(comparison / 'per_image.csv')
    assert len(per_image) == sum(int(r['images']) for r in summary)
    md = (comparison / 'compare.md').read_text()
    assert md.startswith('### EXT vs TTSR vs DRCT')
    assert '| set | reference | model | psnr_y_b4 | ssim_y_b4 | psnr_rgb_b4 | ssim_rgb_b4 | images |' in md
    assert 'shared machine' in md
    crops = np.asarray(Image.open(comparison / 'crops.png'))
    assert crops.shape[0] > 4 * 2 * 16  # a row per set, crops enlarged twice


def _metrics(sr: np.ndarray, hr: np.ndarray):
    bgr = [np.ascontiguousarray(a[..., ::-1]) for a in (sr, hr)]
    return {'psnr_y_b4': calculate_psnr(*bgr, crop_border=4, test_y_channel=True),
            'ssim_y_b4': calculate_ssim(*bgr, crop_border=4, test_y_channel=True),
            'psnr_rgb_b4': calculate_psnr(*bgr, crop_border=4), 'ssim_rgb_b4': calculate_ssim(*bgr, crop_border=4)}


def _to_t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.float32).transpose(2, 0, 1) / 255)[None]


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _bicubic(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def test_motorcycle_rows_equal_direct_computations(comparison, tiny_models):
    from skimage.data import stereo_motorcycle

    left, right, _ = stereo_motorcycle()
    top, lft = (left.shape[0] - 32) // 2, (left.shape[1] - 32) // 2
    hr = left[top:top + 32, lft:lft + 32]
    top, lft = (right.shape[0] - 96) // 2, (right.shape[1] - 96) // 2
    right = right[top:top + 96, lft:lft + 96]  # --motorcycle-ref-crop 96
    lr = _bicubic(hr, 8, 8)
    rows = {(r['reference'], r['model']): r for r in _rows(comparison / 'per_image.csv')
            if r['dataset'] == 'motorcycle'}
    expected = {('none', 'bicubic'): _bicubic(lr, 32, 32)}
    with torch.no_grad():
        expected[('none', 'DRCT')] = _to_u8(tiny_models['DRCT'][1].forward_padded(_to_t(lr)))
        # TTSR: the reference replicate-padded to a multiple of 4, its down-up made with PIL, the network called as is
        ref = np.pad(right, ((0, -right.shape[0] % 4), (0, -right.shape[1] % 4), (0, 0)), mode='edge')
        h2, w2 = ref.shape[:2]
        downup = _bicubic(_bicubic(ref, w2 // 4, h2 // 4), w2, h2)
        sr = tiny_models['TTSR'][1](_to_t(lr), _to_t(ref), _to_t(_bicubic(lr, 32, 32)), _to_t(downup))
        expected[('right view', 'TTSR')] = _to_u8(sr)
    for key, img in expected.items():
        for name, value in _metrics(img, hr).items():
            assert float(rows[key][name]) == pytest.approx(value, abs=1e-4), (key, name)
    assert rows[('right view', 'TTSR')]['psnr_y_b4'] != rows[('self-reference', 'TTSR')]['psnr_y_b4']


ARGUMENT_ERRORS = [
    (['--model', 'EXT'], 'expects LABEL=WEIGHTS'),
    (['--model', 'bicubic=x.pth'], "the label bicubic is the bicubic row's own"),
    (['--model', 'A=x.pth', '--model', 'A=y.pth'], 'labels must differ'),
    (['--model', 'A=x.pth', '--sets', 'vid4,urban'], "unknown ['urban']"),
    (['--model', 'A=x.pth', '--weights', 'x.pth'], 'either --weights'),
    (['--model', 'A=/no/x.pth', '--sets', 'motorcycle'], 'error: --model A: weights not found: /no/x.pth'),
    ([], 'give --weights'),
]


@pytest.fixture(scope='module')
def refusals(tmp_path_factory):
    """Every bad command line, run at once: (the run, the output folder it was given)."""
    outs = {i: tmp_path_factory.mktemp(f'refused{i}') / 'out' for i in range(len(ARGUMENT_ERRORS))}
    runs = run_benchmarks({i: ('benchmark_quality', *argv, '-o', outs[i]) for i, (argv, _) in
                           enumerate(ARGUMENT_ERRORS)})
    return {i: (runs[i], outs[i]) for i in runs}


@pytest.mark.parametrize('case', range(len(ARGUMENT_ERRORS)), ids=[f'argv{i}' for i in range(len(ARGUMENT_ERRORS))])
def test_comparison_argument_errors(refusals, case):
    (proc, out), message = refusals[case], ARGUMENT_ERRORS[case][1]
    assert proc.returncode != 0  # through the scripts' error boundary (run_main): a message, a non-zero exit status
    assert message in proc.stderr
    assert not out.exists()


def test_single_model_mode_still_works(tmp_path, tiny_shared, tiny_models):
    out = tmp_path / 'single'
    _main('--weights', tiny_models['TTSR'][0], '--shared', tiny_shared, '-o', out, '--crop', 32,
          '--margin', 8, '--frame-step', 100, '--sisr-crop', 32)
    rows = _rows(out / 'per_image.csv')
    assert {r['method'] for r in rows} == {'bicubic', 'self-reference'} | {f'ref k={k}' for k in (1, 2, 4, 8, 16)}
    assert (out / 'summary.md').read_text().startswith('### ttsr.pth') and (out / 'psnr_vs_k.png').is_file()
