"""Super-resolve your own photos (x4) with the help of high-resolution reference pictures.

    python extracter/infer.py --weights W.pth --lr LR.png --ref REF.png [--ref REF2.png ...] -o OUT_DIR
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref-dir REF_DIR -o OUT_DIR   # matched by file name
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref REF.png -o OUT_DIR       # one reference for all
    torchrun --nproc_per_node=2 extracter/infer.py ... -o OUT_DIR   # a folder shared between processes
    python extracter/infer.py --weights W.pth --lr LR.png --self-ref -o OUT_DIR     # no reference: the LR's own
    python extracter/infer.py --weights DRCT.pth --lr LR.png -o OUT_DIR             # single-image SR (DRCT)

The network options come from the YAML beside the weights (``W.yml``, as ``scripts/convert_official.py`` and the
demo model have them; key ``network_g``) or from ``--opt`` (any YAML with a ``network_g`` block, e.g. a training
options file). For every input ``x`` it writes ``x_sr.png``, ``x_bicubic.png`` and ``x_compare.png`` (bicubic | SR
| reference), and with ``--texture-map`` ``x_texture.png`` (where the textures came from). Existing outputs are never
replaced unless ``--overwrite``; ``--skip-existing`` finishes an interrupted folder. Several ``--ref`` (or a
sub-folder ``REF_DIR/x/``) search the union of all the references' patches (our extension), with tiles and memory
budgets like one reference. A single-image network (DRCT) takes no reference; its options may also be read off its
weights (an original DRCT checkpoint needs no YAML). This file is a thin command line over :mod:`extracter.inference`.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ''):  # run as a script: make the package importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from extracter.data.image_io import ImageReadError  # noqa: E402
from extracter.data.inference_dataset import RefSRInferenceDataset  # noqa: E402
from extracter.inference.engine import search_settings  # noqa: E402
from extracter.inference.folder import infer_folder  # noqa: E402
from extracter.inference.memory_plan import MemoryBudgetError  # noqa: E402
from extracter.inference.network import NetworkLoadError, load_network  # noqa: E402
from extracter.inference.options import InferenceOptions, SearchOptions  # noqa: E402


class InferenceError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True, help='BasicSR checkpoint ({"params": ...}) or a state dict')
    parser.add_argument('--opt', default=None, help='YAML with network_g (default: the weights path with .yml)')
    parser.add_argument('--lr', required=True, help='an LR image or a folder of LR images')
    parser.add_argument('--ref', action='append', default=None, help='reference image (repeat for several)')
    parser.add_argument('--ref-dir', default=None, help='references matched by file name (or sub-folder per image)')
    parser.add_argument('--self-ref', action='store_true',
                        help='no reference: the upsampled LR is its own reference (the self-reference protocol)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N' (under torchrun: cuda:LOCAL_RANK)")
    parser.add_argument('--tile', type=int, default=None, help='tile size in LR pixels (bounded memory)')
    parser.add_argument('--tile-pad', type=int, default=16, help='tile overlap in LR pixels')
    parser.add_argument('--max-memory', default=None, help="working-memory budget, e.g. '6G' (picks chunks/tiles)")
    parser.add_argument('--search', default=None, choices=('dense', 'chunked'),
                        help='search implementation (default: the network\'s own; chunked under --max-memory)')
    parser.add_argument('--search-geometry', type=int, nargs=3, default=None, metavar=('WINDOW', 'STRIDE', 'PAD'),
                        help='EXTRACTER: search geometry for this run, e.g. 12 4 4 for large images')
    parser.add_argument('--param-key', default=None, help="checkpoint key (default: params_ema, else params)")
    parser.add_argument('--texture-map', action='store_true', help='also write where the textures came from')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    parser.add_argument('--skip-existing', action='store_true',
                        help='skip inputs whose outputs all exist (finish an interrupted folder)')
    return parser


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The same :class:`InferenceOptions` as the ``val`` section of option files, from the flags."""
    geometry = tuple(args.search_geometry) if args.search_geometry else None
    return InferenceOptions(tile_size=args.tile, tile_pad=args.tile_pad if args.tile is not None else None,
                            max_memory=args.max_memory, search=SearchOptions(mode=args.search, geometry=geometry))


