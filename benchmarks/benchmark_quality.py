"""Quality report of a checkpoint on real pictures, always beside bicubic (a script, not a test); or, with
``--model LABEL=WEIGHTS`` (repeated), several models side by side (comparison mode, below).

- Vid4 (../shared/data/video/vid4-*): target frame t with reference frame t+k (t-k near the end) for
  k = 1, 2, 4, 8, 16: a ladder of decreasing similarity, like CUFED5's reference levels. Each target is an HR crop
  (``--crop``, centred) of every ``--frame-step``-th frame; its reference is the same region of frame t+k with a
  ``--margin`` around it, so that moving content can still be found.
- The same targets with the self-reference (Ref = the bicubically upsampled LR): what the network does without a
  real reference. The gap between the two shows how much texture the reference really gives.
- Set5 and Set14 (../shared/data/sisr, full images) with the self-reference.
PSNR/SSIM on Y with a 4-pixel border (BasicSR's calculate_psnr/calculate_ssim), as a Markdown table, a CSV and a
plot of PSNR against k, in ``--output`` (an existing folder is kept and renamed with a time stamp).

Example (from the repository root):
  python -m benchmarks.benchmark_quality --weights pretrained/demo_cpu/extracter_demo_cpu.pth

Comparison mode: every ``--model LABEL=WEIGHTS`` (the network options from the YAML beside the weights) on the same
targets, with bicubic as a row of its own. RefSR models (EXTRACTER, TTSR) get real references and the
self-reference; single-image models (DRCT) run through the engine's ``run_sisr`` once per target. Sets (``--sets``):
``vid4`` (the reference ladder t+k, k = 1, 2, 4, 8, 16, and the self-reference on the same targets), ``set5``,
``set14`` (self-reference) and ``motorcycle`` (the Middlebury pair of scikit-image: the right view as reference, and the
self-reference). Every output is measured with PSNR/SSIM on Y and on RGB, border 4 (``psnr_y_b4``, ``ssim_y_b4``,
``psnr_rgb_b4``, ``ssim_rgb_b4``, :mod:`extracter.evaluation.protocols`), with the wall time and the peak memory of
each model call (CUDA: the allocator's peak; CPU: the growth of the resident set, sampled every millisecond, an
estimate). Writes ``compare.md`` and ``compare.csv`` (means per set, reference and model), ``per_image.csv`` and
``crops.png`` (a crop of one target per set: HR, bicubic and every model, enlarged without interpolation).

  python -m benchmarks.benchmark_quality --model EXTRACTER=pretrained/demo_cpu/extracter_demo_cpu.pth \
      --model TTSR=pretrained/ttsr_demo_cpu/ttsr_demo_cpu.pth -o results/compare_demo
"""

