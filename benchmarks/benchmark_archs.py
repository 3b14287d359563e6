"""The RefSR architectures side by side on the CPU: parameters, wall time and peak memory (RSS) of one inference.

For square outputs of 512 and 1024 pixels (``--sizes``; the LR a quarter of that, the reference the output's size)
it runs EXTRACTER (released size, paper geometry 6/2/2), TTSR (released size) and C2-Matching (released size,
8.9 M parameters in the restoration net as the paper states; 10.0 M with its contrastive extractor, and 0.6 M
more in the frozen VGG-19 that net_map uses), each case in its own subprocess so that the RSS peak is that
case's, untiled or with ``--max-memory`` (the planner's tiles; per architecture with ``--budget ARCH=BUDGET``).
Weights are random (timing and memory do not depend on them); inputs are the DCSR wide/tele pair's centre crops
when ``../shared/data`` is there, else seeded noise.

Writes ``results.csv`` and ``results.md`` into ``--out`` (default ``results/benchmark_archs``); an existing folder
is kept unless ``--overwrite``. ``--quick``: 128 px outputs only (a check that it runs, not a measurement).

Example (from the repository root, on an idle machine):
``python -m benchmarks.benchmark_archs --sizes 512 1024 --max-memory 6G --machine "idle 16-core"``.
"""

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.harness import ROOT, load_inputs
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write_text

GIB = 2 ** 30
ARCHS = {  # registry name -> constructor options (released sizes, random weights)
    'Extracter': {'dfe_init': 'random', 'window': 6, 'stride': 2, 'padding': 2},
    'TTSR': {'lte_init': 'random'},
    'C2Matching': {'vgg_init': 'random'},
}
FIELDS = ['arch', 'size', 'status', 'params_m', 'main_m', 'wall_s', 'peak_rss_gib', 'base_rss_gib', 'plan',
          'note']


def run_case(arch: str, size: int, budget: str, seed: int) -> dict:
    """One inference in this (child) process."""
    from extracter.inference.engine import run_refsr
    from extracter.inference.memory_plan import MemoryBudgetError
    from extracter.registry import ARCH_REGISTRY

    torch.set_grad_enabled(False)
    torch.manual_seed(seed)
    net = ARCH_REGISTRY.get(arch)(**ARCHS[arch]).eval()
    lr, ref, source = load_inputs(size, seed)
    # main_m: without the VGG / contrastive feature extractors (C2-Matching's restoration net: the paper's 8.9 M)
    row = {'arch': arch, 'size': size, 'base_rss_gib': harness.rss_bytes() / GIB, 'note': source,
           'params_m': sum(p.numel() for p in net.parameters()) / 1e6,
           'main_m': sum(p.numel() for n, p in net.named_parameters() if not n.startswith(('vgg.', 'contras.',
                                                                                              'dfe.', 'lte.'))) / 1e6}
    t = time.perf_counter()
    try:
        _, plan = run_refsr(net, lr, ref, return_plan=True, max_memory=budget or None)
    except MemoryBudgetError as err:
        return dict(row, status='refused', note=str(err))
    row.update(status='ok', wall_s=time.perf_counter() - t,
               peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
               plan='untiled, no budget' if plan is None else plan.describe())
    return row


def child(arch: str, size: int, budget: str, args) -> dict:
    cmd = harness.module_command('benchmark_archs', '--case', arch, size, '--case-budget', budget, '--seed',
                                 args.seed)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=harness.subprocess_env(), timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {'arch': arch, 'size': size, 'status': 'timeout', 'note': f'over {args.timeout} s'}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ['?'])[-1][:200]
        return {'arch': arch, 'size': size, 'status': 'oom' if proc.returncode in (-9, 137) else 'error',
                'note': f'exit {proc.returncode}: {tail}'}
    return json.loads(lines[-1])


def fmt(v, spec='.2f') -> str:
    return '' if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def working(row) -> object:
    """What ``max_memory`` bounds: the peak RSS less the runtime's (after importing and building the network)."""
    if row.get('peak_rss_gib') is None or row.get('base_rss_gib') is None:
        return None
    return row['peak_rss_gib'] - row['base_rss_gib']


def write_outputs(rows, out: Path, header: str) -> str:
    table = harness.markdown_table(
        ['architecture', 'output px', 'status', 'parameters (M)', 'without feature extractors (M)', 'wall (s)',
         'peak RSS (GiB)', 'working memory (GiB)', 'plan'],
        [[r['arch'], str(r['size']), r['status'], fmt(r.get('params_m')), fmt(r.get('main_m')),
          fmt(r.get('wall_s'), '.1f'), fmt(r.get('peak_rss_gib')), fmt(working(r)), r.get('plan', r.get('note', ''))]
         for r in rows])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / 'results.csv', harness.csv_text(rows, FIELDS))
    atomic_write_text(out / 'results.md', f'{header}\n\n{table}\n')
    return table


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[512, 1024], help='output sides (multiples of 4)')
    parser.add_argument('--archs', nargs='+', choices=sorted(ARCHS), default=list(ARCHS))
    parser.add_argument('--max-memory', default='', help="working-memory budget for every case (default: none)")
    parser.add_argument('--budget', action='append', default=[], metavar='ARCH=BUDGET',
                        help='a budget for one architecture (repeatable)')
    parser.add_argument('--quick', action='store_true', help='128 px outputs only: checks that it runs')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--timeout', type=float, default=3600, help='seconds per case')
    parser.add_argument('--out', type=Path, default=ROOT / 'results' / 'benchmark_archs')
    parser.add_argument('--overwrite', action='store_true')
    harness.add_machine_argument(parser, 'not stated')
    parser.add_argument('--case', nargs=2, metavar=('ARCH', 'SIZE'), help=argparse.SUPPRESS)
    parser.add_argument('--case-budget', default='', help=argparse.SUPPRESS)
    return parser


def run(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.case_budget, args.seed)))
        return 0
    sizes = [128] if args.quick else args.sizes
    if any(s < 16 or s % 4 for s in sizes):
        parser.error(f'--sizes must be multiples of 4, at least 16, got {sizes}')
    budgets = {}
    for item in args.budget:
        arch, _, value = item.partition('=')
        if arch not in ARCHS or not value:
            parser.error(f'--budget {item}: expected ARCH=BUDGET with ARCH one of {sorted(ARCHS)}')
        budgets[arch] = value
    harness.refuse_existing(args.out, args.overwrite, 'or choose --out')
    rows = []
    for size in sizes:
        for arch in args.archs:
            rows.append(child(arch, size, budgets.get(arch, args.max_memory), args))
            print(f"{arch} {size}: {rows[-1]['status']} {fmt(rows[-1].get('wall_s'), '.1f')} s, "
                  f"{fmt(rows[-1].get('peak_rss_gib'))} GiB", flush=True)
    header = (f'# RefSR architectures on the CPU\n\n`{harness.command_line()}`; machine: {args.machine}; '
              f'torch {torch.__version__}, {torch.get_num_threads()} threads. {harness.IDLE_NOTE}')
    print(write_outputs(rows, args.out, header))
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
