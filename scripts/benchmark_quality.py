#!/usr/bin/env python
"""Quality report of a checkpoint on real pictures, always beside bicubic (a script, not a test).

- Vid4 (../shared/data/video/vid4-*): target frame t with reference frame t+k (t-k near the end) for
  k = 1, 2, 4, 8, 16: a ladder of decreasing similarity, like CUFED5's reference levels. Each target is an HR crop
  (``--crop``, centred) of every ``--frame-step``-th frame; its reference is the same region of frame t+k with a
  ``--margin`` around it, so that moving content can still be found.
- The same targets with the self-reference (Ref = the bicubically upsampled LR): what the network does without a
  real reference. The gap between the two shows how much texture the reference really gives.
- Set5 and Set14 (../shared/data/sisr, full images) with the self-reference.
PSNR/SSIM on Y with a 4-pixel border (BasicSR's calculate_psnr/calculate_ssim), as a Markdown table, a CSV and a
plot of PSNR against k, in ``--output`` (an existing folder is kept and renamed with a time stamp).

Example:
  python scripts/benchmark_quality.py --weights pretrained/demo_cpu/extracter_demo_cpu.pth
"""

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from extracter.data import degradations as deg
from extracter.data.image_io import list_images, read_image
from extracter.inference.folder import super_resolve
from extracter.inference.network import load_network
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write, atomic_write_text
from scripts.demo import archive_existing, metrics, sample_from

OFFSETS = (1, 2, 4, 8, 16)


def vid4_cases(root: Path, crop: int, margin: int, frame_step: int):
    """(sequence, t, k, hr crop, reference crop) for every target frame and offset."""
    for seq in sorted(p for p in root.glob('vid4-*') if p.is_dir()):
        names = list_images(seq)
        frames = [read_image(seq / n) for n in names]
        for t in range(0, len(names), frame_step):
            img = frames[t]
            h, w = img.shape[:2]
            y, x = (h - crop) // 2, (w - crop) // 2
            hr = np.ascontiguousarray(img[y:y + crop, x:x + crop])
            for k in OFFSETS:
                u = t + k if t + k < len(names) else t - k
                y0, x0 = max(y - margin, 0), max(x - margin, 0)
                ref = np.ascontiguousarray(frames[u][y0:y + crop + margin, x0:x + crop + margin])
                yield seq.name, t, k, hr, ref


