"""Encoded references reused: time per frame of a clip of 720x480 frames sharing two references, with and without
the run's :class:`~extracter.inference.reference_cache.ReferenceCache`, side by side in one run.

The clip: ``--frames`` consecutive Vid4 calendar frames (``../shared/data/video/vid4-calendar``, 720x576, centre
crops of 720x480) downscaled x4 with PIL's bicubic (the datasets' degradation): LR 180x120, SR 720x480. The two
references are the high-resolution keyframes just before and just after the clip (frames 1 and ``frames + 2``: the
realistic case of a low-resolution clip with a few high-resolution stills of the same scene). Without the shared data:
seeded noise of the same sizes (stated in the table). The demo model (``pretrained/demo_cpu``).

Three passes over the same frames, in one process, after a warm-up frame:
- ``without reuse``: ``run_refsr(..., reference_cache=None)``, the references encoded for every frame;
- ``with reuse``: one cache for the clip (the references encoded once, at the first frame);
- ``encoding share``: a cache that keeps nothing (``max_bytes=0``): every frame encodes, and the cache's statistics
  time the encodings (``encode_keys`` + ``encode_texture_features``) and the content digests, so that the share of
  encoding in a frame's time, and the speed-up it bounds (``1 / (1 - share)``), are measured on the same frames.

Prints a table (mean and median ms per frame, the speed-up, the encoding share, the bound and the fraction of it
reached; the target: >= 1.3x, or the share-bound reached within 10%), writes ``results.csv``, ``results.md`` and
``reuse.png`` (time per frame, both ways) into ``--out`` (default ``results/reference_reuse``; kept unless
``--overwrite``).

    python -m benchmarks.reference_reuse --quick --out /tmp/rr        # 3 small frames, a check that it runs
    python -m benchmarks.reference_reuse --frames 38 --threads 2 --machine "idle 2-core machine"   # the full size
    python -m benchmarks.reference_reuse --frames 38 --search approximate --out results/reference_reuse/approximate

With the default search (``auto``) two 720x480 references make the exact search too expensive (2.2e12
multiply-adds), so the approximate search runs: its reduced index is prepared once per reference and reused, and
counted in the encoding share. With ``--search chunked`` (exact) the cache also keeps the normalised key blocks
(where the cache can hold them, ~193 MiB per reference); the ``encoding share`` pass keeps nothing, so it makes no
blocks and its share leaves out their preparation: its bound is then lower than what reuse saves.
"""

import argparse
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from benchmarks import harness
from benchmarks.harness import DEMO_WEIGHTS, ROOT, SHARED_DATA
from extracter.data.degradations import make_lq, make_lq_up, make_ref_downup, to_tensor
from extracter.inference import run_refsr
from extracter.inference.network import load_network
from extracter.inference.reference_cache import ReferenceCache
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write, atomic_write_text

CLIP = SHARED_DATA / 'video' / 'vid4-calendar'
FRAME_HW = (480, 720)  # the HR frames' size (SR of a 180x120 LR)
QUICK_HW = (240, 360)
FIELDS = ['pass', 'frames', 'mean_ms', 'median_ms', 'encode_ms', 'digest_ms']


def _crop(img: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    h, w = hw
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def load_clip(n_frames: int, hw: Tuple[int, int] = FRAME_HW, seed: int = 0
              ) -> Tuple[List[np.ndarray], List[np.ndarray], str]:
    """(HR frames of the clip, the two HR keyframes, where they come from): centre crops of ``hw`` of the Vid4
    calendar frames 2..n+1 between the keyframes 1 and n+2, or seeded noise where the shared data is absent."""
    paths = sorted(CLIP.glob('frame_*.png')) if CLIP.is_dir() else []
    if len(paths) >= n_frames + 2:
        frames = [_crop(np.asarray(Image.open(p).convert('RGB')), hw) for p in paths[:n_frames + 2]]
        return frames[1:-1], [frames[0], frames[-1]], f'Vid4 calendar frames 2-{n_frames + 1}, keyframes 1 and ' \
                                                        f'{n_frames + 2} (centre crops {hw[1]}x{hw[0]})'
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for _ in range(n_frames + 2)]
    return frames[1:-1], [frames[0], frames[-1]], f'seeded noise ({CLIP} not found or too short)'


def frame_inputs(hr: np.ndarray) -> Dict[str, torch.Tensor]:
    lq = make_lq(hr)
    return {'lq': to_tensor(lq).unsqueeze(0), 'lq_up': to_tensor(make_lq_up(lq)).unsqueeze(0)}


def run_pass(net, frames: Sequence[Dict[str, torch.Tensor]], refs, refs_du, cache: Optional[ReferenceCache],
             run_kwargs) -> List[float]:
    """Seconds per frame (wall clock) of super-resolving ``frames`` in order with ``cache``."""
    times = []
    for f in frames:
        t0 = time.perf_counter()
        run_refsr(net, f['lq'], refs, lr_up=f['lq_up'], ref_downup=refs_du, reference_cache=cache, **run_kwargs)
        times.append(time.perf_counter() - t0)
    return times


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--frames', type=int, default=38, help='LR frames in the clip (default 38)')
    parser.add_argument('--quick', action='store_true',
                        help='3 frames of 360x240 (LR 90x60): a check that it runs, not the measurement')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    parser.add_argument('--search', default='auto', help='the search method (run_refsr search_mode; default auto)')
    parser.add_argument('--max-memory', default=None, help='a working-memory budget for every frame (optional)')
    parser.add_argument('--weights', default=str(DEMO_WEIGHTS), help='the model (default: the demo model)')
    parser.add_argument('--out', default=str(ROOT / 'results' / 'reference_reuse'))
    parser.add_argument('--overwrite', action='store_true')
    harness.add_machine_argument(parser, 'not stated')
    return parser


