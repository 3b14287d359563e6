"""Where the time of one EXTRACTER inference goes: CPU time by stage and by operation, through ``run_refsr``.

One forward pass of EXTRACTER at the released size (random weights, window 6 / stride 2 / padding 2 by default) on
a real wide/tele pair (DCSR CameraFusion centre crops, ``harness.load_inputs``, as ``benchmark_scaling``; seeded
noise without the data),
tiled (``--tile`` / ``--tile-pad``, LR pixels) or with the planner's tiles for ``--max-memory``, with ``--search``.
It reports:

- by stage: the texture extractor (VGG-19, every call: reference encoding and the LR's query features), the search,
  the transfer, the main network (``_reconstruct``: CSFI main network + GDE) and the rest (padding, stitching,
  layout conversions, Python);
- by operation (``--ops``, a ``TorchDispatchMode`` timing every ATen call): convolutions, interpolation, gathers,
  folds, matrix products, element-wise operations, copies..., per stage;
- the main network's convolution FLOPs (2 Cin/groups Cout kh kw Hout Wout, counted from the calls) and its rate:
  conv FLOPs / main-network time (compare with ``benchmarks/benchmark_conv.py``'s throughput).

Clock: process CPU time (``time.process_time``) with one thread, meaningful on a shared machine; wall time with more
threads (``--clock`` overrides). The stage hooks use only names that every version of this code base has, so the
script also profiles older checkouts: run it from outside the repository with the old checkout first, ``cd /tmp &&
PYTHONPATH=<old checkout>:<this checkout> python -m benchmarks.profile_inference``. ``--json`` writes the figures
(an existing file is kept unless ``--overwrite`` is given).

Example, from the repository root (the lead's idle machine: the same with ``--threads 2``)::

    OMP_NUM_THREADS=1 python -m benchmarks.profile_inference --size 512 --tile 64 --tile-pad 16 --ops
"""

import collections
import json
import sys
from pathlib import Path
from typing import Callable, Dict

import torch

from benchmarks.harness import (
    add_timing_arguments,
    check_at_least,
    check_geometry,
    check_memory,
    clock_name,
    load_inputs,
    make_clock,
    markdown_table,
    refuse_existing,
)
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write_text

STAGES = ('vgg', 'search', 'transfer', 'main', 'other')
CATEGORIES = [  # (category, substrings of the ATen op name), first match wins
    ('convolution', ('convolution',)),
    ('interpolate', ('upsample',)),
    ('cat', ('aten.cat',)),
    ('gather/index', ('index_select', 'gather', 'aten.index.', 'index_put', 'index_fill', 'index_copy', 'masked')),
    ('fold/unfold', ('col2im', 'im2col')),
    ('matmul', ('bmm', 'aten.mm', 'matmul', 'addmm', 'baddbmm')),
    ('pixel_shuffle', ('pixel_shuffle',)),
    ('topk/sort', ('topk', 'sort', 'searchsorted')),
    ('copy/layout', ('copy_', 'clone', 'contiguous', '_to_copy', 'constant_pad', 'reflection_pad', 'replication_pad')),
    ('fill/alloc', ('zeros', 'empty', 'fill_', 'ones')),
    ('elementwise', ('add', 'mul', 'div', 'sub', 'relu', 'clamp', 'pow', 'sqrt', 'sum', 'where', 'maximum',
                     'minimum', 'abs', 'neg', 'rsqrt', 'reciprocal', 'eq', 'lt', 'gt', 'ge', 'le', 'ne')),
]


def category(op_name: str) -> str:
    for cat, keys in CATEGORIES:
        if any(k in op_name for k in keys):
            return cat
    return 'other'


