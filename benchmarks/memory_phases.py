"""Peak memory of one RefSR inference by phase, beside the memory planner's estimate: how the planner is calibrated.

Each case runs ``run_refsr`` once in its own subprocess (released size, random weights; the DCSR wide/tele pair's
centre crops as ``benchmark_archs``, seeded noise without ``../shared/data``) while a thread samples, every 2 ms,
the process's RSS and glibc's memory in use (``mallinfo2``: what is allocated, without what glibc keeps of freed
blocks), both above what the process held before the call (the runtime, the weights and the inputs). The phases
are the engine's ``stage`` callbacks (encoding the reference's search keys, the search, the textures, the main
network: untiled or its first tile, then the other tiles). ``--max-memory`` plans the run (the plan's per-phase
estimates are printed beside the measured peaks); ``--tile``/``--tile-pad`` fix the tiles (C2-Matching's
``--key-chunk``: its correlation blocks). What ``max_memory`` bounds is the RSS column.

    python -m benchmarks.memory_phases --arch C2Matching --sizes 512 768 --machine "idle 2-core machine"
    python -m benchmarks.memory_phases --arch C2Matching --sizes 1024 --max-memory 2G -o phases.md
"""

import argparse
import ctypes
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from benchmarks import harness
from benchmarks.benchmark_archs import ARCHS
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write_text

GIB = 2 ** 30
# the planner's part for each phase (own search: memory_plan.own_search_estimate; EXTRACTER/TTSR: estimate)
PLAN_PART = {'encoding reference': 'keys_peak', 'search': 'search_peak', 'textures': 'encode_peak',
             'main network': ('main_peak', 'run_peak'), 'other tiles': ('main_peak', 'run_peak')}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                      'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