def evaluate(net, shared: Path, crop: int, margin: int, frame_step: int, device: str, max_memory: str,
             sisr_crop: int = 0):
    stride = net.search_transfer.stride
    kwargs = {'max_memory': max_memory}
    rows = []
    cases = list(vid4_cases(shared / 'video', crop, margin, frame_step))
    done_self = set()
    for seq, t, k, hr, ref in tqdm(cases, desc='Vid4', unit='case'):
        lq = deg.make_lq(hr)
        res = super_resolve(net, sample_from(lq, [ref], stride), device, kwargs)
        rows.append((seq, t, f'ref k={k}', *metrics(res['sr'], hr)))
        if (seq, t) not in done_self:
            done_self.add((seq, t))
            rows.append((seq, t, 'bicubic', *metrics(res['bicubic'], hr)))
            res_self = super_resolve(net, sample_from(lq, [deg.make_lq_up(lq)], stride), device, kwargs)
            rows.append((seq, t, 'self-reference', *metrics(res_self['sr'], hr)))
    for name in ('Set5', 'Set14'):
        folder = shared / 'sisr' / name
        for fname in tqdm(list_images(folder), desc=name, unit='img'):
            hr = read_image(folder / fname)
            if sisr_crop:  # a centred crop, to bound the time of the self-reference search on a CPU
                y, x = max((hr.shape[0] - sisr_crop) // 2, 0), max((hr.shape[1] - sisr_crop) // 2, 0)
                hr = hr[y:y + sisr_crop, x:x + sisr_crop]
            hr = deg.crop_to_multiple(np.ascontiguousarray(hr), 4 * stride, fname)
            lq = deg.make_lq(hr)
            res = super_resolve(net, sample_from(lq, [deg.make_lq_up(lq)], stride), device, kwargs)
            rows.append((name, fname, 'bicubic', *metrics(res['bicubic'], hr)))
            rows.append((name, fname, 'self-reference', *metrics(res['sr'], hr)))
    return rows


def summarise(rows):
    groups = defaultdict(list)
    for dataset, _, method, p, s in rows:
        groups[(dataset, method)].append((p, s))
    return {key: (float(np.mean([p for p, _ in v])), float(np.mean([s for _, s in v])), len(v))
            for key, v in groups.items()}


def method_order(method: str):
    return (0, 0) if method == 'bicubic' else (1, 0) if method == 'self-reference' else (2, int(method.split('=')[1]))


def write_report(rows, summary, out: Path, title: str) -> str:
    with open(out / 'per_image.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['dataset', 'image', 'method', 'psnr_y_b4', 'ssim_y_b4'])
        writer.writerows(rows)
    lines = [f'### {title}', '', '| dataset | method | PSNR (dB) | SSIM | images |', '|---|---|---:|---:|---:|']
    for (dataset, method), (p, s, n) in sorted(summary.items(), key=lambda kv: (kv[0][0], method_order(kv[0][1]))):
        lines.append(f'| {dataset} | {method} | {p:.2f} | {s:.4f} | {n} |')
    table = '\n'.join(lines) + '\n'
    atomic_write_text(out / 'summary.md', table)

    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for seq in sorted({d for d, _ in summary if d.startswith('vid4')}):
        ks = list(OFFSETS)
        line = ax.plot(ks, [summary[(seq, f'ref k={k}')][0] for k in ks], 'o-', label=f'{seq}: reference t+k')
        colour = line[0].get_color()
        ax.axhline(summary[(seq, 'self-reference')][0], color=colour, ls='--', label=f'{seq}: self-reference')
        ax.axhline(summary[(seq, 'bicubic')][0], color=colour, ls=':', label=f'{seq}: bicubic')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('reference offset k (frames)')
    ax.set_ylabel('PSNR-Y, border 4 (dB)')
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / 'psnr_vs_k.png', lambda tmp: fig.savefig(tmp, format='png', dpi=120))
    plt.close(fig)
    return table


def run(argv) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True)
    parser.add_argument('--opt', default=None, help='YAML with network_g (default: beside the weights)')
    parser.add_argument('--shared', default=str(Path(__file__).resolve().parents[2] / 'shared' / 'data'))
    parser.add_argument('-o', '--output', default='results/benchmark_quality')
    parser.add_argument('--crop', type=int, default=256, help='HR crop side of the Vid4 targets (multiple of 16)')
    parser.add_argument('--margin', type=int, default=32, help='extra reference context around the target region')
    parser.add_argument('--frame-step', type=int, default=8, help='every n-th frame is a target')
    parser.add_argument('--sisr-crop', type=int, default=0, help='centred crop of Set5/Set14 images (0: whole)')
    parser.add_argument('--max-memory', default='4G')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--title', default=None)
    args = parser.parse_args(argv)
    shared = Path(args.shared)
    if not (shared / 'video').is_dir():
        raise FileNotFoundError(f'{shared}/video not found (the real test data, see ../shared/data/README.md)')
    net = load_network(args.weights, args.opt, args.device)
    out = Path(args.output)
    archive_existing(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = evaluate(net, shared, args.crop, args.margin, args.frame_step, args.device, args.max_memory,
                    args.sisr_crop)
    table = write_report(rows, summarise(rows), out, args.title or f'{Path(args.weights).name}')
    print(table)
    print(f'{len(rows)} measurements in {time.time() - t0:.0f} s; report in {out}')


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
