"""Scaling benchmark: wall time and peak memory (RSS) of one EXTRACTER forward pass, dense versus ours.

For square outputs of 256, 512, 1024 and 2048 pixels (any ``--sizes``, e.g. 4096; LR a quarter of that, reference
the output size) it runs, each case in its own subprocess so that the RSS peak is that case's:
- ``dense``: the original-style path (whole relevance matrix, every reference patch unfolded), untiled;
- ``chunked``: our chunked search + transfer by index, untiled and without a budget (isolates their cost);
- ``ours``: chunked search (or ``--search approximate`` / ``auto``) + transfer by index, with chunk and tile sizes
  (and, for large references, relu1_1 recomputed) chosen by the memory planner for ``--max-memory`` (per size with
  ``--budget SIZE=BUDGET``).
Timings are split into feature extraction (VGG-19), search, transfer and the rest of the network; the search's
matrix products are timed on their own and compared with ``torch.matmul``'s rate on this machine. A case that the
planner refuses, that is estimated not to fit ``--dense-limit``, or that runs out of memory is recorded as such.

Writes ``results.csv``, ``results.md`` and ``scaling.png`` into ``--out`` (default
``results/benchmark_scaling/<geometry>``); an existing folder is kept unless ``--overwrite`` is given. ``--dry-run``
prints each case's command line and ``run_refsr`` arguments (JSON lines) and runs nothing.

Weights are random, of the released size (blocks 8+16+8+4 / 8+9+9+9, 64 features, top-k 2), with the paper's
geometry (window 6, stride 2, padding 2) by default. Inputs are a real wide/tele phone pair from
``../shared/data/refsr-pairs/dcsr-camerafusion`` when present (centre crops), else seeded noise.

Example (from the repository root): ``python -m benchmarks.benchmark_scaling --sizes 256 512 1024 --budget 2048=6G``;
the 2048 end to
end with the approximate search: ``--sizes 2048 --methods ours --search approximate --budget 2048=6G``; the 4096
case (a 4096 x 4096 output with a 4096 x 4096 reference in 8G): ``--sizes 4096 --methods ours --search approximate
--budget 4096=8G --timeout 10800``.
"""

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import ROOT, load_inputs
from extracter.search import get_method, method_names
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_torch_save, atomic_write, atomic_write_text

GIB = 2 ** 30
FIELDS = ['size', 'method', 'status', 'plan', 'wall_s', 'vgg_s', 'search_s', 'search_matmul_s', 'transfer_s',
          'rest_s', 'search_gflops', 'matmul_peak_gflops', 'search_matmul_frac', 'peak_rss_gib', 'base_rss_gib',
          'estimate_gib', 'max_abs_diff_vs_dense', 'psnr_vs_dense_db', 'note']


