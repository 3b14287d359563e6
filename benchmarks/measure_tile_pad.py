"""How much tile padding each architecture needs: PSNR of the tiled output against the untiled one, per tile pad.

Tiled inference keeps only each tile's own area of the output; the padding (``tile_pad``, LR pixels of context on
every side) must cover the part of the main network's receptive field that still changes the result, or the tile
borders show. This script measures it on a real image pair (``../shared/data/refsr-pairs/ttsr-demo``: an LR crop and
a reference crop) for the released sizes of EXTRACTER, TTSR and DRCT (random weights, seeded) and, where present,
the CPU demo model (trained weights); C2-Matching's released size with PyTorch's default initialisation (see
:func:`build`). Pads are rounded up to the network's LR multiple, as the engine does. The
floor each architecture states (``min_tile_pad``) is the smallest pad measured here at which the largest difference
between the tiled and the untiled result is below 5e-4 (an eighth of an 8-bit level: the saved 8-bit pictures are
then (almost) identical); see docs/large_images.md.

    python -m benchmarks.measure_tile_pad                       # prints the Markdown table
    python -m benchmarks.measure_tile_pad --arch Extracter --pads 0 2 4 8 -o pads.md
"""

import argparse
import math
import sys
import time
from typing import Dict, List, Sequence, Tuple

import torch

from benchmarks.harness import DEMO_WEIGHTS, SHARED_DATA, markdown_table
from extracter.archs.descriptor import descriptor_of
from extracter.data import degradations as deg
from extracter.data.image_io import read_image
from extracter.inference.network import load_network
from extracter.inference.tiling import round_tile, tile_loop, tiled_forward
from extracter.registry import ARCH_REGISTRY
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write_text, refuse_overwrite

