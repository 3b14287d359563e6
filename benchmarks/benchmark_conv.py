"""This CPU's 3x3 convolution throughput, and the share of it that EXTRACTER's main network reaches.

1. Convolution throughput: ``F.conv2d`` 3x3, stride 1, padding 1, float32, batch 1, at the main network's shapes
   (64 -> 64 channels by default; ``--shapes 64:64 128:64 ...``) and spatial sizes (by default the three scales of
   the main network for ``--tile``: the LR tile, x2 and x4), in NCHW and channels-last layouts (``--formats``).
   GFLOP/s = 2 Cin Cout k^2 H W / seconds, best of ``--repeats``.
2. The main network (CSFI main network + GDE, i.e. everything after the transfer) of EXTRACTER at the released size
   (blocks 8+16+8+4 / 8+9+9+9, 64 features, top-k 2, random weights, window 6 / stride 2 / padding 2) on one LR tile
   of ``--tile`` pixels with random soft attention and textures of the right shapes, through
   ``RefSRNet.reconstruct`` (what inference runs), in each layout: its convolutions' FLOPs counted analytically
   (every ``nn.Conv2d``, 2 Cin/groups Cout kh kw Hout Wout), the CPU time inside them (forward hooks) and in total.
   ``achieved`` = conv FLOPs / total time; ``fraction`` = achieved / the 64 -> 64 throughput at the network's
   three sizes (FLOP-weighted: the time the network's convolutions would take at that rate), best layout.

Clock: ``--clock process`` (``time.process_time``: CPU time of this process, meaningful on a shared machine with
one thread) or ``wall`` (``time.perf_counter``); ``auto`` (default) is process time with one thread and wall time
with more (process time would sum the threads). On a shared machine measure with ``--threads 1``; on an idle one
``--threads 2`` gives what a 2-core run gets.

Examples (from the repository root)::

    OMP_NUM_THREADS=1 python -m benchmarks.benchmark_conv --threads 1       # shared machine: CPU time, one core
    python -m benchmarks.benchmark_conv --threads 2 --clock wall            # idle machine, both cores
    python -m benchmarks.benchmark_conv --tile 64 --shapes 64:64 128:64 192:64 320:64 --sizes 64 128 256
"""

import sys
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import add_timing_arguments, best_time, clock_name, make_clock, markdown_table
from extracter.tools.measure import conv_flops
from extracter.utils.cli import ArgumentParser, run_main

FORMATS = {'nchw': torch.contiguous_format, 'channels_last': torch.channels_last}


def conv_rate(cin: int, cout: int, size: int, fmt: str, clock, repeats: int, min_seconds: float) -> float:
    """GFLOP/s of a 3x3 stride-1 convolution ``cin -> cout`` on a ``size`` x ``size`` map (batch 1, float32)."""
    x = torch.randn(1, cin, size, size).contiguous(memory_format=FORMATS[fmt])
    w = torch.randn(cout, cin, 3, 3).contiguous(memory_format=FORMATS[fmt])
    b = torch.randn(cout)
    seconds = best_time(lambda: F.conv2d(x, w, b, padding=1), clock, repeats, min_seconds)
    return 2 * cin * cout * 9 * size * size / seconds / 1e9