import argparse
import csv
import ctypes
import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import harness
from extracter.data import degradations as deg
from extracter.data.image_io import list_images, read_image
from extracter.data.inference_dataset import inference_sample
from extracter.evaluation.protocols import describe_metric, expand_protocols
from extracter.inference.engine import run_sisr
from extracter.inference.folder import batch_of_one, super_resolve
from extracter.inference.network import load_network
from extracter.tools.demo import archive_existing
from extracter.tools.measure import metrics
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write, atomic_write_text
from extracter.utils.visualize import save_png, side_by_side, tensor_to_uint8

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
    multiples = net.size_multiples()  # (LR, reference) side multiples: inputs are edge-padded to them
    kwargs = {'max_memory': max_memory}
    rows = []
    cases = list(vid4_cases(shared / 'video', crop, margin, frame_step))
    done_self = set()
    for seq, t, k, hr, ref in tqdm(cases, desc='Vid4', unit='case'):
        lq = deg.make_lq(hr)
        res = super_resolve(net, batch_of_one(inference_sample(lq, [ref], *multiples)), device, kwargs)
        rows.append((seq, t, f'ref k={k}', *metrics(res['sr'], hr)))
        if (seq, t) not in done_self:
            done_self.add((seq, t))
            rows.append((seq, t, 'bicubic', *metrics(res['bicubic'], hr)))
            sample_self = batch_of_one(inference_sample(lq, [deg.make_lq_up(lq)], *multiples))
            res_self = super_resolve(net, sample_self, device, kwargs)
            rows.append((seq, t, 'self-reference', *metrics(res_self['sr'], hr)))
    for name in ('Set5', 'Set14'):
        folder = shared / 'sisr' / name
        for fname in tqdm(list_images(folder), desc=name, unit='img'):
            hr = read_image(folder / fname)
            if sisr_crop:  # a centred crop, to bound the time of the self-reference search on a CPU
                y, x = max((hr.shape[0] - sisr_crop) // 2, 0), max((hr.shape[1] - sisr_crop) // 2, 0)
                hr = hr[y:y + sisr_crop, x:x + sisr_crop]
            hr = deg.crop_to_multiple(np.ascontiguousarray(hr), multiples[1], fname)
            lq = deg.make_lq(hr)
            res = super_resolve(net, batch_of_one(inference_sample(lq, [deg.make_lq_up(lq)], *multiples)), device,
                                kwargs)
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


# ---------------------------------------------------------------------------------------------- comparison mode
SETS = ('vid4', 'set5', 'set14', 'motorcycle')
COMPARE_METRICS = expand_protocols({'colour': ['y', 'rgb'], 'border': 'scale', 'metrics': ['psnr', 'ssim']})
SELF = 'self-reference'
NONE = 'none'


@dataclass
class Model:
    """A model of the comparison: ``kind`` 'refsr' (one or several references), 'sisr' or 'bicubic'."""

    label: str
    kind: str
    net: Optional[torch.nn.Module] = None


@dataclass
class Case:
    """One target: its HR crop, LR, and the references of each condition (for RefSR models)."""

    dataset: str
    image: str
    hr: np.ndarray
    refs: Dict[str, List[np.ndarray]]
    lq: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lq = deg.make_lq(self.hr)


def parse_model_arg(text: str) -> Tuple[str, str]:
    label, sep, weights = text.partition('=')
    if not sep or not label or not weights:
        raise ValueError(f'--model expects LABEL=WEIGHTS, got {text!r}')
    if label.lower() == 'bicubic':
        raise ValueError(f'--model {text!r}: the label bicubic is the bicubic row\'s own')
    return label, weights


def load_model(label: str, weights: str, device: str) -> Model:
    """The network of ``weights`` with the ``network_g`` of the YAML beside it: a RefSR network through the usual
    loader, a single-image one (its descriptor's ``uses_reference`` False, e.g. DRCT) built and loaded strictly the
    same way."""
    from extracter.archs.descriptor import descriptor_of
    from extracter.inference.network import NetworkLoadError, load_state_into, network_options
    from extracter.utils.checkpoint import load_checkpoint, network_state

    try:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f'weights not found: {weights}')
        options = network_options(weights)
        try:
            descriptor = descriptor_of(options.get('type'))
        except KeyError:
            raise NetworkLoadError(f'{weights}: unknown network type {options.get("type")!r}') from None
        if descriptor.uses_reference:
            return Model(label, 'refsr', load_network(weights, device=device))
        net = descriptor.arch(**descriptor.options_for_weights(options))
        load_state_into(net, network_state(load_checkpoint(weights), weights, None), weights)
    except (OSError, ValueError) as err:  # missing files, NetworkLoadError, CheckpointError: one line
        raise ValueError(f'--model {label}: {err}') from None
    return Model(label, 'sisr', net.eval().to(device))


class PeakMemory:
    """Peak memory of one call. CUDA: the allocator's peak above what was allocated at the start. CPU: the growth of
    the process' resident set above its size at the start (after returning free heap memory to the system), sampled
    every millisecond by a thread: an estimate (Linux; ``None`` elsewhere)."""

    def __init__(self, device: str) -> None:
        self.cuda = str(device).startswith('cuda')
        self.peak: Optional[int] = None

    _rss = staticmethod(harness.rss_bytes)

    def __enter__(self) -> 'PeakMemory':
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self._rss()
        self.top = self.base
        self._stop = threading.Event()
        if self.base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.top = max(self.top, self._rss() or 0)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
            return
        if self.base is None:
            return
        self._stop.set()
        self._thread.join()
        self.top = max(self.top, self._rss() or 0)
        self.peak = self.top - self.base


