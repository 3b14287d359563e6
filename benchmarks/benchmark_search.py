"""Benchmark the approximate texture search against the exact (chunked) search on real pairs, and end to end.

Two modes.

**Search benchmark** (default): for every pair x output size x case (network + geometry), the exact and the
approximate search run in the same invocation, each in its own subprocess (so peak RSS is per method and case).
Pairs (from ../shared/data, never copied into the repository), each resized to a square output size S (the HR is
S x S, the LR its PIL-bicubic S/4, the reference S x S, lq_up / ref_downup made as the datasets make them):

  dcsr       DCSR CameraFusion: the wide view's centre (the telephoto's field of view) as HR, the telephoto as reference
  sintel     MPI Sintel frames 16 and 17 (centre squares)
  vid4       Vid4 calendar frames 1 and 5 (t and t+4, centre squares, upscaled to S where needed)
  motorcycle skimage.data.stereo_motorcycle(): left view as HR, right view as reference (centre squares)

Cases (``--cases``): ``released:6/2/2`` (EXTRACTER's released size, random weights with the canonical VGG-19: timing)
and ``demo:3/1/1`` (the CPU demo model ``pretrained/demo_cpu``: quality); ``demo:6/2/2`` also works.

Per row: recall@1 (the approximate top-1 equals the exact one, ties within 1e-4 relevance counting as equal),
recall@k, mean relevance of the chosen patches over the exact ones; search time, total time, peak RSS of each method;
with ``--sr`` also the SR of both (through :func:`extracter.inference.run_refsr`, ``--max-memory`` budget): PSNR of
the approximate SR against the exact-search SR, and PSNR/SSIM (Y, 4-pixel border, BasicSR) of both against the HR.
Where the exact search is too expensive (queries x keys x C k^2 > ``--exact-full-max``, e.g. 4096) it runs on a random
sample of ``--samples`` query patches against every reference patch (its time extrapolated, no exact SR).
Writes ``results.csv``, ``results.md``, ``search_time.png`` (log-log search time vs output pixels with fitted
slopes) and ``slopes.json`` to ``--out``, and a log of every row (``benchmark.log``).

**End to end** (``--e2e``): the demo model through ``extracter/infer.py`` (a subprocess per run: wall time and peak
RSS), ``--search chunked`` vs ``--search approximate`` on the demo targets: a 1024 x 768 output (DCSR wide crop, the
telephoto as a same-size reference) and a 720 x 480 video frame (Vid4 calendar frame 1, frame 2 as reference). Writes
``e2e.csv`` and ``e2e.md``: wall time, speed-up, peak RSS, PSNR/SSIM against the HR, SR vs exact-search SR.

Examples, from the repository root (the lead's commands, on an idle machine, are in
docs/benchmarks/search/README.md):
  python -m benchmarks.benchmark_search --sizes 512 1024 2048 --sr --threads 2 --out results/benchmark_search
  python -m benchmarks.benchmark_search --e2e --threads 2 --out results/benchmark_search_e2e
"""

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import DEMO_WEIGHTS, ROOT
from extracter.tools.measure import metrics
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write_text

DATA = harness.SHARED_DATA
PAIRS = ('dcsr', 'sintel', 'vid4', 'motorcycle')
NETS = ('released', 'demo')
DEFAULT_CASES = ('released:6/2/2', 'demo:3/1/1')
TIE = 1e-4
NOTE = 'Timings: {threads} thread(s); {machine}.'


def parse_case(text: str):
    net, _, geo = text.partition(':')
    try:
        geometry = tuple(int(v) for v in geo.split('/'))
    except ValueError:
        geometry = ()
    if net not in NETS or len(geometry) != 3:
        raise argparse.ArgumentTypeError(f"case must look like 'released:6/2/2' or 'demo:3/1/1', got {text!r}")
    return net, geometry