def matmul_peak_gflops(n: int = 4096, reps: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = harness.best_time(lambda: torch.matmul(a, b), time.perf_counter, reps, 0)  # a warm-up, then the best call
    return 2 * n ** 3 / best / 1e9


class Timers:
    """Accumulates the time spent in the texture extractor, the search (and its bmm calls) and the transfer."""

    def __init__(self, net) -> None:
        self.t = {'vgg': 0.0, 'search': 0.0, 'matmul': 0.0, 'transfer': 0.0}
        self.flops = 0.0
        self.start = time.perf_counter()
        ext, st = net.feature_extractor(), net.search_transfer
        ext.register_forward_pre_hook(lambda m, i: self._start('vgg'))
        ext.register_forward_hook(lambda m, i, o: self._stop('vgg'))
        self._wrap(st, 'search', 'search')
        self._wrap(st, 'transfer', 'transfer')
        for method in method_names():  # what a method prepares once per reference (chunked: the key blocks)
            self._wrap(get_method(method), 'prepare', 'search')
        self._bmm = torch.bmm
        torch.bmm = self._timed_bmm  # only in this benchmark subprocess

    def _start(self, key):
        self.t0 = time.perf_counter()

    def _stop(self, key):
        self.t[key] += time.perf_counter() - self.t0

    def _wrap(self, obj, name, key):
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self.t[key] += time.perf_counter() - t
            if name == 'search':  # a partial figure for the parent, should the case time out
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
                print(json.dumps({'tiles_done': 0, 'tiles': 0, 'elapsed_s': time.perf_counter() - self.start,
                                  'search_s': self.t['search'], 'peak_rss_gib': peak}), file=sys.stderr, flush=True)
            return out
        setattr(obj, name, timed)

    def _timed_bmm(self, a, b, **kwargs):
        t = time.perf_counter()
        out = self._bmm(a, b, **kwargs)
        self.t['matmul'] += time.perf_counter() - t
        self.flops += 2.0 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        return out


def run_case(args) -> dict:
    """One forward pass in this (child) process; prints a JSON line."""
    from extracter.archs.extracter_arch import Extracter
    from extracter.inference.engine import run_refsr
    from extracter.inference.memory_plan import MemoryBudgetError, NetSpec, estimate

    torch.set_grad_enabled(False)
    torch.manual_seed(args.seed)
    window, stride, padding = args.geometry
    net = Extracter(dfe_init='random', window=window, stride=stride, padding=padding).eval()
    lr, ref, source = load_inputs(args.case_size, args.seed)
    base = harness.rss_bytes()
    row = {'size': args.case_size, 'method': args.case_method, 'base_rss_gib': base / GIB, 'note': source}
    spec = NetSpec.from_net(net)
    if args.case_method in ('dense', 'chunked'):  # untiled, without a budget
        est = estimate(spec, tuple(lr.shape[-2:]), tuple(ref.shape[-2:]), mode=args.case_method)['total']
        row['estimate_gib'] = est / GIB
        if est > args.dense_limit_bytes:
            row.update(status='refused', note=f'estimated {est / GIB:.1f} GiB > --dense-limit')
            return row
        kwargs = {'search_mode': args.case_method}
    else:
        kwargs = case_kwargs(args.case_method, args.case_budget, args.search)
    row['matmul_peak_gflops'] = matmul_peak_gflops(3072)  # under this case's conditions (the machine is shared)
    t = time.perf_counter()
    timers = Timers(net)

    def progress(done, total):  # partial figures, read by the parent if the case times out
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
        print(json.dumps({'tiles_done': done, 'tiles': total, 'elapsed_s': time.perf_counter() - t,
                          'peak_rss_gib': peak}), file=sys.stderr, flush=True)
    kwargs['progress'] = progress
    try:
        sr, plan = run_refsr(net, lr, ref, return_plan=True, **kwargs)
    except MemoryBudgetError as err:
        row.update(status='refused', note=str(err))
        return row
    except (RuntimeError, MemoryError) as err:
        if 'memory' not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        row.update(status='oom', note=str(err).splitlines()[0][:200])
        return row
    wall = time.perf_counter() - t
    tm = timers.t
    row.update(status='ok', wall_s=wall, vgg_s=tm['vgg'], search_s=tm['search'], search_matmul_s=tm['matmul'],
               transfer_s=tm['transfer'], rest_s=wall - tm['vgg'] - tm['search'] - tm['transfer'],
               search_gflops=timers.flops / max(tm['matmul'], 1e-9) / 1e9,
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB)
    if plan is not None:
        row['plan'] = plan.describe().split('; estimated')[0]
        row['estimate_gib'] = plan.estimate / GIB
    else:
        row['plan'] = f'{args.case_method}, untiled, no budget'
    if args.save_sr:
        atomic_torch_save(sr.clone(), args.save_sr)
    return row


def case_kwargs(method: str, budget: str, search: str) -> dict:
    """``run_refsr`` keyword arguments of one case: the search mode alone (``dense``, ``chunked``: untiled, no
    budget) or, for ``ours``, the budget and ``--search``."""
    if method in ('dense', 'chunked'):
        return {'search_mode': method}
    return {'max_memory': budget, 'search_mode': search}


def child_command(size: int, method: str, budget: str, args, out_dir: Path) -> list:
    """The command line of one case's subprocess."""
    return harness.module_command('benchmark_scaling', '--case-size', size, '--case-method', method,
                                  '--case-budget', budget, '--search', args.search, '--seed', args.seed,
                                  '--geometry', *args.geometry, '--dense-limit', args.dense_limit,
                                  '--save-sr', out_dir / f'.sr_{size}_{method}.pt')


def child(size: int, method: str, budget: str, args, out_dir: Path) -> dict:
    cmd = child_command(size, method, budget, args, out_dir)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=harness.subprocess_env(), timeout=args.timeout)
    except subprocess.TimeoutExpired as err:
        row = {'size': size, 'method': method, 'status': 'timeout', 'note': f'over {args.timeout} s'}
        stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or '')
        partial = [json.loads(ln) for ln in stderr.splitlines() if ln.startswith('{"tiles_done"')]
        if partial:  # how far it got, and the RSS peak so far (tiles are alike, so it is near the final one)
            last = partial[-1]
            row['peak_rss_gib'] = last['peak_rss_gib']
            search = [p for p in partial if 'search_s' in p]
            if search:
                row['search_s'] = search[-1]['search_s']
                row['note'] += f"; search done after {search[-1]['elapsed_s']:.0f} s"
            row['note'] += (f"; {last['tiles_done']} tiles of {last.get('tiles') or '?'} done after "
                            f"{last['elapsed_s']:.0f} s, peak RSS so far {last['peak_rss_gib']:.2f} GiB")
        return row
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode != 0 or not lines:
        status = 'oom' if proc.returncode in (-9, 137) else 'error'
        tail = (proc.stderr.strip().splitlines() or ['?'])[-1][:200]
        return {'size': size, 'method': method, 'status': status, 'note': f'exit {proc.returncode}: {tail}'}
    return json.loads(lines[-1])