def run_model(model: Model, case: Case, condition: str, device: str, run_kwargs: Dict[str, Any]):
    """(SR uint8, seconds, peak bytes or None) of one model on one case and reference condition."""
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        if model.kind == 'bicubic':
            sr = deg.make_lq_up(case.lq)
        elif model.kind == 'sisr':
            out = run_sisr(model.net, deg.to_tensor(case.lq)[None].to(device), **run_kwargs)
            sr = tensor_to_uint8(out)
        else:
            sample = batch_of_one(inference_sample(case.lq, case.refs[condition], *model.net.size_multiples()))
            sr = super_resolve(model.net, sample, device, run_kwargs)['sr']
        if str(device).startswith('cuda'):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return sr, seconds, mem.peak


def measure_all(img: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """The comparison's metrics (BasicSR's, on BGR uint8 as it expects) of an RGB uint8 image against its HR."""
    from extracter.registry import use_basicsr

    use_basicsr()  # basicsr importable (the compat shim)
    from basicsr.metrics import calculate_metric

    bgr = {'img': np.ascontiguousarray(img[..., ::-1]), 'img2': np.ascontiguousarray(gt[..., ::-1])}
    return {name: float(calculate_metric(bgr, dict(block))) for name, block in COMPARE_METRICS.items()}


def centre_crop(img: np.ndarray, size: int, multiple: int = 4) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return deg.crop_to_multiple(np.ascontiguousarray(img[y:y + ch, x:x + cw]), multiple)


def comparison_cases(shared: Optional[Path], sets: Sequence[str], crop: int, margin: int, frame_step: int,
                     sisr_crop: int, motorcycle_crop: int, max_images: int = 0,
                     motorcycle_ref_crop: int = 0) -> List[Case]:
    """The targets of every set, HR sides multiples of 4 (each model pads the LR to its own multiple)."""
    cases: List[Case] = []
    if 'vid4' in sets:
        grouped: Dict[Tuple[str, int], Case] = {}
        for seq, t, k, hr, ref in vid4_cases(shared / 'video', crop, margin, frame_step):
            key = (seq, t)
            if key not in grouped:
                if max_images and len(grouped) >= max_images:
                    continue
                hr = deg.crop_to_multiple(hr, 4)
                grouped[key] = Case('Vid4', f'{seq}/frame_{t:03d}', hr, {SELF: []})
                cases.append(grouped[key])
            grouped[key].refs[f'frame t+{k}'] = [ref]
    for name in ('Set5', 'Set14'):
        if name.lower() not in sets:
            continue
        folder = shared / 'sisr' / name
        for fname in list_images(folder)[:max_images or None]:
            hr = read_image(folder / fname)
            hr = centre_crop(hr, sisr_crop) if sisr_crop else deg.crop_to_multiple(hr, 4, fname)
            cases.append(Case(name, fname, hr, {SELF: []}))
    if 'motorcycle' in sets:
        from skimage.data import stereo_motorcycle

        left, right, _ = stereo_motorcycle()
        if motorcycle_ref_crop:  # a centred crop of the right view, to bound the time on a CPU
            right = centre_crop(right, motorcycle_ref_crop, 1)
        cases.append(Case('motorcycle', 'left view', centre_crop(left, motorcycle_crop), {'right view': [right],
                                                                                         SELF: []}))
    for case in cases:  # the self-reference: the upsampled LR (TTSR's and EXTRACTER's protocol without references)
        case.refs[SELF] = [deg.make_lq_up(case.lq)]
    return cases


def compare(models: Sequence[Model], cases: Sequence[Case], device: str, run_kwargs: Dict[str, Any],
            keep=lambda case, condition: False):
    """Rows (dataset, image, reference, model, metrics..., seconds, peak_mib) and the SR images ``keep`` asks for."""
    rows, kept = [], {}
    for model in models:
        kwargs = run_kwargs if model.kind == 'refsr' else {}
        for case in tqdm(cases, desc=model.label, unit='image'):
            for condition in (case.refs if model.kind == 'refsr' else [NONE]):
                sr, seconds, peak = run_model(model, case, condition, device, kwargs)
                rows.append({'dataset': case.dataset, 'image': case.image, 'reference': condition,
                             'model': model.label, **measure_all(sr, case.hr), 'seconds': seconds,
                             'peak_mib': None if peak is None else peak / 2 ** 20})
                if keep(case, condition):
                    kept[(case.dataset, case.image, condition, model.label)] = sr
    return rows, kept


def reference_order(reference: str):
    if reference == NONE:
        return (0, 0)
    if reference == SELF:
        return (1, 0)
    k = reference.rsplit('+', 1)[-1]
    return (2, int(k)) if k.isdigit() else (3, 0)


def summarise_comparison(rows, labels: Sequence[str]):
    groups = defaultdict(list)
    for r in rows:
        groups[(r['dataset'], r['reference'], r['model'])].append(r)
    order = {name: i for i, name in enumerate(['Vid4', 'Set5', 'Set14', 'motorcycle'])}
    model_order = {label: i for i, label in enumerate(labels)}
    out = []
    for (dataset, reference, model), rs in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], 9), kv[0][0], reference_order(kv[0][1]), model_order.get(kv[0][2], 99))):
        peaks = [r['peak_mib'] for r in rs if r['peak_mib'] is not None]
        out.append({'dataset': dataset, 'reference': reference, 'model': model, 'images': len(rs),
                    **{m: float(np.mean([r[m] for r in rs])) for m in COMPARE_METRICS},
                    'seconds': float(np.mean([r['seconds'] for r in rs])),
                    'peak_mib': max(peaks) if peaks else None})
    return out