def summarize(times: Dict[str, List[float]], share_stats, n: int) -> Tuple[List[Dict], Dict[str, float]]:
    rows = []
    for name, ts in times.items():
        row = {'pass': name, 'frames': n, 'mean_ms': 1e3 * statistics.mean(ts),
               'median_ms': 1e3 * statistics.median(ts), 'encode_ms': '', 'digest_ms': ''}
        if name == 'encoding share':
            row['encode_ms'] = 1e3 * share_stats.encode_seconds / n
            row['digest_ms'] = 1e3 * share_stats.digest_seconds / n
        rows.append(row)
    without, reuse = statistics.mean(times['without reuse']), statistics.mean(times['with reuse'])
    share = share_stats.encode_seconds / sum(times['encoding share'])
    bound = 1 / (1 - share) if share < 1 else float('inf')
    speedup = without / reuse
    return rows, {'speedup': speedup, 'share': share, 'bound': bound, 'reached': (speedup - 1) / (bound - 1)
                  if bound > 1 else float('nan')}


def report(rows, summary, source: str, args, net_desc: str, hw: Tuple[int, int]) -> str:
    h, w = hw
    def ms(value, digits: int) -> str:
        return '' if value == '' else f'{value:.{digits}f}'

    table = harness.markdown_table(
        ['pass', 'frames', 'ms per frame (mean)', 'median', 'encoding ms per frame', 'digest ms per frame'],
        [[r['pass'], str(r['frames']), ms(r['mean_ms'], 0), ms(r['median_ms'], 0), ms(r['encode_ms'], 0),
          ms(r['digest_ms'], 1)] for r in rows], 'llrrrr')
    met = summary['speedup'] >= 1.3 or summary['reached'] >= 0.9
    return '\n'.join([
        '# Encoded references reused: time per frame', '',
        f'Clip: {source}; LR {w // 4}x{h // 4} -> SR {w}x{h}, two {w}x{h} references. Model: {net_desc}. '
        f'Search: {args.search}'
        f'{", max_memory " + args.max_memory if args.max_memory else ""}; {args.threads} thread(s). '
        f'Machine: {args.machine}. Command: `{harness.command_line()}`.', '', table, '',
        f"Speed-up with reuse: **{summary['speedup']:.2f}x**. Encoding share of a frame without reuse: "
        f"{100 * summary['share']:.1f}% (bounds the speed-up at {summary['bound']:.2f}x; reached "
        f"{100 * summary['reached']:.0f}% of the bound's gain). Target (>= 1.3x, or the bound reached within 10%): "
        f"{'met' if met else 'not met'}.", ''])


def plot(times: Dict[str, List[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ('without reuse', 'with reuse'):
        ax.plot(range(1, len(times[name]) + 1), [1e3 * t for t in times[name]], marker='o', ms=3, label=name)
    ax.set_xlabel('frame')
    ax.set_ylabel('ms per frame')
    ax.set_ylim(bottom=0)
    ax.set_title('two shared references')
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=120))
    plt.close(fig)


def run(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    n, hw = (3, QUICK_HW) if args.quick else (args.frames, FRAME_HW)
    harness.check_at_least(parser, ('--frames', n, 1), ('--threads', args.threads, 1))
    if args.max_memory is not None:
        harness.check_memory(parser, '--max-memory', args.max_memory)
    out = Path(args.out)
    harness.refuse_existing(out, args.overwrite, 'or choose --out')
    torch.set_num_threads(args.threads)
    net = load_network(args.weights)
    hr_frames, keyframes, source = load_clip(n, hw)
    frames = [frame_inputs(f) for f in hr_frames]
    refs = [to_tensor(k).unsqueeze(0) for k in keyframes]
    refs_du = [to_tensor(make_ref_downup(k)).unsqueeze(0) for k in keyframes]
    run_kwargs = {'search_mode': args.search, 'max_memory': args.max_memory}
    run_pass(net, frames[:1], refs, refs_du, None, run_kwargs)  # warm-up
    times = {'without reuse': run_pass(net, frames, refs, refs_du, None, run_kwargs),
             'with reuse': run_pass(net, frames, refs, refs_du, ReferenceCache(), run_kwargs)}
    share_cache = ReferenceCache(max_bytes=0)
    times['encoding share'] = run_pass(net, frames, refs, refs_du, share_cache, run_kwargs)
    rows, summary = summarize(times, share_cache.stats(), n)
    text = report(rows, summary, source, args, f'{type(net).__name__} ({Path(args.weights).name})', hw)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / 'results.csv', harness.csv_text(rows, FIELDS))
    atomic_write_text(out / 'results.md', text)
    plot(times, out / 'reuse.png')
    print(f'wrote {out}/results.csv, results.md, reuse.png')
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