def fmt(v, spec='.2f'):
    return '' if v is None or v == '' else (format(v, spec) if isinstance(v, float) else str(v))


def write_outputs(rows, out_dir: Path, peak: float, header: str) -> None:
    atomic_write_text(out_dir / 'results.csv', harness.csv_text(rows, FIELDS, lineterminator='\r\n'))
    cols = [('size', 'output', 'd'), ('method', 'method', 's'), ('status', 'status', 's'),
            ('wall_s', 'total s', '.1f'), ('vgg_s', 'VGG s', '.1f'), ('search_s', 'search s', '.1f'),
            ('transfer_s', 'transfer s', '.1f'), ('rest_s', 'rest s', '.1f'),
            ('search_gflops', 'search matmul GFLOP/s', '.0f'), ('matmul_peak_gflops', 'matmul peak GFLOP/s', '.0f'),
            ('search_matmul_frac', 'search matmul / peak', '.0%'), ('peak_rss_gib', 'peak RSS GiB', '.2f'),
            ('psnr_vs_dense_db', 'PSNR vs dense dB', '.1f'), ('max_abs_diff_vs_dense', 'max abs diff', '.1e')]
    lines = [header, '', '| ' + ' | '.join(c[1] for c in cols) + ' |', '|' + '---|' * len(cols)]
    for r in rows:
        cells = []
        for key, _, spec in cols:
            v = r.get(key)
            cells.append(fmt(v, spec) if isinstance(v, float) else ('' if v is None else str(v)))
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'Plans / notes:', '']
    for r in rows:
        note = f" - {r['note']}" if r.get('note') else ''
        lines.append(f"- {r['size']} {r['method']}: {r.get('plan') or ''}{note}")
    atomic_write_text(out_dir / 'results.md', '\n'.join(lines) + '\n')
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in (('dense', 'o'), ('chunked', '^'), ('ours', 's')):
        ok = [r for r in rows if r['method'] == method and r['status'] == 'ok']
        px = [r['size'] ** 2 for r in ok]
        if ok:
            axes[0].plot(px, [r['wall_s'] for r in ok], marker=marker, label=method)
            axes[1].plot(px, [r['peak_rss_gib'] for r in ok], marker=marker, label=method)
        for r in rows:
            if r['method'] == method and r['status'] != 'ok':
                y = {'dense': 0.05, 'chunked': 0.3}.get(method, 0.55)
                for ax in axes:
                    ax.annotate(f"{method}: {r['status']}", xy=(r['size'] ** 2, y),
                                xycoords=('data', 'axes fraction'), fontsize=7, rotation=90)
    for ax, ylabel in zip(axes, ('wall time of one forward (s)', 'peak RSS (GiB)')):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('output pixels')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f'EXTRACTER forward, dense vs chunked/tiled (matmul peak {peak:.0f} GFLOP/s)', fontsize=10)
    fig.tight_layout()
    atomic_write(out_dir / 'scaling.png', lambda tmp: fig.savefig(tmp, format='png', dpi=120))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512, 1024, 2048])
    parser.add_argument('--methods', nargs='+', default=['dense', 'chunked', 'ours'],
                        choices=['dense', 'chunked', 'ours'])
    parser.add_argument('--max-memory', default='2G', help="ours: working-memory budget (default '2G')")
    parser.add_argument('--budget', action='append', default=[], metavar='SIZE=BUDGET',
                        help='ours: budget for one output size, e.g. 2048=6G')
    parser.add_argument('--search', choices=['chunked', 'approximate', 'auto'], default='chunked',
                        help='ours: the search under the budget (default chunked, the exact search; approximate: '
                             'docs/large_images.md; auto: approximate where the exact search is expensive)')
    parser.add_argument('--dense-limit', default='10G',
                        help='dense/chunked (untiled) cases estimated above this are recorded as refused (10G)')
    parser.add_argument('--geometry', type=int, nargs=3, default=[6, 2, 2], metavar=('WINDOW', 'STRIDE', 'PAD'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--timeout', type=float, default=7200, help='seconds per case')
    parser.add_argument('--out', type=Path, default=None)
    parser.add_argument('--overwrite', action='store_true')
    harness.add_machine_argument(parser, default='machine state not stated: timings may be noisy')
    parser.add_argument('--dry-run', action='store_true',
                        help="print each case's command line and run_refsr arguments (JSON lines); run nothing")
    # internal: one case in a child process
    parser.add_argument('--case-size', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--case-method', help=argparse.SUPPRESS)
    parser.add_argument('--case-budget', help=argparse.SUPPRESS)
    parser.add_argument('--save-sr', help=argparse.SUPPRESS)
    return parser


def default_out_dir(args) -> Path:
    """``results/benchmark_scaling/w<window>_s<stride>_p<padding>``, with ``_<search>`` for another search than
    the chunked one."""
    name = 'w{}_s{}_p{}'.format(*args.geometry) + ('' if args.search == 'chunked' else f'_{args.search}')
    return ROOT / 'results' / 'benchmark_scaling' / name


def parse_budgets(parser: argparse.ArgumentParser, items: list) -> dict:
    """``--budget SIZE=BUDGET`` (repeated) -> ``{size: budget}``; a malformed one is a usage error naming it."""
    budgets = {}
    for item in items:
        size, sep, budget = item.partition('=')
        if not sep or not size.strip().isdigit():
            parser.error(f'--budget expects SIZE=BUDGET such as 2048=6G, got {item!r}')
        harness.check_memory(parser, f'--budget {item}', budget)
        budgets[int(size)] = budget
    return budgets


def run(argv) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    harness.check_at_least(parser, ('--sizes', args.sizes, 16, ' (output sides in pixels)'))
    if args.timeout <= 0:
        parser.error(f'--timeout must be positive (seconds per case), got {args.timeout:g}')
    harness.check_geometry(parser, args.geometry)
    args.dense_limit_bytes = harness.check_memory(parser, '--dense-limit', args.dense_limit)
    harness.check_memory(parser, '--max-memory', args.max_memory)
    budgets = parse_budgets(parser, args.budget)
    if args.case_size is not None:
        if args.dry_run:
            print(json.dumps({'case_size': args.case_size, 'case_method': args.case_method,
                              'case_budget': args.case_budget, 'search': args.search,
                              'run_refsr': case_kwargs(args.case_method, args.case_budget, args.search)}), flush=True)
            return
        print(json.dumps(run_case(args)), flush=True)
        return

    out_dir = args.out or default_out_dir(args)
    if args.dry_run:
        for size in args.sizes:
            for method in args.methods:
                budget = budgets.get(size, args.max_memory)
                print(json.dumps({'size': size, 'method': method, 'out': str(out_dir),
                                  'command': child_command(size, method, budget, args, out_dir),
                                  'run_refsr': case_kwargs(method, budget, args.search)}), flush=True)
        return
    harness.refuse_existing(out_dir, args.overwrite, 'or choose --out')
    out_dir.mkdir(parents=True, exist_ok=True)
    peak = matmul_peak_gflops()
    print(f'torch.matmul peak on this machine: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads)', flush=True)
    rows = []
    for size in args.sizes:
        for method in args.methods:
            budget = budgets.get(size, args.max_memory)
            t = time.time()
            row = child(size, method, budget, args, out_dir)
            row.setdefault('matmul_peak_gflops', peak)
            if row.get('search_gflops'):
                row['search_matmul_frac'] = row['search_gflops'] / row['matmul_peak_gflops']
            if method == 'ours' and row.get('status') == 'ok':
                row['plan'] = f"budget {budget}: {row.get('plan', '')}"
            rows.append(row)
            print(f"{size} {method}: {row['status']} in {time.time() - t:.0f} s "
                  f"{fmt(row.get('peak_rss_gib'))} GiB {row.get('note', '')}", flush=True)
        dense_sr = out_dir / f'.sr_{size}_dense.pt'
        for method in ('chunked', 'ours'):
            other_sr = out_dir / f'.sr_{size}_{method}.pt'
            row = next((r for r in rows if r['size'] == size and r['method'] == method), None)
            if dense_sr.is_file() and other_sr.is_file() and row is not None and row['status'] == 'ok':
                a = torch.load(dense_sr, weights_only=True)
                b = torch.load(other_sr, weights_only=True)
                mse = float(((a - b) ** 2).mean())
                row['max_abs_diff_vs_dense'] = float((a - b).abs().max())
                row['psnr_vs_dense_db'] = 10 * math.log10(1 / mse) if mse > 0 else float('inf')
            other_sr.unlink(missing_ok=True)
        dense_sr.unlink(missing_ok=True)
        header = (f'EXTRACTER (random weights, released size), window/stride/padding {args.geometry}, '
                  f'ours with the {args.search} search, one forward '
                  f'pass on CPU ({torch.get_num_threads()} threads, {args.machine}); '
                  f'torch.matmul peak {peak:.1f} GFLOP/s.')
        write_outputs(rows, out_dir, peak, header)
    print(f'wrote {out_dir}/results.csv, results.md, scaling.png')


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