def build_main_inputs(tile: int, top_k: int, stride: int, window: int, padding: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    gh = (tile + 2 * padding - window) // stride + 1
    lr = torch.rand(1, 3, tile, tile, generator=g)

    def maps():
        return ([torch.rand(1, 1, gh, gh, generator=g) for _ in range(top_k)],
                [torch.rand(1, 256, tile, tile, generator=g) for _ in range(top_k)],
                [torch.rand(1, 128, 2 * tile, 2 * tile, generator=g) for _ in range(top_k)],
                [torch.rand(1, 64, 4 * tile, 4 * tile, generator=g) for _ in range(top_k)])
    return lr, maps


def profile_main_network(net, tile: int, fmt: str, clock, repeats: int, seed: int) -> Dict[str, float]:
    """CPU/wall time of ``net.reconstruct`` on one tile in layout ``fmt``: total, inside convolutions, FLOPs."""
    st = net.search_transfer
    lr, maps = build_main_inputs(tile, st.top_k, st.stride, st.window, st.padding, seed)
    convs = [m for name, m in net.named_modules()
             if isinstance(m, nn.Conv2d) and not name.startswith(net.descriptor.feature_extractor)]
    state = {'flops': 0, 'conv_s': 0.0, 't0': 0.0, 'by_size': {}}

    def pre(module, inputs):
        state['t0'] = clock()

    def post(module, inputs, out):
        state['conv_s'] += clock() - state['t0']
        flops = conv_flops(module, out)
        state['flops'] += flops
        size = out.shape[-1]
        state['by_size'][size] = state['by_size'].get(size, 0) + flops

    handles = [h for m in convs for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        best = None
        small_lr, small_maps = build_main_inputs(16, st.top_k, st.stride, st.window, st.padding, seed)
        net.reconstruct(small_lr, *small_maps(), memory_format=FORMATS[fmt])  # warm-up (allocator, thread pool)
        for _ in range(repeats):
            inputs = maps()
            state.update(flops=0, conv_s=0.0, by_size={})
            t = clock()
            net.reconstruct(lr, *inputs, memory_format=FORMATS[fmt])
            total = clock() - t
            if best is None or total < best['total_s']:
                best = {'total_s': total, 'conv_s': state['conv_s'], 'flops': state['flops'],
                        'by_size': dict(state['by_size'])}
    finally:
        for h in handles:
            h.remove()
    return best


def parse_shape(text: str) -> Tuple[int, int]:
    try:
        cin, cout = (int(v) for v in text.split(':'))
    except ValueError as err:
        raise ValueError(f'--shapes: expected CIN:COUT such as 64:64, got {text!r}') from err
    if cin < 1 or cout < 1:
        raise ValueError(f'--shapes: channels must be positive, got {text!r}')
    return cin, cout


def run(argv) -> None:
    parser = ArgumentParser(description=__doc__.split('\n')[0])
    add_timing_arguments(parser, threads_help='torch threads (default 1)')
    parser.add_argument('--tile', type=int, default=136,
                        help='LR tile side of the main-network run, pixels (default 136: the 2048 run with 6G, '
                             'tiles of 104 + 2 x 16)')
    parser.add_argument('--sizes', type=int, nargs='+', default=None,
                        help='spatial sides of the conv table (default: tile, 2 x tile, 4 x tile)')
    parser.add_argument('--shapes', nargs='+', default=['64:64'], help='CIN:COUT pairs of the conv table')
    parser.add_argument('--formats', nargs='+', choices=sorted(FORMATS), default=['nchw', 'channels_last'])
    parser.add_argument('--repeats', type=int, default=3, help='rounds of each conv measurement (best kept)')
    parser.add_argument('--network-repeats', type=int, default=1, help='main-network runs per layout (best kept)')
    parser.add_argument('--min-seconds', type=float, default=0.5, help='per round of a conv measurement')
    parser.add_argument('--skip-network', action='store_true', help='only the conv table')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads < 1:
        raise ValueError(f'--threads must be >= 1, got {args.threads}')
    if args.tile < 8 or args.tile % 2:
        raise ValueError(f'--tile must be an even number of LR pixels >= 8 (the stride is 2), got {args.tile}')
    if args.repeats < 1 or args.network_repeats < 1:
        raise ValueError(f'--repeats and --network-repeats must be >= 1, got {args.repeats}, {args.network_repeats}')
    if not args.min_seconds >= 0:
        raise ValueError(f'--min-seconds must be >= 0 (0: one call per round), got {args.min_seconds:g}')
    shapes = [parse_shape(s) for s in args.shapes]
    sizes = args.sizes or [args.tile, 2 * args.tile, 4 * args.tile]
    if min(sizes) < 1:
        raise ValueError(f'--sizes must be positive, got {sizes}')
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    clock, label = make_clock(args.clock, args.threads), clock_name(args.clock, args.threads)
    print(f'torch {torch.__version__}, {args.threads} thread(s), {label} time, float32, batch 1\n', flush=True)

    rates: Dict[Tuple[int, int, int, str], float] = {}
    rows = []
    for cin, cout in shapes:
        for size in sizes:
            row = [f'{cin} -> {cout}', f'{size} x {size}']
            for fmt in args.formats:
                rates[cin, cout, size, fmt] = conv_rate(cin, cout, size, fmt, clock, args.repeats, args.min_seconds)
                row.append(f'{rates[cin, cout, size, fmt]:.1f}')
            rows.append(row)
            print(' '.join(row), flush=True)
    print('\n3x3 convolution throughput, GFLOP/s\n')
    print(markdown_table(['channels', 'size'] + args.formats, rows))
    if args.skip_network:
        return

    from extracter.archs.extracter_arch import Extracter
    torch.manual_seed(args.seed)
    net = Extracter(dfe_init='random', window=6, stride=2, padding=2).eval()
    t = args.tile
    level_sizes = {4 * t: '4x', 2 * t: '2x', t: '1x'}
    have = all((64, 64, s, f) in rates for s in level_sizes for f in args.formats)
    rows = []
    for fmt in args.formats:
        res = profile_main_network(net, t, fmt, clock, args.network_repeats, args.seed)
        achieved = res['flops'] / res['total_s'] / 1e9
        row = [fmt, f"{res['flops'] / 1e9:.1f}", f"{res['total_s']:.2f}", f"{res['conv_s'] / res['total_s']:.0%}",
               f"{res['flops'] / res['conv_s'] / 1e9:.1f}", f'{achieved:.1f}']
        if have:  # the time the network's convolutions would take at the measured 64 -> 64 rate, best layout
            ref_s = sum(fl / max(rates[64, 64, lv, f] for f in args.formats) / 1e9
                        for lv, fl in res['by_size'].items() if lv in level_sizes)
            ref_flops = sum(fl for lv, fl in res['by_size'].items() if lv in level_sizes)
            peak = ref_flops / ref_s / 1e9
            row += [f'{peak:.1f}', f'{achieved / peak:.0%}']
        rows.append(row)
        print(' '.join(row), flush=True)
    header = ['layout', 'conv GFLOP', f'{label} s', 'in convs', 'conv-only GFLOP/s', 'achieved GFLOP/s']
    if have:
        header += ['64->64 throughput GFLOP/s', 'fraction']
    print(f'\nEXTRACTER main network (released size, random weights), one {t} x {t} LR tile '
          f'({4 * t} x {4 * t} output), {label} time\n')
    print(markdown_table(header, rows))
    if not have:
        print('\n(fraction: needs the 64:64 shape measured at the tile, 2 x tile and 4 x tile sizes)')


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
