#!/usr/bin/env python
"""Benchmark the approximate texture search against the exact chunked search on real VGG relu3_1 features.

Pairs (from ../shared/data, never copied into the repository), each resized to a square output size S (the HR is
S x S, the LR S/4, the reference S x S):
  dcsr       DCSR CameraFusion: the wide view's centre (the telephoto's field of view) as HR, the telephoto as reference
  sintel     MPI Sintel frames 16 and 17 (centre squares)
  vid4       Vid4 calendar frames 1 and 5 (t and t+4, centre squares)
  motorcycle skimage.data.stereo_motorcycle(): left view as HR, right view as reference (centre squares)

Search features are the Extracter's relu3_1 (VGG-19 initialisation from the canonical local file, see
scripts/prepare_vgg19.py): ``search_features`` of the bicubic x4 up-sampled LR and ``encode_reference(ref).search`` (the
down-up-sampled reference). They are cached under experiments/search_features/.

Every case (pair x size x geometry) runs in its own subprocess (so peak RSS is per case). The exact chunked search is
run in full up to --exact-full-max query-key products, else on a random sample of query patches only (the exact top-k
of those queries against every reference patch).

Example:
  python scripts/benchmark_search.py --sizes 512 1024 2048 --out docs/benchmarks/search
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from extracter.utils.cli import ArgumentParser, run_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data'
if not DATA.is_dir():
    DATA = Path('/work/shared/data')
FEATURE_DIR = ROOT / 'experiments' / 'search_features'
PAIRS = ('dcsr', 'sintel', 'vid4', 'motorcycle')
GEOMETRIES = {'6/2/2': (6, 2, 2), '3/1/1': (3, 1, 1)}


def _centre_square(img: np.ndarray, side: int = 0) -> np.ndarray:
    h, w = img.shape[:2]
    side = side or min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def load_pair(name: str):
    """(HR-side image, reference image) as uint8 HxWx3 arrays, before resizing."""
    from PIL import Image, ImageOps

    def read(path):
        return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert('RGB'))

    if name == 'dcsr':
        folder = DATA / 'refsr-pairs' / 'dcsr-camerafusion'
        wide, tele = read(folder / 'wide.jpg'), read(folder / 'tele.jpg')
        # the telephoto has about twice the focal length: its field of view is the wide view's centre half
        return _centre_square(wide, min(wide.shape[:2]) // 2), _centre_square(tele)
    if name == 'sintel':
        folder = DATA / 'video' / 'sintel'
        return _centre_square(read(folder / 'frame_0016.png')), _centre_square(read(folder / 'frame_0017.png'))
    if name == 'vid4':
        folder = DATA / 'video' / 'vid4-calendar'
        return _centre_square(read(folder / 'frame_001.png')), _centre_square(read(folder / 'frame_005.png'))
    if name == 'motorcycle':
        import skimage.data

        left, right, _ = skimage.data.stereo_motorcycle()
        return _centre_square(left), _centre_square(right)
    raise ValueError(f'unknown pair {name!r}')


def _to_tensor(img: np.ndarray, size: int) -> torch.Tensor:
    from PIL import Image

    img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return torch.from_numpy(img.copy()).permute(2, 0, 1).float().div_(255).unsqueeze(0)


def feature_path(pair: str, size: int) -> Path:
    return FEATURE_DIR / f'{pair}_{size}.pt'


@torch.no_grad()
def prepare_features(pair: str, size: int, model=None) -> Path:
    """relu3_1 search features (query of the up-sampled LR, keys of the down-up-sampled reference), cached."""
    path = feature_path(pair, size)
    if path.exists():
        return path
    import extracter  # noqa: F401
    from extracter.archs.extracter_arch import Extracter
    from extracter.archs.refsr_base import SCALE, bicubic_resize, make_lr_up

    if model is None:
        model = Extracter(dfe_init='vgg19').eval()
    hr_img, ref_img = load_pair(pair)
    hr, ref = _to_tensor(hr_img, size), _to_tensor(ref_img, size)
    lr = bicubic_resize(hr, (size // SCALE, size // SCALE))
    query = model.search_features(make_lr_up(lr))
    keys = model.encode_reference(ref).search
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'query': query.contiguous(), 'keys': keys.contiguous(), 'pair': pair, 'size': size}, path)
    return path


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _case_worker(args) -> None:
    """One method on one case, in this (sub)process: writes its result for the sampled queries to --result."""
    from extracter.archs.search_approximate import approximate_search, exact_search_queries
    from extracter.archs.search_transfer import SearchTransfer

    torch.set_num_threads(args.threads)
    feats = torch.load(feature_path(args.pair, args.size), weights_only=True)
    query, keys = feats['query'], feats['keys']
    sample = torch.load(args.sample, weights_only=True)
    geo = GEOMETRIES[args.geometry]
    rss_loaded = _rss_mib()
    t0 = time.perf_counter()
    if args.method == 'approx':
        scores, index = approximate_search(query, keys, *geo, args.top_k, **json.loads(args.knobs))
        if sample is not None:
            scores, index = scores[:, :, sample], index[:, :, sample]
    elif sample is None:
        st = SearchTransfer(*geo, top_k=args.top_k, mode='chunked')
        scores, index = st.search_chunked(query, keys)
    else:
        scores, index = exact_search_queries(query, keys, *geo, args.top_k, sample)
    seconds = time.perf_counter() - t0
    torch.save({'scores': scores, 'index': index, 'seconds': seconds, 'rss_loaded_mib': rss_loaded,
                'peak_rss_mib': _rss_mib()}, args.result)


def run_case(pair: str, size: int, geometry: str, top_k: int, knobs: str, exact_full_max: float, samples: int,
             threads: int, work: Path) -> dict:
    from extracter.archs.search_approximate import grid_size, recall_at_1, recall_at_k

    feats = torch.load(feature_path(pair, size), weights_only=True)
    geo = GEOMETRIES[geometry]
    gh, gw = grid_size(*feats['query'].shape[-2:], *geo)
    rgh, rgw = grid_size(*feats['keys'].shape[-2:], *geo)
    n_query, n_keys, dim = gh * gw, rgh * rgw, feats['query'].size(1) * geo[0] ** 2
    del feats
    full = n_query * n_keys * dim <= exact_full_max
    sample = None if full else torch.randperm(n_query, generator=torch.Generator().manual_seed(0))[:samples]
    sample_path = work / 'sample.pt'
    torch.save(sample, sample_path)
    out = {}
    for method in ('exact', 'approx'):
        result = work / f'{method}.pt'
        cmd = [sys.executable, __file__, '--worker', '--method', method, '--pair', pair, '--size', str(size),
               '--geometry', geometry, '--top-k', str(top_k), '--knobs', knobs, '--sample', str(sample_path),
               '--result', str(result), '--threads', str(threads)]
        subprocess.run(cmd, check=True, env={**os.environ, 'OMP_NUM_THREADS': str(threads)})
        out[method] = torch.load(result, weights_only=True)
    ex, ap = out['exact'], out['approx']
    exact_pair, approx_pair = (ex['scores'], ex['index']), (ap['scores'], ap['index'])
    n_eval = n_query if full else sample.numel()
    exact_seconds = ex['seconds'] * (1 if full else n_query / n_eval)
    return {
        'pair': pair, 'size': size, 'geometry': geometry, 'top_k': top_k, 'queries': n_query, 'keys': n_keys,
        'evaluated_queries': n_eval, 'exact_mode': 'full' if full else 'sampled (time extrapolated)',
        'recall_at_1': recall_at_1(approx_pair, exact_pair), 'recall_at_k': recall_at_k(approx_pair, exact_pair),
        'relevance_ratio': (ap['scores'][:, 0].mean() / ex['scores'][:, 0].mean()).item(),
        'exact_seconds': exact_seconds, 'approx_seconds': ap['seconds'],
        'speedup': exact_seconds / ap['seconds'],
        'exact_peak_rss_mib': ex['peak_rss_mib'], 'approx_peak_rss_mib': ap['peak_rss_mib'],
        'features_rss_mib': ap['rss_loaded_mib'],
    }


FIELDS = ['pair', 'size', 'geometry', 'top_k', 'queries', 'keys', 'evaluated_queries', 'exact_mode', 'recall_at_1',
          'recall_at_k', 'relevance_ratio', 'exact_seconds', 'approx_seconds', 'speedup', 'exact_peak_rss_mib',
          'approx_peak_rss_mib', 'features_rss_mib']


def write_table(rows, out: Path, note: str) -> None:
    with open(out / 'results.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f'# Approximate vs exact texture search\n\n{note}\n',
             '| pair | size | geometry | top-k | queries x keys | exact | recall@1 | recall@k | relevance | exact s '
             '| approx s | speed-up | peak RSS exact / approx MiB |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['pair']} | {r['size']} | {r['geometry']} | {r['top_k']} | {r['queries']} x {r['keys']} "
                     f"| {'full' if r['exact_mode'] == 'full' else 'sample ' + str(r['evaluated_queries'])} "
                     f"| {r['recall_at_1']:.4f} | {r['recall_at_k']:.4f} | {r['relevance_ratio']:.5f} "
                     f"| {r['exact_seconds']:.1f} | {r['approx_seconds']:.1f} | {r['speedup']:.1f} "
                     f"| {r['exact_peak_rss_mib']:.0f} / {r['approx_peak_rss_mib']:.0f} |")
    (out / 'results.md').write_text('\n'.join(lines) + '\n')


def plot(rows, out: Path, note: str) -> dict:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    slopes = {}
    fig, axes = plt.subplots(1, len(GEOMETRIES), figsize=(11, 4.5))
    for ax, geometry in zip(axes, GEOMETRIES):
        sel = [r for r in rows if r['geometry'] == geometry]
        for key, label, colour in (('exact_seconds', 'exact chunked', 'tab:red'),
                                   ('approx_seconds', 'approximate', 'tab:blue')):
            x = np.array([r['size'] ** 2 for r in sel], dtype=float)
            y = np.array([r[key] for r in sel], dtype=float)
            if len(set(x)) < 2:
                continue
            slope, icpt = np.polyfit(np.log(x), np.log(y), 1)
            slopes[f'{geometry} {label}'] = float(slope)
            ax.loglog(x, y, 'o', color=colour, alpha=0.6)
            xs = np.array([x.min(), x.max()])
            ax.loglog(xs, np.exp(icpt) * xs ** slope, '-', color=colour, label=f'{label} (slope {slope:.2f})')
        ax.set_title(f'geometry {geometry}')
        ax.set_xlabel('output pixels')
        ax.set_ylabel('search time (s)')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'search_time.png', dpi=100)
    return slopes


def run(argv) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', nargs='+', default=list(PAIRS), choices=PAIRS)
    parser.add_argument('--sizes', nargs='+', type=int, default=[512, 1024, 2048])
    parser.add_argument('--geometries', nargs='+', default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument('--top-k', type=int, default=1)
    parser.add_argument('--knobs', default='{}', help='JSON keyword arguments of approximate_search')
    parser.add_argument('--exact-full-max', type=float, default=1e12,
                        help='run the exact search on every query when queries x keys x patch length <= this')
    parser.add_argument('--samples', type=int, default=2000, help='sampled query patches otherwise')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--note', default='Timings on a 2-core machine shared with other jobs (1 thread each).')
    parser.add_argument('--out', default='docs/benchmarks/search')
    parser.add_argument('--plot-only', action='store_true', help='redraw the table and plot from results.csv')
    # worker mode (one method of one case, in a subprocess)
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--method', help=argparse.SUPPRESS)
    parser.add_argument('--pair', help=argparse.SUPPRESS)
    parser.add_argument('--size', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--geometry', help=argparse.SUPPRESS)
    parser.add_argument('--sample', help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _case_worker(args)
        return
    if not DATA.is_dir():
        raise FileNotFoundError(f'the real data folder {DATA} is absent')
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        with open(out / 'results.csv') as f:
            rows = [{k: (v if k in ('pair', 'geometry', 'exact_mode') else float(v)) for k, v in r.items()}
                    for r in csv.DictReader(f)]
        for r in rows:
            r['size'], r['top_k'] = int(r['size']), int(r['top_k'])
            r['queries'], r['keys'], r['evaluated_queries'] = int(r['queries']), int(r['keys']), \
                int(r['evaluated_queries'])
    else:
        rows = []
        work = FEATURE_DIR / 'work'
        work.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            for pair in args.pairs:
                prepare_features(pair, size)
                for geometry in args.geometries:
                    row = run_case(pair, size, geometry, args.top_k, args.knobs, args.exact_full_max, args.samples,
                                   args.threads, work)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    write_table(rows, out, args.note)
    write_table(rows, out, args.note)
    slopes = plot(rows, out, args.note)
    (out / 'slopes.json').write_text(json.dumps(slopes, indent=1) + '\n')
    print(json.dumps(slopes, indent=1))


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