def _centre(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ih, iw = img.shape[:2]
    top, left = (ih - h) // 2, (iw - w) // 2
    return img[top:top + h, left:left + w]


def _centre_square(img: np.ndarray, side: int = 0) -> np.ndarray:
    side = side or min(img.shape[:2])
    return _centre(img, side, side)


def _read(path: Path) -> np.ndarray:
    from extracter.data.image_io import read_image

    return read_image(str(path))  # RGB uint8, EXIF orientation applied


def load_pair(name: str):
    """(HR-side image, reference image) as uint8 H x W x 3 arrays, before resizing."""
    if name == 'dcsr':
        folder = DATA / 'refsr-pairs' / 'dcsr-camerafusion'
        wide, tele = _read(folder / 'wide.jpg'), _read(folder / 'tele.jpg')
        # the telephoto has about twice the focal length: its field of view is the wide view's centre half
        return _centre_square(wide, min(wide.shape[:2]) // 2), _centre_square(tele)
    if name == 'sintel':
        folder = DATA / 'video' / 'sintel'
        return _centre_square(_read(folder / 'frame_0016.png')), _centre_square(_read(folder / 'frame_0017.png'))
    if name == 'vid4':
        folder = DATA / 'video' / 'vid4-calendar'
        return _centre_square(_read(folder / 'frame_001.png')), _centre_square(_read(folder / 'frame_005.png'))
    if name == 'motorcycle':
        import skimage.data

        left, right, _ = skimage.data.stereo_motorcycle()
        return _centre_square(left), _centre_square(right)
    raise ValueError(f'unknown pair {name!r}')


def make_sample(pair: str, size: int) -> dict:
    """The protocol's five images (uint8) for an S x S output: gt, lq, lq_up, ref, ref_downup."""
    from extracter.data.degradations import degrade, pil_bicubic

    hr, ref = load_pair(pair)
    return degrade(pil_bicubic(hr, (size, size)), pil_bicubic(ref, (size, size)))


def build_net(net: str, vgg19: str):
    from extracter.archs.extracter_arch import Extracter
    from extracter.inference.network import load_network

    if net == 'released':  # the released size (Extracter's defaults), random weights, the canonical VGG-19
        torch.manual_seed(0)
        model = Extracter(dfe_init='vgg19', vgg19_path=vgg19).eval()
    else:
        model = load_network(str(DEMO_WEIGHTS))
    return model  # the case's geometry is passed with each call


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float('inf') if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ---------------------------------------------------------------------------------------------------- worker
@torch.no_grad()
def case_worker(args) -> None:
    """One method on one case in this subprocess; writes its result (restricted to the sample, if any)."""
    from extracter.data.degradations import to_tensor
    from extracter.inference.engine import run_refsr
    from extracter.inference.memory_plan import ENCODE_TILE
    from extracter.search.methods.approximate import ApproximateSettings, exact_search_queries

    torch.set_num_threads(args.threads)
    case = json.loads(args.case)
    net = build_net(case['net'], case['vgg19'])
    geometry = tuple(case['geometry'])
    st = net.search_transfer
    images = make_sample(case['pair'], case['size'])
    t = {k: to_tensor(v)[None] for k, v in images.items() if k != 'gt'}
    sample = torch.load(args.sample, weights_only=True)
    approx = ApproximateSettings(**json.loads(case['knobs']))
    timing = {'search': 0.0}
    real_search = st.search

    def timed_search(*a, **kw):
        t0 = time.perf_counter()
        out = real_search(*a, **kw)
        timing['search'] += time.perf_counter() - t0
        return out

    st.search = timed_search
    out = {'peak_before_mib': harness.peak_rss_mib()}
    t0 = time.perf_counter()
    if args.method == 'exact' and sample is not None:  # the sampled exact search only
        query = net.search_features(t['lq_up'])
        keys = net.encode_search_keys(t['ref'], t['ref_downup'], ENCODE_TILE)  # VGG-19 in tiles (bounded memory)
        t1 = time.perf_counter()
        scores, index = exact_search_queries(query, keys, *case['geometry'], st.top_k, sample)
        out['search_s'] = time.perf_counter() - t1
        out['total_s'] = float('nan')
    elif case['sr']:
        mode = 'chunked' if args.method == 'exact' else 'approximate'
        res = run_refsr(net, t['lq'], t['ref'], lr_up=t['lq_up'], ref_downup=t['ref_downup'], search_mode=mode,
                        search_geometry=geometry, approximate=approx, max_memory=case['max_memory'],
                        return_aux=True)
        out['total_s'] = time.perf_counter() - t0
        out['search_s'] = timing['search']
        out['plan'] = res.plan.describe() if res.plan is not None else 'no budget'
        out['search_used'] = res.search_used
        out['sr'] = torch.from_numpy(np.ascontiguousarray(
            (res.sr[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
        scores, index = res.scores, res.index
    else:  # the search alone, on the network's features
        query = net.search_features(t['lq_up'])
        keys = net.encode_search_keys(t['ref'], t['ref_downup'], ENCODE_TILE)  # VGG-19 in tiles (bounded memory)
        spec = net.search_spec(method='chunked' if args.method == 'exact' else 'approximate', geometry=geometry,
                               approximate=approx)
        scores, index = st.search(query, keys, spec=spec)
        out['search_s'] = timing['search']
        out['total_s'] = time.perf_counter() - t0
    if sample is not None and args.method != 'exact':
        scores, index = scores[:, :, sample], index[:, :, sample]
    out.update(scores=scores, index=index, peak_rss_mib=harness.peak_rss_mib())
    torch.save(out, args.result)


# ---------------------------------------------------------------------------------------------------- one case
def run_case(pair: str, size: int, net: str, geometry, args, work: Path, log) -> dict:
    from extracter.search.methods.approximate import grid_size, recall_at_1, recall_at_k

    k, s, p = geometry
    gh, gw = grid_size(size // 4, size // 4, k, s, p)
    rgh, rgw = grid_size(size // 4, size // 4, k, s, p)  # relu3_1 of an S x S reference is S/4
    n_query, n_keys = gh * gw, rgh * rgw
    full = n_query * n_keys * 256 * k * k <= args.exact_full_max
    sample = None if full else torch.randperm(n_query, generator=torch.Generator().manual_seed(0))[:args.samples]
    sample_path = work / 'sample.pt'
    torch.save(sample, sample_path)
    case = {'pair': pair, 'size': size, 'net': net, 'geometry': list(geometry), 'sr': args.sr,
            'max_memory': args.max_memory, 'knobs': args.knobs, 'vgg19': args.vgg19}
    out = {}
    for method in ('exact', 'approx'):
        result = work / f'{method}.pt'
        cmd = harness.module_command('benchmark_search', '--worker', '--method', method, '--case', json.dumps(case),
                                     '--sample', sample_path, '--result', result, '--threads', args.threads)
        subprocess.run(cmd, check=True, env=harness.subprocess_env(args.threads))
        out[method] = torch.load(result, weights_only=True)
        result.unlink()
    ex, ap = out['exact'], out['approx']
    exact_pair, approx_pair = (ex['scores'][:1], ex['index'][:1]), (ap['scores'][:1], ap['index'][:1])
    n_eval = n_query if full else sample.numel()
    exact_search = ex['search_s'] * (1 if full else n_query / n_eval)
    top_k = ex['scores'].size(1)
    row = {
        'pair': pair, 'size': size, 'net': net, 'geometry': '/'.join(map(str, geometry)), 'top_k': top_k,
        'queries': n_query, 'keys': n_keys, 'evaluated_queries': n_eval,
        'exact_mode': 'full' if full else 'sampled (time extrapolated)',
        'recall_at_1': recall_at_1(approx_pair, exact_pair, TIE), 'recall_at_k': recall_at_k(approx_pair, exact_pair,
                                                                                             TIE),
        'relevance_ratio': (ap['scores'][:, 0].mean() / ex['scores'][:, 0].mean()).item(),
        'exact_search_s': exact_search, 'approx_search_s': ap['search_s'],
        'search_speedup': exact_search / max(ap['search_s'], 1e-9),
        'exact_total_s': ex['total_s'], 'approx_total_s': ap['total_s'],
        'exact_peak_rss_mib': ex['peak_rss_mib'], 'approx_peak_rss_mib': ap['peak_rss_mib'],
        'sr_psnr_vs_exact': float('nan'), 'exact_psnr': float('nan'), 'exact_ssim': float('nan'),
        'approx_psnr': float('nan'), 'approx_ssim': float('nan'), 'threads': args.threads,
    }
    if args.sr:
        gt = make_sample(pair, size)['gt']
        row['approx_psnr'], row['approx_ssim'] = metrics(ap['sr'].numpy(), gt)
        if 'sr' in ex:
            row['exact_psnr'], row['exact_ssim'] = metrics(ex['sr'].numpy(), gt)
            row['sr_psnr_vs_exact'] = psnr_rgb(ap['sr'].numpy(), ex['sr'].numpy())
        log(f"plans: exact: {ex.get('plan', '-')}; approximate: {ap.get('plan', '-')} / {ap.get('search_used')}")
    return row


FIELDS = ['pair', 'size', 'net', 'geometry', 'top_k', 'queries', 'keys', 'evaluated_queries', 'exact_mode',
          'recall_at_1', 'recall_at_k', 'relevance_ratio', 'exact_search_s', 'approx_search_s', 'search_speedup',
          'exact_total_s', 'approx_total_s', 'exact_peak_rss_mib', 'approx_peak_rss_mib', 'sr_psnr_vs_exact',
          'exact_psnr', 'exact_ssim', 'approx_psnr', 'approx_ssim', 'threads']
TEXT_FIELDS = ('pair', 'net', 'geometry', 'exact_mode')


def _f(v, fmt):
    return '-' if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def write_table(rows, out: Path, note: str) -> None:
    atomic_write_text(out / 'results.csv', harness.csv_text(rows, FIELDS))
    lines = [f'# Approximate vs exact texture search\n\n{note}\n',
             '| pair | size | net | geometry | exact | recall@1 | recall@k | relevance | search s exact / approx '
             '| speed-up | total s exact / approx | peak RSS MiB exact / approx | SR vs exact dB '
             '| PSNR/SSIM exact | PSNR/SSIM approx |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['size']} | {r['net']} | {r['geometry']} "
            f"| {'full' if r['exact_mode'] == 'full' else 'sample ' + str(r['evaluated_queries'])} "
            f"| {r['recall_at_1']:.4f} | {r['recall_at_k']:.4f} | {r['relevance_ratio']:.5f} "
            f"| {r['exact_search_s']:.1f} / {r['approx_search_s']:.1f} | {r['search_speedup']:.1f} "
            f"| {_f(r['exact_total_s'], '.1f')} / {_f(r['approx_total_s'], '.1f')} "
            f"| {r['exact_peak_rss_mib']:.0f} / {r['approx_peak_rss_mib']:.0f} | {_f(r['sr_psnr_vs_exact'], '.2f')} "
            f"| {_f(r['exact_psnr'], '.3f')} / {_f(r['exact_ssim'], '.4f')} "
            f"| {_f(r['approx_psnr'], '.3f')} / {_f(r['approx_ssim'], '.4f')} |")
    atomic_write_text(out / 'results.md', '\n'.join(lines) + '\n')


def read_table(out: Path):
    with open(out / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in TEXT_FIELDS:
                r[k] = int(v) if k in ('size', 'top_k', 'queries', 'keys', 'evaluated_queries', 'threads') else float(v)
    return rows


def fit_slopes(rows):
    """Fitted slope of log search time vs log output pixels, per (net, geometry) and method."""
    slopes = {}
    for case in sorted({(r['net'], r['geometry']) for r in rows}):
        sel = [r for r in rows if (r['net'], r['geometry']) == case]
        for key, label in (('exact_search_s', 'exact'), ('approx_search_s', 'approximate')):
            x = np.array([r['size'] ** 2 for r in sel], dtype=float)
            y = np.array([r[key] for r in sel], dtype=float)
            if len(set(x)) >= 2 and (y > 0).all():
                slope, icpt = np.polyfit(np.log(x), np.log(y), 1)
                slopes[f'{case[0]} {case[1]} {label}'] = (float(slope), float(icpt))
    return slopes


def plot(rows, out: Path, note: str) -> dict:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    slopes = fit_slopes(rows)
    cases = sorted({(r['net'], r['geometry']) for r in rows})
    fig, axes = plt.subplots(1, max(1, len(cases)), figsize=(5.5 * max(1, len(cases)), 4.5), squeeze=False)
    for ax, case in zip(axes[0], cases):
        sel = [r for r in rows if (r['net'], r['geometry']) == case]
        for key, label, colour in (('exact_search_s', 'exact', 'tab:red'),
                                   ('approx_search_s', 'approximate', 'tab:blue')):
            x = np.array([r['size'] ** 2 for r in sel], dtype=float)
            y = np.array([r[key] for r in sel], dtype=float)
            ax.loglog(x, y, 'o', color=colour, alpha=0.6)
            fit = slopes.get(f'{case[0]} {case[1]} {label}')
            if fit:
                xs = np.array([x.min(), x.max()])
                ax.loglog(xs, np.exp(fit[1]) * xs ** fit[0], '-', color=colour, label=f'{label} (slope {fit[0]:.2f})')
        ax.set_title(f'{case[0]}, geometry {case[1]}')
        ax.set_xlabel('output pixels')
        ax.set_ylabel('search time (s)')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
    fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'search_time.png', dpi=100)
    plt.close(fig)
    return {k: v[0] for k, v in slopes.items()}


# ---------------------------------------------------------------------------------------------------- end to end
E2E_TARGETS = ('dcsr_1024x768', 'vid4_720x480')


def e2e_images(target: str):
    """(HR, reference) uint8 for an end-to-end target."""
    from extracter.data.degradations import pil_bicubic

    if target == 'dcsr_1024x768':
        folder = DATA / 'refsr-pairs' / 'dcsr-camerafusion'
        wide, tele = _read(folder / 'wide.jpg'), _read(folder / 'tele.jpg')
        h, w = wide.shape[:2]
        hr = pil_bicubic(_centre(wide, h // 2, w // 2), (1024, 768))  # the telephoto's field of view
        return hr, pil_bicubic(tele, (1024, 768))
    if target == 'vid4_720x480':
        folder = DATA / 'video' / 'vid4-calendar'
        return _centre(_read(folder / 'frame_001.png'), 480, 720), _centre(_read(folder / 'frame_002.png'), 480, 720)
    raise ValueError(f'unknown end-to-end target {target!r}')


def exact_search_seconds(folder: Path, threads: int, max_memory: "str | None" = None) -> float:
    """The exact (chunked) search's own time in a run of the demo model on the same inputs as infer.py's (the
    dataset's sample, ``super_resolve``, the allocator setting of infer.py): what a faster search can take off the
    exact run at most. Run in a subprocess (``--search-share``), like infer.py."""
    from extracter.data.inference_dataset import RefSRInferenceDataset
    from extracter.inference.folder import batch_of_one, super_resolve
    from extracter.inference.network import load_network
    from extracter.utils.malloc import retain_freed_memory

    torch.set_num_threads(threads)
    if max_memory is None:  # as infer.py: it keeps glibc's default under a budget
        retain_freed_memory()
    net = load_network(str(DEMO_WEIGHTS))
    data = RefSRInferenceDataset({'dataroot_lq': str(folder / 'lr.png'), 'ref_path': str(folder / 'ref.png'),
                                  'stride': net.size_multiples()[0]})
    st, spent = net.search_transfer, []
    search = st.search

    def timed(*a, **kw):
        t0 = time.perf_counter()
        result = search(*a, **kw)
        spent.append(time.perf_counter() - t0)
        return result

    st.search = timed  # this instance only
    with torch.no_grad():
        super_resolve(net, batch_of_one(data[0]), 'cpu', {'search_mode': 'chunked',
                                                          **({'max_memory': max_memory} if max_memory else {})})
    return sum(spent)


def run_e2e(args, out: Path, work: Path, log) -> None:
    from PIL import Image

    from extracter.data.degradations import make_lq

    rows = []
    env = harness.subprocess_env(args.threads)
    for target in args.targets:
        hr, ref = e2e_images(target)
        if args.shrink > 1:  # a quick check of the script: the targets shrunk
            from extracter.data.degradations import pil_bicubic

            size = (hr.shape[1] // args.shrink // 4 * 4, hr.shape[0] // args.shrink // 4 * 4)
            hr, ref = pil_bicubic(hr, size), pil_bicubic(ref, size)
        folder = work / target
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_lq(hr)).save(folder / 'lr.png')
        Image.fromarray(ref).save(folder / 'ref.png')
        res = {}
        for mode in ('chunked', 'approximate'):
            dest = folder / mode
            cmd = [sys.executable, str(ROOT / 'extracter' / 'infer.py'), '--weights', str(DEMO_WEIGHTS), '--lr',
                   str(folder / 'lr.png'), '--ref', str(folder / 'ref.png'), '-o', str(dest), '--search', mode,
                   '--overwrite'] + (['--max-memory', args.max_memory] if args.max_memory else [])
            wall, peak = harness.run_measured(cmd, env)
            sr = np.asarray(Image.open(dest / 'lr_sr.png').convert('RGB'))
            psnr, ssim = metrics(sr, hr)
            res[mode] = (wall, peak, psnr, ssim, sr)
            log(f'{target} {mode}: {wall:.1f} s, peak {peak:.0f} MiB, PSNR {psnr:.3f} SSIM {ssim:.4f}')
        (ew, ep, eps, ess, esr), (aw, apk, aps, ass, asr) = res['chunked'], res['approximate']
        # its own process: the peak RSS of a child (wait4) counts the parent's pages it starts with
        share = subprocess.run(harness.module_command('benchmark_search', '--search-share', folder, '--threads',
                                                      args.threads)
                               + (['--max-memory', args.max_memory] if args.max_memory else []),
                               check=True, env=env, capture_output=True, text=True)
        search_s = float(share.stdout.split()[-1])
        bound = ew / (ew - search_s) if search_s < ew else float('inf')
        log(f'{target}: exact search {search_s:.1f} s in process; a 0-second search would make the exact run '
            f'{bound:.1f}x faster at most')
        rows.append({'target': target, 'exact_s': ew, 'approx_s': aw, 'speedup': ew / aw, 'exact_search_s': search_s,
                     'bound': bound, 'exact_peak_mib': ep,
                     'approx_peak_mib': apk, 'exact_psnr': eps, 'exact_ssim': ess, 'approx_psnr': aps,
                     'approx_ssim': ass, 'psnr_delta': aps - eps, 'sr_psnr_vs_exact': psnr_rgb(asr, esr),
                     'threads': args.threads})
    atomic_write_text(out / 'e2e.csv', harness.csv_text(rows, list(rows[0])))
    lines = [f'# End to end through infer.py: the demo model, exact (chunked) vs approximate search\n\n{args.note}\n',
             'Bound: the speed-up a search taking no time at all would give, exact run / (exact run - its search); '
             'the exact search timed in process on the same inputs.\n',
             '| target | exact s | approximate s | speed-up | exact search s | bound | peak MiB exact / approx '
             '| PSNR/SSIM exact | PSNR/SSIM approx | PSNR delta dB | SR vs exact-search SR dB |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['target']} | {r['exact_s']:.1f} | {r['approx_s']:.1f} | {r['speedup']:.1f} "
                     f"| {r['exact_search_s']:.1f} | {r['bound']:.1f} "
                     f"| {r['exact_peak_mib']:.0f} / {r['approx_peak_mib']:.0f} "
                     f"| {r['exact_psnr']:.3f} / {r['exact_ssim']:.4f} "
                     f"| {r['approx_psnr']:.3f} / {r['approx_ssim']:.4f} "
                     f"| {r['psnr_delta']:+.3f} | {_f(r['sr_psnr_vs_exact'], '.2f')} |")
    atomic_write_text(out / 'e2e.md', '\n'.join(lines) + '\n')
    print('\n'.join(lines))


# ---------------------------------------------------------------------------------------------------- main
def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The values argparse's types do not check, refused before any work (one line, exit status 2)."""
    from extracter.search.methods.approximate import ApproximateSettings

    harness.check_at_least(parser, ('--sizes', args.sizes, 16, ' (output sides in pixels)'),
                           ('--samples', args.samples, 1), ('--threads', args.threads, 1), ('--shrink', args.shrink, 1))
    if not args.exact_full_max >= 0:
        parser.error(f'--exact-full-max must be >= 0 (0: always the sampled queries), got {args.exact_full_max:g}')
    for net, geometry in args.cases:
        harness.check_geometry(parser, geometry, f'--cases {net}:{"/".join(map(str, geometry))}:')
    if args.max_memory is not None:
        harness.check_memory(parser, '--max-memory', args.max_memory)
    try:
        knobs = json.loads(args.knobs)
        if not isinstance(knobs, dict):
            raise ValueError(f'expected a JSON object of ApproximateSettings fields, got {args.knobs!r}')
        ApproximateSettings(**knobs)
    except (ValueError, TypeError) as err:  # JSON syntax, unknown fields, values out of range
        parser.error(f'--knobs: {err}')


def run(argv) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', nargs='+', default=list(PAIRS), choices=PAIRS)
    parser.add_argument('--sizes', nargs='+', type=int, default=[512, 1024, 2048])
    parser.add_argument('--cases', nargs='+', type=parse_case, default=[parse_case(c) for c in DEFAULT_CASES],
                        help="network:geometry, e.g. released:6/2/2 demo:3/1/1")
    parser.add_argument('--knobs', default='{}', help='JSON of ApproximateSettings fields for the approximate search')
    parser.add_argument('--sr', action='store_true', help='also run the networks: total time, SR PSNR/SSIM')
    parser.add_argument('--max-memory', default=None, help="budget of the SR runs (default: 8G with --sr, none "
                                                           "with --e2e)")
    parser.add_argument('--exact-full-max', type=float, default=1e13,
                        help='run the exact search on every query when queries x keys x C k^2 <= this')
    parser.add_argument('--samples', type=int, default=2000, help='sampled query patches otherwise')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--vgg19', default=str(ROOT / 'experiments' / 'pretrained_models' / 'vgg19_canonical.pth'),
                        help='canonical VGG-19 file for the released-size network (extracter-prepare-vgg19)')
    harness.add_machine_argument(parser, default='a 2-core machine shared with other jobs')
    parser.add_argument('--out', default='results/benchmark_search')
    parser.add_argument('--overwrite', action='store_true', help='replace existing results in --out')
    parser.add_argument('--plot-only', action='store_true', help='redraw the table and plot from results.csv')
    parser.add_argument('--e2e', action='store_true', help='end to end through infer.py (the demo targets)')
    parser.add_argument('--targets', nargs='+', default=list(E2E_TARGETS), choices=E2E_TARGETS)
    parser.add_argument('--shrink', type=int, default=1, help='--e2e: divide the targets\' sides by this (a quick '
                                                              'check of the script, not a result)')
    # worker mode (one method of one case, in a subprocess)
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--method', help=argparse.SUPPRESS)
    parser.add_argument('--case', help=argparse.SUPPRESS)
    parser.add_argument('--sample', help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    parser.add_argument('--search-share', help=argparse.SUPPRESS)  # e2e: time the exact search in this folder
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.worker:
        case_worker(args)
        return
    if args.search_share:
        print(exact_search_seconds(Path(args.search_share), args.threads, args.max_memory))
        return
    if not DATA.is_dir():
        raise FileNotFoundError(f'the real data folder {DATA} is absent')
    args.note = NOTE.format(threads=args.threads, machine=args.machine)
    out = Path(args.out)
    kind = 'e2e.csv' if args.e2e else 'results.csv'
    if not args.plot_only:
        harness.refuse_existing(out / kind, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / ('e2e.log' if args.e2e else 'benchmark.log'), 'a')

    def log(msg: str) -> None:
        line = f'[{time.strftime("%Y-%m-%d %H:%M:%S")}] {msg}'
        print(line, flush=True)
        log_file.write(line + '\n')
        log_file.flush()

    log(f'{harness.command_line()} ({args.note})')
    if args.e2e:
        with tempfile.TemporaryDirectory(prefix='benchmark_search_e2e_') as tmp:  # inputs and outputs of infer.py
            run_e2e(args, out, Path(tmp), log)
        return
    if args.plot_only:
        rows = read_table(out)
    else:
        if args.sr and args.max_memory is None:
            args.max_memory = '8G'
        rows = []
        with tempfile.TemporaryDirectory(prefix='benchmark_search_') as tmp:  # scratch: never in the output folder
            for size in args.sizes:
                for pair in args.pairs:
                    for net, geometry in args.cases:
                        row = run_case(pair, size, net, geometry, args, Path(tmp), log)
                        rows.append(row)
                        log(json.dumps(row))
                        write_table(rows, out, args.note)
    write_table(rows, out, args.note)
    slopes = plot(rows, out, args.note)
    atomic_write_text(out / 'slopes.json', json.dumps(slopes, indent=1) + '\n')
    log(f'slopes: {json.dumps(slopes)}')


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