def _in_use():
    """glibc's bytes in use (heap + mapped blocks), or a function returning None where glibc has no mallinfo2."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return lambda: None

    def read() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd
    return read


def run_case(arch: str, size: int, budget: str, tile: Optional[int], tile_pad: int, key_chunk: Optional[int],
             seed: int) -> dict:
    """One inference in this (child) process: peaks by phase (bytes above the start)."""
    from extracter.archs.descriptor import descriptor_of
    from extracter.inference.engine import run_refsr
    from extracter.inference.memory_plan import own_search_estimate
    from extracter.registry import ARCH_REGISTRY

    torch.set_grad_enabled(False)
    torch.manual_seed(seed)
    net = ARCH_REGISTRY.get(arch)(**ARCHS[arch]).eval()
    lr, ref, source = harness.load_inputs(size, seed)
    in_use = _in_use()
    rss0, use0 = harness.rss_bytes(), in_use()
    phase, rss_peak, use_peak, done = ['start'], {}, {}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            name, rss, use = phase[0], harness.rss_bytes() - rss0, in_use()
            rss_peak[name] = max(rss_peak.get(name, 0), rss)
            if use is not None:
                use_peak[name] = max(use_peak.get(name, 0), use - use0)
            time.sleep(0.002)

    def stage(text: str) -> None:
        phase[0] = text.split(' 1/')[0] if text.startswith('encoding') else text

    def progress(done_tiles: int, total: int) -> None:
        phase[0] = 'other tiles'

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    sr, plan = run_refsr(net, lr, ref, max_memory=budget or None, return_plan=True, stage=stage,
                         progress=progress, tile=None if tile is None else {'tile_size': tile, 'tile_pad': tile_pad},
                         key_chunk_size=key_chunk)
    wall = time.perf_counter() - t0
    done.set()
    thread.join()
    parts = None if plan is None else dict(plan.parts)
    if parts is None and descriptor_of(net).own_search:
        block = key_chunk or net.default_search_spec.key_chunk_size
        parts = own_search_estimate(net, tuple(lr.shape[-2:]), tuple(ref.shape[-2:]), block,
                                    None if tile is None else (tile, tile_pad))
    if parts is not None and descriptor_of(net).own_search:  # its phases' estimates with what every phase adds
        parts = {k: v + parts['fixed'] if k.endswith('_peak') else v for k, v in parts.items()}
    return {'arch': arch, 'size': size, 'budget': budget, 'wall_s': wall, 'source': source,
            'plan': 'untiled, no budget' if plan is None else plan.describe(),
            'rss': rss_peak, 'in_use': use_peak, 'parts': parts}


def estimate_of(parts: Optional[Dict[str, int]], name: str) -> Optional[int]:
    if parts is None or name not in PLAN_PART:
        return None
    keys = PLAN_PART[name] if isinstance(PLAN_PART[name], tuple) else (PLAN_PART[name],)
    return next((parts[k] for k in keys if k in parts), None)


def gib(v: Optional[float]) -> str:
    return '' if v is None else f'{v / GIB:.2f}'


def table(results: List[dict]) -> str:
    rows = []
    for r in results:
        for name, rss in r['rss'].items():
            if name == 'start':
                continue
            rows.append([r['arch'], str(r['size']), r['budget'] or 'none', name, gib(rss), gib(r['in_use'].get(name)),
                         gib(estimate_of(r['parts'], name))])
    body = harness.markdown_table(['architecture', 'output px', 'budget', 'phase', 'peak RSS above start (GiB)',
                                   'glibc in use (GiB)', "planner's estimate (GiB)"], rows, 'llllrrr')
    plans = '\n'.join(f"- {r['arch']} {r['size']} px, budget {r['budget'] or 'none'}: {r['wall_s']:.1f} s; "
                      f"{r['plan']}" for r in results)
    return f'{body}\n\n{plans}\n'


def run(argv) -> int:
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', choices=sorted(ARCHS), default='C2Matching')
    parser.add_argument('--sizes', type=int, nargs='+', default=[512], help='output sides (multiples of 4)')
    parser.add_argument('--max-memory', default='', help='plan each case for this working-memory budget')
    parser.add_argument('--tile', type=int, default=None, help='tile size (LR pixels), instead of a plan')
    parser.add_argument('--tile-pad', type=int, default=16)
    parser.add_argument('--key-chunk', type=int, default=None, help="C2-Matching's correlation block")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('-o', '--output', type=Path, default=None, help='also write the table to this Markdown file')
    parser.add_argument('--overwrite', action='store_true')
    harness.add_machine_argument(parser, 'not stated')
    parser.add_argument('--case', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_memory:
        harness.check_memory(parser, '--max-memory', args.max_memory)
    harness.check_at_least(parser, ('--sizes', args.sizes, 16), ('--tile-pad', args.tile_pad, 0),
                           *((('--tile', args.tile, 1),) if args.tile is not None else ()),
                           *((('--key-chunk', args.key_chunk, 1),) if args.key_chunk is not None else ()))
    if any(s % 4 for s in args.sizes):
        parser.error(f'--sizes must be multiples of 4, got {" ".join(map(str, args.sizes))}')
    if args.case is not None:
        print(json.dumps(run_case(args.arch, args.case, args.max_memory, args.tile, args.tile_pad, args.key_chunk,
                                  args.seed)))
        return 0
    if args.output:
        harness.refuse_existing(args.output, args.overwrite)
    results = []
    for size in args.sizes:
        cmd = harness.module_command('memory_phases', *argv, '--case', size)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=harness.subprocess_env())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ['?'])[-1][:300]
            raise RuntimeError(f'{args.arch} at {size} px failed (exit {proc.returncode}): {tail}')
        results.append(json.loads(lines[-1]))
        print(f"{args.arch} {size} px: {results[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    text = (f'`{harness.command_line()}`; machine: {args.machine}; torch {torch.__version__}, '
            f'{torch.get_num_threads()} threads; inputs: {results[0]["source"]}.\n\n{table(results)}')
    print(text)
    if args.output:
        atomic_write_text(args.output, text)
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