PAIR = SHARED_DATA / 'refsr-pairs' / 'ttsr-demo'
DEMO = DEMO_WEIGHTS
DRCT_RELEASED = dict(upscale=4, in_chans=3, img_size=64, window_size=16, img_range=1.0, embed_dim=180,
                     depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv')
CONFIGS = {
    'Extracter': ('Extracter', dict(num_res_blocks='8+16+8+4', num_grad_blocks='8+9+9+9', top_k=2, window=6, stride=2,
                                    padding=2, dfe_init='random')),
    'TTSR': ('TTSR', dict(lte_init='random')),
    'DRCT': ('DRCT', DRCT_RELEASED),
    'C2Matching': ('C2Matching', dict(vgg_init='random')),
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float('inf') if mse == 0 else 10 * math.log10(1.0 / mse)


def build(name: str) -> torch.nn.Module:
    if name == 'demo':
        if not DEMO.is_file():
            raise FileNotFoundError(f'{DEMO}: the demo model is not there (see README, "Demo model")')
        return load_network(str(DEMO))
    arch, kwargs = CONFIGS[name]
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(arch)(**kwargs).eval()
    if arch == 'C2Matching':
        # the original's initialisation (N(0, 0.02), zero offset convolutions) leaves a residual so small that any
        # pad would look enough: PyTorch's default initialisation of every restoration convolution instead (the
        # learned offsets then move the samples too, as trained weights do)
        for m in net.restoration.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.reset_parameters()
    return net


def measure(name: str, pads: Sequence[int], lr_side: int, tile: int) -> List[Dict[str, object]]:
    """Rows (architecture, pad as given, pad used, PSNR, largest difference) for one architecture. The tiles run
    through the engine's own tile loop (:func:`tiled_forward`, :func:`tile_loop`) with exactly the pad asked for
    (``run_refsr``/``run_sisr`` would raise a pad below the network's floor)."""
    net = build(name)
    multiple = net.size_multiples()[0]
    side = lr_side // max(multiple, 1) * max(multiple, 1)
    lr_img = read_image(PAIR / 'lr.png')[:side, :side]
    lr = deg.to_tensor(lr_img)[None]
    with torch.no_grad():
        if descriptor_of(net).uses_reference:
            ref_img = read_image(PAIR / 'ref.png')[:4 * side, :4 * side]
            lr_up = deg.to_tensor(deg.make_lq_up(lr_img))[None]
            ref_du = deg.to_tensor(deg.make_ref_downup(ref_img))[None]
            encoded = net.encode_reference(deg.to_tensor(ref_img)[None], ref_du)
            untiled = net.forward_features(lr, lr_up, encoded)

            def run(pad: int) -> torch.Tensor:
                return tiled_forward(net, lr, lr_up, encoded, tile, pad)
        else:
            untiled = net(lr)
            scale = net.scale_of()

            def run(pad: int) -> torch.Tensor:
                return tile_loop(lr, scale, tile, pad, multiple, lambda y0, y1, x0, x1: net(lr[:, :, y0:y1, x0:x1]))
        rows = []
        for pad in pads:
            used = round_tile(tile, pad, multiple)[1]
            t0 = time.time()
            tiled = run(pad)
            rows.append({'arch': name, 'pad': pad, 'used': used, 'psnr': psnr(tiled, untiled),
                         'max_diff': float((tiled - untiled).abs().max()), 'seconds': time.time() - t0})
            print(f'{name} pad {pad} (used {used}): {rows[-1]["psnr"]:.1f} dB, max diff {rows[-1]["max_diff"]:.1e}',
                  file=sys.stderr, flush=True)
    return rows


def table(rows: List[Dict[str, object]], lr_side: int, tile: int) -> str:
    lines = [f'LR {lr_side}x{lr_side} (tiles of {tile} LR pixels), reference {4 * lr_side}x{4 * lr_side}; PSNR of '
             'the tiled SR against the untiled SR (float outputs in [0, 1]).', '',
             markdown_table(['architecture', 'tile_pad', 'pad used', 'PSNR vs untiled (dB)', 'largest difference'],
                            [[r['arch'], str(r['pad']), str(r['used']), f"{r['psnr']:.1f}", f"{r['max_diff']:.1e}"]
                             for r in rows], 'lrrrr')]
    return '\n'.join(lines) + '\n'


def run(argv: List[str]) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', nargs='+', default=['Extracter', 'TTSR', 'DRCT', 'demo'],
                        choices=list(CONFIGS) + ['demo'])
    parser.add_argument('--pads', type=int, nargs='+', default=[0, 2, 4, 6, 8, 12, 16, 24, 32])
    parser.add_argument('--lr-side', type=int, default=64, help='side of the LR crop (LR pixels)')
    parser.add_argument('--tile', type=int, default=32, help='tile size (LR pixels)')
    parser.add_argument('-o', '--output', default=None, help='also write the table to this Markdown file')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    if any(p < 0 for p in args.pads) or args.tile < 1 or args.lr_side < args.tile:
        raise ValueError('--pads must be >= 0, --tile >= 1 and --lr-side >= --tile')
    if not PAIR.is_dir():
        raise FileNotFoundError(f'{PAIR}: the real image pair is missing (../shared/data, see its README)')
    if args.output:
        refuse_overwrite(args.output, args.overwrite)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: List[Dict[str, object]] = []
    for name in args.arch:
        rows += measure(name, args.pads, args.lr_side, args.tile)
    text = table(rows, args.lr_side, args.tile)
    print(text)
    if args.output:
        atomic_write_text(args.output, text)
    return 0


def floors(rows: List[Dict[str, object]], threshold_db: float = 60.0) -> Dict[str, Tuple[int, float]]:
    """The smallest pad used whose PSNR reaches ``threshold_db``, per architecture (for the docs)."""
    out: Dict[str, Tuple[int, float]] = {}
    for r in sorted(rows, key=lambda r: (r['arch'], r['used'])):
        if r['psnr'] >= threshold_db and r['arch'] not in out:
            out[r['arch']] = (r['used'], r['psnr'])
    return out


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
