"""References found in a gallery vs chosen by hand (issue 26, item 6 (1)): Vid4 keyframes among distractors.

The gallery: the Vid4 calendar and city keyframes (every ``--key-step``-th frame, 1-based: 1, 9, 17, ...) among
distractors from ../shared/data: BSD200, Yang91, Sintel, and crops of the DCSR CameraFusion pair (``--distractors``
in all, about 200 by default). Queries: the frames between the keyframes, downscaled x4 (PIL bicubic) as the LR.
For each query the references are chosen from the gallery (:func:`extracter.gallery.select.select_references`,
``--refs-per-image`` K, ``--shortlist`` M), and we report:

- precision: the share of the chosen references that come from the query's own clip; and how often the nearest
  keyframe (in frames) is among them;
- PSNR-Y (border 4) of SR with the demo model on a centred HR crop (``--crop``, the LR crop of the whole LR frame)
  with: the retrieved references, the hand-picked ones (the keyframes before and after the frame), the
  self-reference (the upsampled LR), and DRCT (``--drct``, single-image), plus bicubic;
- the query time (shortlist + re-rank) and the index time per image.

Targets (the issue): retrieved within 0.1 dB of hand-picked, >= 0.5 dB above the self-reference, precision >= 0.9.
Writes ``summary.md``, ``per_query.csv`` and ``psnr.png`` into ``--output``.

  python -m benchmarks.gallery_retrieval --quick            # calendar, 4 queries, 30 distractors: ~2 min idle
  python -m benchmarks.gallery_retrieval                    # both clips, every query, ~200 distractors: ~30-40 min
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

from benchmarks import harness
from extracter.data import degradations as deg
from extracter.data.image_io import read_image
from extracter.data.inference_dataset import inference_sample
from extracter.gallery.index import update_index
from extracter.gallery.select import select_references
from extracter.inference.folder import batch_of_one, super_resolve
from extracter.inference.network import load_network
from extracter.tools.measure import metrics
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write, atomic_write_text

CLIPS = ('calendar', 'city')
DRCT_WEIGHTS = harness.ROOT / 'pretrained' / 'drct_demo_cpu' / 'drct_demo_cpu.pth'
METHODS = ('retrieved', 'hand-picked', 'self-reference', 'DRCT', 'bicubic')


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', default=str(harness.DEMO_WEIGHTS))
    p.add_argument('--drct', default=str(DRCT_WEIGHTS), help='single-image model for the DRCT row ("" to skip)')
    p.add_argument('--key-step', type=int, default=8)
    p.add_argument('--distractors', type=int, default=200)
    p.add_argument('--refs-per-image', type=int, default=2)
    p.add_argument('--shortlist', type=int, default=12)
    p.add_argument('--crop', type=int, default=192, help='HR crop (pixels a side, multiple of 4) super-resolved')
    p.add_argument('--query-step', type=int, default=1, help='every n-th in-between frame is a query')
    p.add_argument('--clips', nargs='+', default=list(CLIPS), choices=CLIPS)
    p.add_argument('--quick', action='store_true', help='calendar only, 4 queries, 30 distractors')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('-o', '--output', default='results/gallery_retrieval')
    p.add_argument('--overwrite', action='store_true')
    harness.add_machine_argument(p, 'unstated')
    return p


def frames(clip: str) -> List[Path]:
    return sorted((harness.SHARED_DATA / 'video' / f'vid4-{clip}').glob('frame_*.png'))


def distractor_files(count: int, work: Path) -> List[Path]:
    """About ``count`` distractors: BSD200, Yang91 and Sintel files, and 1024 x 768 crops of the DCSR pair."""
    data = harness.SHARED_DATA
    pools = [sorted((data / 'train' / 'bsd200').iterdir()), sorted((data / 'train' / 'yang91').iterdir()),
             sorted((data / 'video' / 'sintel').iterdir())]
    dcsr = []
    for name in ('wide.jpg', 'tele.jpg'):
        src = data / 'refsr-pairs' / 'dcsr-camerafusion' / name
        if src.is_file():
            img = Image.open(src).convert('RGB')
            for y in range(0, img.height - 767, 768):
                for x in range(0, img.width - 1023, 1024):
                    dcsr.append((img, (x, y, x + 1024, y + 768), f'dcsr_{name[:-4]}_{x}_{y}.png'))
    shares = {'bsd': int(count * 0.6), 'yang': int(count * 0.2), 'sintel': min(10, count // 10)}
    out = [p for pool, n in zip(pools, shares.values()) for p in pool[:n]]
    for img, box, name in dcsr[:max(0, count - len(out))]:
        dest = work / name
        img.crop(box).save(dest)
        out.append(dest)
    return out[:count]


def make_gallery(work: Path, clips: Sequence[str], key_step: int, distractors: int) -> Path:
    gallery = work / 'gallery'
    gallery.mkdir(parents=True)
    for clip in clips:
        for path in frames(clip)[::key_step]:
            os.symlink(path, gallery / f'{clip}_{path.name}')
    for i, path in enumerate(distractor_files(distractors, work)):
        os.symlink(path, gallery / f'x{i:03d}_{path.parent.name}_{path.name}')
    return gallery


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - size) // 2 // 4 * 4, (w - size) // 2 // 4 * 4
    return img[y:y + size, x:x + size]


def sr_psnr(net, lr: np.ndarray, refs: Sequence[np.ndarray], gt: np.ndarray, stride: int, mode: str) -> float:
    sample = inference_sample(lr, refs, stride, 4 * stride, ref_mode=mode)
    out = super_resolve(net, batch_of_one(sample), 'cpu', {})
    return metrics(out['sr'], gt)[0]


def run_query(net, drct, index, clip: str, t: int, key_step: int, args, stride: int) -> Dict[str, object]:
    all_frames = frames(clip)
    hr = read_image(all_frames[t])
    lr = deg.make_lq(hr)
    start = time.perf_counter()
    selection = select_references(net, lr, index, args.refs_per_image, args.shortlist)
    seconds = time.perf_counter() - start
    names = [os.path.basename(p) for p in selection.paths]
    own = [n for n in names if n.startswith(f'{clip}_frame_')]
    keys = list(range(0, len(all_frames), key_step))
    before = max(k for k in keys if k <= t)
    after = [k for k in keys if k > t]
    nearest = min([before] + after[:1], key=lambda k: abs(k - t))
    hand = [before] + after[:1]
    gt = centre_crop(hr, args.crop)
    lr_crop = deg.make_lq(gt)
    row = {'clip': clip, 'frame': t + 1, 'chosen': ' '.join(names), 'precision': len(own) / max(1, len(names)),
           'nearest_chosen': int(f'{clip}_{all_frames[nearest].name}' in names), 'query_s': seconds}
    row['retrieved'] = sr_psnr(net, lr_crop, [read_image(p) for p in selection.paths], gt, stride, 'given')
    row['hand-picked'] = sr_psnr(net, lr_crop, [read_image(all_frames[k]) for k in hand], gt, stride, 'given')
    row['self-reference'] = sr_psnr(net, lr_crop, [], gt, stride, 'self')
    row['bicubic'] = metrics(deg.make_lq_up(lr_crop), gt)[0]
    if drct is not None:
        out = super_resolve(drct, batch_of_one(inference_sample(lr_crop, [], 1, 4, ref_mode='none')), 'cpu', {})
        row['DRCT'] = metrics(out['sr'], gt)[0]
    return row


def summarise(rows: List[Dict[str, object]], args, index_s: float, n_gallery: int) -> str:
    def mean(key, clip=None):
        vals = [float(r[key]) for r in rows if key in r and (clip is None or r['clip'] == clip)]
        return statistics.fmean(vals) if vals else float('nan')

    header = ['clip', 'queries', 'precision', 'nearest keyframe chosen'] + [f'PSNR-Y {m}' for m in METHODS] + [
        'query (s)']
    body = []
    for clip in [c for c in CLIPS if any(r['clip'] == c for r in rows)] + [None]:
        n = sum(1 for r in rows if clip is None or r['clip'] == clip)
        body.append([clip or 'all', str(n), f'{mean("precision", clip):.3f}', f'{mean("nearest_chosen", clip):.3f}']
                    + [f'{mean(m, clip):.2f}' for m in METHODS] + [f'{mean("query_s", clip):.2f}'])
    gap_hand = mean('retrieved') - mean('hand-picked')
    gap_self = mean('retrieved') - mean('self-reference')
    return '\n'.join([
        f'### Gallery retrieval: Vid4 keyframes (every {args.key_step}th) among {args.distractors} distractors',
        '', f'Gallery of {n_gallery} images; indexing {index_s:.3f} s per image; K = {args.refs_per_image}, '
        f'M = {args.shortlist}; SR on a centred {args.crop} px HR crop. Machine: {args.machine}. '
        f'Command: `{harness.command_line()}`', '', harness.markdown_table(header, body, 'lrrr' + 'r' * 6), '',
        f'Retrieved - hand-picked: {gap_hand:+.2f} dB (target >= -0.1); retrieved - self-reference: '
        f'{gap_self:+.2f} dB (target >= +0.5); precision {mean("precision"):.3f} (target >= 0.9).', ''])


def plot(rows: List[Dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for m in METHODS:
        pts = [(r['frame'], r[m]) for r in rows if m in r and r['clip'] == rows[0]['clip']]
        if pts:
            ax.plot(*zip(*pts), 'o-', ms=3, label=m)
    ax.set_xlabel(f'{rows[0]["clip"]} frame')
    ax.set_ylabel('PSNR-Y, border 4 (dB)')
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=120))
    plt.close(fig)


def run(args: argparse.Namespace) -> str:
    if args.quick:
        args.clips, args.distractors = ['calendar'], 30
    out = Path(args.output)
    harness.refuse_existing(out, args.overwrite)
    if not harness.SHARED_DATA.is_dir():
        raise FileNotFoundError(f'{harness.SHARED_DATA}: the real data is missing (see ../shared/data/README.md)')
    torch.set_num_threads(args.threads)
    net = load_network(args.weights, None, 'cpu', None)
    drct = load_network(args.drct, None, 'cpu', None) if args.drct else None
    stride = net.size_multiples()[0]
    work = Path(tempfile.mkdtemp(prefix='gallery_bench_'))
    try:
        gallery = make_gallery(work, args.clips, args.key_step, args.distractors)
        index, stats = update_index(net, gallery, work / 'index.npz')
        index_s = stats.seconds / max(1, stats.described)
        select_references(net, deg.make_lq(read_image(frames(args.clips[0])[1])), index, args.refs_per_image,
                          args.shortlist)  # warm-up: the query times below are steady-state
        rows = []
        for clip in args.clips:
            queries = [t for t in range(len(frames(clip))) if t % args.key_step][::args.query_step]
            if args.quick:
                queries = queries[:4]
            for t in queries:
                rows.append(run_query(net, drct, index, clip, t, args.key_step, args, stride))
                print(f'{clip} frame {t + 1}: {rows[-1]["chosen"]} ({rows[-1]["query_s"]:.2f} s)', file=sys.stderr)
        table = summarise(rows, args, index_s, len(index))
        out.mkdir(parents=True, exist_ok=True)
        fields = ['clip', 'frame', 'chosen', 'precision', 'nearest_chosen', 'query_s', *METHODS]
        atomic_write_text(out / 'per_query.csv', harness.csv_text(rows, fields))
        atomic_write_text(out / 'summary.md', table)
        plot(rows, out / 'psnr.png')
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table)
    return table


def main(argv=None) -> int:
    def cli(argv_):
        parser = build_parser()
        args = parser.parse_args(argv_)
        harness.check_at_least(parser, ('--key-step', args.key_step, 1), ('--refs-per-image', args.refs_per_image, 1),
                               ('--shortlist', args.shortlist, 1), ('--query-step', args.query_step, 1))
        if args.crop < 16 or args.crop % 4:
            raise ValueError(f'--crop must be a multiple of 4 of at least 16, got {args.crop}')
        run(args)
        return 0

    return run_main(cli, argv)


if __name__ == '__main__':
    sys.exit(main())