def comparison_markdown(summary, title: str, device: str, note: str) -> str:
    names = list(COMPARE_METRICS)
    lines = [f'### {title}', '',
             f'Metrics: {"; ".join(describe_metric(n, b) for n, b in COMPARE_METRICS.items())}. '
             f'Time and peak memory: mean seconds per image and the largest peak per image, on {device}{note}.', '',
             '| set | reference | model | ' + ' | '.join(names) + ' | images | s / image | peak MiB |',
             '|---|---|---|' + '---:|' * (len(names) + 3)]
    for r in summary:
        peak = '-' if r['peak_mib'] is None else f'{r["peak_mib"]:.0f}'
        values = [f'{r[n]:.2f}' if n.startswith('psnr') else f'{r[n]:.4f}' for n in names]
        lines.append(f'| {r["dataset"]} | {r["reference"]} | {r["model"]} | ' + ' | '.join(values)
                     + f' | {r["images"]} | {r["seconds"]:.3f} | {peak} |')
    return '\n'.join(lines) + '\n'


def crops_picture(cases, kept, labels, condition_of, size: int, zoom: int) -> Optional[np.ndarray]:
    """One row per set (its first target): HR, bicubic and every model on the same centred crop, enlarged ``zoom``
    times by pixel repetition."""
    rows = []
    seen = set()
    for case in cases:
        if case.dataset in seen:
            continue
        seen.add(case.dataset)
        panels = []
        for label in labels:
            condition = NONE if label in ('HR', 'bicubic') else condition_of(case, label)
            img = case.hr if label == 'HR' else kept.get((case.dataset, case.image, condition, label))
            if img is None:
                continue
            crop = centre_crop(img, size, 1)
            name = label if condition in (NONE, None) else f'{label} ({condition})'
            panels.append((name, crop.repeat(zoom, 0).repeat(zoom, 1)))
        if panels:
            rows.append(side_by_side([(f'{case.dataset} {case.image}: {panels[0][0]}', panels[0][1])] + panels[1:]))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(padded, axis=0)