class Profile:
    """Stage and operation times; ``stage`` is the innermost stage running."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.stage = 'other'
        self.stage_t: Dict[str, float] = collections.Counter()
        self.op_t: Dict[tuple, float] = collections.Counter()
        self.main_conv_flops = 0
        self.main_conv_t = 0.0

    def wrap(self, obj, name: str, stage: str) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            outer, self.stage = self.stage, stage
            t = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = self.clock() - t
                self.stage_t[stage] += dt
                if outer != 'other':  # nested: the outer stage does not count it twice
                    self.stage_t[outer] -= dt
                self.stage = outer
        setattr(obj, name, timed)

    def dispatch_mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        prof = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                t = prof.clock()
                out = func(*args, **(kwargs or {}))
                dt = prof.clock() - t
                name = str(func)
                cat = category(name)
                prof.op_t[prof.stage, cat] += dt
                if cat == 'convolution' and prof.stage == 'main':
                    w = args[1]  # [Cout, Cin / groups, kh, kw]
                    prof.main_conv_flops += (2 * w.shape[1] * w.shape[0] * w.shape[2] * w.shape[3]
                                             * out.shape[0] * out.shape[2] * out.shape[3])
                    prof.main_conv_t += dt
                return out
        return Mode()


def run(argv) -> None:
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=512, help='output side, pixels (LR = size / 4)')
    parser.add_argument('--ref-size', type=int, default=None, help='reference side (default: --size)')
    parser.add_argument('--tile', type=int, default=None, help='LR tile size (default: untiled, or the planner)')
    parser.add_argument('--tile-pad', type=int, default=16)
    parser.add_argument('--max-memory', default=None, help='working-memory budget (the planner picks the tiles)')
    parser.add_argument('--search', choices=['chunked', 'approximate', 'auto', 'dense'], default='approximate')
    parser.add_argument('--geometry', type=int, nargs=3, default=[6, 2, 2], metavar=('WINDOW', 'STRIDE', 'PAD'))
    add_timing_arguments(parser)
    parser.add_argument('--ops', action='store_true', help='also time every ATen operation (slower)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', type=Path, default=None, help='also write the figures to this JSON file')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --json file')
    args = parser.parse_args(argv)
    if args.size < 64 or args.size % 16:
        raise ValueError(f'--size must be a multiple of 16, at least 64, got {args.size}')
    if args.ref_size is not None and (args.ref_size < 64 or args.ref_size % 16):
        raise ValueError(f'--ref-size must be a multiple of 16, at least 64, got {args.ref_size}')
    if args.threads < 1:
        raise ValueError(f'--threads must be >= 1, got {args.threads}')
    check_at_least(parser, ('--tile', args.tile if args.tile is not None else 1, 1), ('--tile-pad', args.tile_pad, 0))
    check_geometry(parser, args.geometry)
    if args.max_memory is not None:
        check_memory(parser, '--max-memory', args.max_memory)
    if args.json is not None:
        refuse_existing(args.json, args.overwrite, 'or choose another --json path')

    from extracter.archs.extracter_arch import Extracter
    from extracter.inference.engine import run_refsr

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    label = clock_name(args.clock, args.threads)
    clock = make_clock(args.clock, args.threads)
    torch.manual_seed(args.seed)
    window, stride, padding = args.geometry
    net = Extracter(dfe_init='random', window=window, stride=stride, padding=padding).eval()
    lr, ref, source = load_inputs(args.size, args.seed)
    if args.ref_size is not None and args.ref_size != args.size:
        ref = load_inputs(args.ref_size, args.seed)[1]
    kwargs = {'search_mode': args.search, 'return_aux': True}
    if args.max_memory is not None:
        kwargs['max_memory'] = args.max_memory
        if args.tile is None:
            kwargs['tile'] = {'tile_pad': args.tile_pad}
    if args.tile is not None:
        kwargs['tile'] = {'tile_size': args.tile, 'tile_pad': args.tile_pad}

    prof = Profile(clock)
    ext, st = net.feature_extractor(), net.search_transfer
    prof.wrap(ext, 'forward', 'vgg')
    prof.wrap(st, 'search', 'search')
    prof.wrap(st, 'transfer', 'transfer')
    prof.wrap(net, '_reconstruct', 'main')
    tiles = []
    kwargs['progress'] = lambda done, total: tiles.append(total)
    mode = prof.dispatch_mode() if args.ops else None
    t = clock()
    if mode is not None:
        with mode:
            res = run_refsr(net, lr, ref, **kwargs)
    else:
        res = run_refsr(net, lr, ref, **kwargs)
    total = clock() - t
    stage_t = dict(prof.stage_t)
    stage_t['other'] = total - sum(v for k, v in stage_t.items() if k != 'other')

    plan = res.plan.describe() if res.plan is not None else 'no budget'
    print(f'EXTRACTER released size, random weights, geometry {args.geometry}, output {args.size} x {args.size}, '
          f'reference {ref.shape[-1]} x {ref.shape[-2]} ({source}); {args.threads} thread(s), {label} time')
    print(f'search: {getattr(res, "search_used", "") or args.search}; plan: {plan}; tiles: {tiles[-1] if tiles else 1}'
          f'; tile: {kwargs.get("tile")}\n')
    stage_rows = [[s, f'{stage_t.get(s, 0.0):.2f}', f'{stage_t.get(s, 0.0) / total:.1%}'] for s in STAGES]
    print(markdown_table(['stage', 's', 'share'], stage_rows + [['total', f'{total:.2f}', '100%']], 'lrr'))
    out = {'args': {k: str(v) for k, v in vars(args).items()}, 'plan': plan, 'tiles': tiles[-1] if tiles else 1,
           'clock': label, 'total_s': total, 'stages_s': stage_t}
    if args.ops:
        cats = [c for c, _ in CATEGORIES] + ['other']
        print(f'\nBy operation ({label} s; a column is a stage; the time outside ATen calls is not listed)\n')
        rows = []
        for c in sorted(cats, key=lambda c: -sum(prof.op_t.get((s, c), 0.0) for s in STAGES)):
            vals = [prof.op_t.get((s, c), 0.0) for s in STAGES]
            if sum(vals) >= 1e-4:
                rows.append([c, *(f'{v:.2f}' for v in vals), f'{sum(vals):.2f}', f'{sum(vals) / total:.1%}'])
        print(markdown_table(['operation', *STAGES, 'all', 'share'], rows, 'l' + 'r' * (len(STAGES) + 2)))
        main_t = stage_t.get('main', 0.0)
        flops = prof.main_conv_flops
        conv_t = max(prof.main_conv_t, 1e-9)
        print(f'\nmain network: {flops / 1e12:.2f} TFLOP of convolutions, {main_t:.2f} s, achieved '
              f'{flops / max(main_t, 1e-9) / 1e9:.1f} GFLOP/s; inside its convolutions '
              f'{conv_t / max(main_t, 1e-9):.0%} of the time, at {flops / conv_t / 1e9:.1f} GFLOP/s')
        out.update(ops_s={f'{s}/{c}': v for (s, c), v in prof.op_t.items()}, main_conv_flops=flops,
                   main_conv_s=prof.main_conv_t)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(out, indent=1) + '\n')


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