def single_image_options(args: argparse.Namespace, arch: str) -> Dict[str, Any]:
    """The inference dataset's options for a single-image network; reference and search flags are errors."""
    given = [flag for flag, on in (('--ref', args.ref), ('--ref-dir', args.ref_dir), ('--self-ref', args.self_ref),
                                   ('--texture-map', args.texture_map), ('--max-memory', args.max_memory),
                                   ('--search', args.search), ('--search-geometry', args.search_geometry)) if on]
    if given:
        raise InferenceError(f'{arch} is a single-image network: it takes no reference and has no search; leave out '
                             f'{", ".join(given)}')
    return {'dataroot_lq': args.lr, 'lq_multiple': 1, 'ref_mode': 'none'}  # the engine pads to the window


def dataset_options(args: argparse.Namespace, stride: int) -> Dict[str, Any]:
    if args.self_ref:
        if args.ref or args.ref_dir:
            raise InferenceError('--self-ref uses no reference image: leave out --ref / --ref-dir')
        return {'dataroot_lq': args.lr, 'stride': stride, 'ref_mode': 'self'}
    if not args.ref and not args.ref_dir:
        raise InferenceError('this is a reference-based network: give a reference with --ref REF.png (or --ref-dir '
                             'DIR); without one, pass --self-ref (the upsampled LR as its own reference, the '
                             'protocol for sets without references) or use a single-image model (--weights DRCT.pth)')
    if args.ref and args.ref_dir:
        raise InferenceError('give references with --ref (one or several) or --ref-dir, not both')
    data_opt: Dict[str, Any] = {'dataroot_lq': args.lr, 'stride': stride}
    if args.ref_dir:
        data_opt['dataroot_ref'] = args.ref_dir
    elif len(args.ref) == 1:
        data_opt['ref_path'] = args.ref[0]
    else:
        if not os.path.isfile(args.lr):
            raise InferenceError('several --ref work with one --lr image; for folders use --ref-dir with a '
                                 'sub-folder of references per image')
        data_opt['refs'] = {os.path.basename(args.lr): list(args.ref)}
    return data_opt


def distributed_env() -> tuple:
    """(rank, world size, local rank) under torchrun (its environment variables), else (0, 1, 0)."""
    return (int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)),
            int(os.environ.get('LOCAL_RANK', 0)))


def run(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Path]]:
    args = build_parser().parse_args(argv)
    rank, world, local_rank = distributed_env()
    device = args.device
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise InferenceError(f'--device {device}: CUDA is not available here')
        if world > 1 and device == 'cuda':
            device = f'cuda:{local_rank}'
    options = inference_options(args)
    net = load_network(args.weights, args.opt, device, args.param_key)
    if not getattr(net, 'uses_reference', True):
        dataset = RefSRInferenceDataset(single_image_options(args, type(net).__name__))
    else:
        with search_settings(net, geometry=options.search.geometry):  # checked now (TTSR refuses); applies per run
            stride = net.size_multiples()[0]
        dataset = RefSRInferenceDataset(dataset_options(args, stride))
    barrier = None
    if world > 1:  # every process checks all outputs before any writes one
        import torch.distributed as dist

        dist.init_process_group('gloo')
        barrier = dist.barrier
    bar = tqdm(total=len(range(rank, len(dataset), world)), desc='images', unit='img', disable=rank != 0)
    try:
        report = infer_folder(net, dataset, Path(args.output), options.run_kwargs(), device, args.texture_map,
                              args.overwrite, args.skip_existing, rank, world, after_plan=barrier,
                              on_image=lambda done, total, name: (bar.update(1), bar.set_postfix_str(name)))
    finally:
        bar.close()
        if world > 1:
            dist.destroy_process_group()
    if report.skipped:
        print(f'skipped {len(report.skipped)} input(s) whose outputs exist')
    return report.written


def main() -> None:
    try:
        written = run()
    except (InferenceError, NetworkLoadError, FileNotFoundError, FileExistsError, ImageReadError, MemoryBudgetError,
            ValueError) as err:
        raise SystemExit(f'error: {err}') from err
    print(f'wrote {sum(len(p) for p in written)} files for {len(written)} image(s)')


if __name__ == '__main__':
    main()