def run_comparison(args) -> None:
    labelled = [parse_model_arg(m) for m in args.model]
    labels = [label for label, _ in labelled]
    if len(set(labels)) != len(labels):
        raise ValueError(f'--model labels must differ, got {labels}')
    sets = [s.strip().lower() for s in args.sets.split(',') if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets:
        raise ValueError(f'--sets: unknown {unknown or "(empty)"}; choose from {",".join(SETS)}')
    shared = Path(args.shared)
    for s, sub in (('vid4', 'video'), ('set5', 'sisr/Set5'), ('set14', 'sisr/Set14')):
        if s in sets and not (shared / sub).is_dir():
            raise FileNotFoundError(f'{shared / sub} not found (the real test data, see ../shared/data/README.md); '
                                    f'leave {s} out of --sets')
    models = [Model('bicubic', 'bicubic')] + [load_model(label, w, args.device) for label, w in labelled]
    out = Path(args.output)
    archive_existing(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = comparison_cases(shared, sets, args.crop, args.margin, args.frame_step, args.sisr_crop,
                             args.motorcycle_crop, args.max_images, args.motorcycle_ref_crop)
    firsts = {}
    for case in cases:
        firsts.setdefault(case.dataset, case.image)

    def condition_of(case: Case, label: str) -> str:
        model = next(m for m in models if m.label == label)
        if model.kind != 'refsr':
            return NONE
        real = [c for c in case.refs if c != SELF]
        return min(real, key=reference_order) if real else SELF

    def keep(case: Case, condition: str) -> bool:
        return firsts.get(case.dataset) == case.image

    t0 = time.time()
    rows, kept = compare(models, cases, args.device, {'max_memory': args.max_memory}, keep)
    summary = summarise_comparison(rows, ['bicubic'] + labels)
    columns = ['dataset', 'reference', 'model', 'images', *COMPARE_METRICS, 'seconds', 'peak_mib']
    atomic_write_text(out / 'compare.csv', harness.csv_text(summary, columns))
    atomic_write_text(out / 'per_image.csv', harness.csv_text(rows, ['dataset', 'image', 'reference', 'model',
                                                              *COMPARE_METRICS, 'seconds', 'peak_mib']))
    note = f'; {args.note}' if args.note else ''
    table = comparison_markdown(summary, args.title or ' vs '.join(labels), args.device, note)
    atomic_write_text(out / 'compare.md', table)
    picture = crops_picture(cases, kept, ['HR', 'bicubic'] + labels, condition_of, args.crop_size, args.zoom)
    if picture is not None:
        save_png(picture, out / 'crops.png')
    print(table)
    print(f'{len(rows)} measurements in {time.time() - t0:.0f} s; report in {out}')


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The values argparse's types do not check, refused before any work (one line, exit status 2)."""
    harness.check_at_least(parser, ('--max-images', args.max_images, 0, ' (0: every image)'), ('--crop', args.crop, 16),
                           ('--margin', args.margin, 0), ('--frame-step', args.frame_step, 1),
                           ('--sisr-crop', args.sisr_crop, 0, ' (0: the whole image)'),
                           ('--motorcycle-crop', args.motorcycle_crop, 16),
                           ('--motorcycle-ref-crop', args.motorcycle_ref_crop, 0, ' (0: the whole view)'),
                           ('--crop-size', args.crop_size, 1), ('--zoom', args.zoom, 1))
    harness.check_memory(parser, '--max-memory', args.max_memory)


def run(argv) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', default=None, help='one checkpoint: the single-model report')
    parser.add_argument('--model', action='append', default=[], metavar='LABEL=WEIGHTS',
                        help='comparison mode: a model and its label (repeat; options from the YAML beside it)')
    parser.add_argument('--sets', default=','.join(SETS), help=f'comparison mode: sets ({",".join(SETS)})')
    parser.add_argument('--max-images', type=int, default=0, help='comparison mode: at most this many targets per set')
    parser.add_argument('--motorcycle-crop', type=int, default=320, help='comparison mode: HR crop of the left view')
    parser.add_argument('--motorcycle-ref-crop', type=int, default=0,
                        help='comparison mode: centred crop of the right view (0: the whole view, as the demo)')
    parser.add_argument('--crop-size', type=int, default=64, help='comparison mode: side of the crops in crops.png')
    parser.add_argument('--zoom', type=int, default=3, help='comparison mode: enlargement of the crops in crops.png')
    parser.add_argument('--note', default='', help='comparison mode: a note for the table (e.g. "shared machine")')
    parser.add_argument('--opt', default=None, help='YAML with network_g (default: beside the weights)')
    parser.add_argument('--shared', default=str(harness.SHARED_DATA))
    parser.add_argument('-o', '--output', default='results/benchmark_quality')
    parser.add_argument('--crop', type=int, default=256, help='HR crop side of the Vid4 targets (multiple of 16)')
    parser.add_argument('--margin', type=int, default=32, help='extra reference context around the target region')
    parser.add_argument('--frame-step', type=int, default=8, help='every n-th frame is a target')
    parser.add_argument('--sisr-crop', type=int, default=0, help='centred crop of Set5/Set14 images (0: whole)')
    parser.add_argument('--max-memory', default='4G')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--title', default=None)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.model:
        if args.weights:
            parser.error('give either --weights (one model) or --model LABEL=WEIGHTS (comparison)')
        run_comparison(args)
        return
    if not args.weights:
        parser.error('give --weights (one model) or --model LABEL=WEIGHTS, repeated (comparison)')
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
