"""Super-resolve your own photos (x4) with the help of high-resolution reference pictures.

    python extracter/infer.py --weights W.pth --lr LR.png --ref REF.png [--ref REF2.png ...] -o OUT_DIR
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref-dir REF_DIR -o OUT_DIR   # matched by file name
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref REF.png -o OUT_DIR       # one reference for all
    torchrun --nproc_per_node=2 extracter/infer.py ... -o OUT_DIR   # a folder shared between processes
    python extracter/infer.py --weights W.pth --lr LR.png --self-ref -o OUT_DIR     # no reference: the LR's own
    python extracter/infer.py --weights DRCT.pth --lr LR.png -o OUT_DIR             # single-image SR (DRCT)
    python extracter/infer.py --weights W.pth --lr clip.mp4 --ref STILL.png -o OUT_DIR   # a video (PyAV: [video])

The network options come from the YAML beside the weights (``W.yml``, as ``scripts/convert_official.py`` and the
demo model have them; key ``network_g``) or from ``--opt`` (any YAML with a ``network_g`` block, e.g. a training
options file). For every input ``x`` it writes ``x_sr.png``, ``x_bicubic.png`` and ``x_compare.png`` (bicubic | SR
| reference), and with ``--texture-map`` ``x_texture.png`` (where the textures came from). Existing outputs are never
replaced unless ``--overwrite``; ``--skip-existing`` finishes an interrupted folder (an input whose outputs are not
all there and whole is made again). One run at a time writes into a folder: a second is refused, or waits with
``--wait`` (:mod:`extracter.utils.folder_lock`). Several ``--ref`` (or a
sub-folder ``REF_DIR/x/``) search the union of all the references' patches (our extension), with tiles and memory
budgets like one reference. A single-image network (DRCT) takes no reference; its options may also be read off its
weights (an original DRCT checkpoint needs no YAML). A video (``--lr clip.mp4``, any container PyAV reads) is
super-resolved frame by frame into ``OUT_DIR/clip_sr.mkv`` (``--video-codec``; ``--frames`` keeps the PNG frames;
``--skip-existing`` resumes at frame level; :mod:`extracter.inference.video`). This file is a thin command line over
:mod:`extracter.inference`.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ''):  # run as a script: make the package importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from extracter.utils.startup import gc_paused  # noqa: E402

with gc_paused():  # torch and the networks; never basicsr (see extracter/registry.py)
    import torch
    from tqdm import tqdm

    from extracter.archs.descriptor import descriptor_of
    from extracter.data.image_arguments import add_image_arguments, apply_image_arguments
    from extracter.data.image_io import is_image_file
    from extracter.data.inference_dataset import RefSRInferenceDataset
    from extracter.inference.folder import infer_folder
    from extracter.inference.network import load_network
    from extracter.inference.options import SEARCH_MODES, InferenceOptionError, InferenceOptions, SearchOptions
    from extracter.inference.video import (
        DEFAULT_CODEC,
        INSTALL_HINT,
        VIDEO_CODECS,
        VIDEO_EXTENSIONS,
        VideoInfo,
        file_identity,
        fixed_references,
        infer_video,
        is_video_file,
        probe_video,
    )
    from extracter.utils.cli import ArgumentParser, run_main
    from extracter.utils.file_io import check_writable
    from extracter.utils.folder_lock import add_wait_argument, command_line, folder_lock
    from extracter.utils.malloc import retain_freed_memory


class InferenceError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True, help='BasicSR checkpoint ({"params": ...}) or a state dict')
    parser.add_argument('--opt', default=None, help='YAML with network_g (default: the weights path with .yml)')
    parser.add_argument('--lr', required=True, help='an LR image, a folder of LR images, or a video clip '
                        f'({", ".join(VIDEO_EXTENSIONS[:6])}, ...; needs PyAV: {INSTALL_HINT})')
    parser.add_argument('--ref', action='append', default=None, help='reference image (repeat for several)')
    parser.add_argument('--ref-dir', default=None, help='references matched by file name (or sub-folder per image)')
    parser.add_argument('--self-ref', action='store_true',
                        help='no reference: the upsampled LR is its own reference (the self-reference protocol)')
    parser.add_argument('-o', '--output', required=True, help='output folder')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'cuda:N' (under torchrun: cuda:LOCAL_RANK)")
    parser.add_argument('--tile', type=int, default=None, help='tile size in LR pixels (bounded memory)')
    parser.add_argument('--tile-pad', type=int, default=16, help='tile overlap in LR pixels')
    parser.add_argument('--max-memory', default=None, help="working-memory budget, e.g. '6G' (picks chunks/tiles)")
    parser.add_argument('--release-memory', action='store_true',
                        help='return freed memory to the system at once (glibc\'s default; implied by --max-memory). '
                             'By default the command line keeps it for reuse: ~10%% faster on CPU, peak RSS ~15%% '
                             'higher')
    parser.add_argument('--search', default='auto', choices=SEARCH_MODES,
                        help='texture search: dense or chunked (exact), approximate (large images: sub-quadratic, '
                             'exact relevances of the chosen patches), or auto (default: approximate where the '
                             'exact search is expensive, else the network\'s own, chunked under --max-memory)')
    parser.add_argument('--search-geometry', type=int, nargs=3, default=None, metavar=('WINDOW', 'STRIDE', 'PAD'),
                        help='EXTRACTER: search geometry for this run, e.g. 12 4 4 for large images')
    parser.add_argument('--param-key', default=None, help="checkpoint key (default: params_ema, else params)")
    parser.add_argument('--texture-map', action='store_true', help='also write where the textures came from')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    parser.add_argument('--skip-existing', action='store_true',
                        help='skip inputs whose outputs all exist and are whole PNGs; make the others again '
                             '(finish an interrupted folder)')
    parser.add_argument('--frames', action='store_true',
                        help='video: also keep the SR frames as PNGs (OUT/<clip>_sr_frames/)')
    parser.add_argument('--video-codec', default=DEFAULT_CODEC, choices=list(VIDEO_CODECS),
                        help='video: ' + '; '.join(f'{k}: {c.description}' for k, c in VIDEO_CODECS.items())
                             + f' (default {DEFAULT_CODEC})')
    add_wait_argument(parser, 'the output folder')
    add_image_arguments(parser)
    return parser


# the flag of each InferenceOptions key (its errors start with the key)
FLAGS = {'tile.tile_size': '--tile', 'tile.tile_pad': '--tile-pad', 'max_memory': '--max-memory',
         'search.stride': '--search-geometry', 'search.padding': '--search-geometry',
         'search geometry': '--search-geometry'}


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The same :class:`InferenceOptions` as the ``val`` section of option files, from the flags (errors name the
    flag)."""
    geometry = tuple(args.search_geometry) if args.search_geometry else None
    try:
        return InferenceOptions(tile_size=args.tile, tile_pad=args.tile_pad if args.tile is not None else None,
                                max_memory=args.max_memory, search=SearchOptions(mode=args.search, geometry=geometry))
    except InferenceOptionError as err:
        msg = str(err)
        key = next((k for k in FLAGS if msg.startswith(k)), None)
        if key is None:
            raise InferenceError(msg) from None
        # the flag instead of the key, named once: 'max_memory must look like ...' -> '--max-memory: must look like ...'
        raise InferenceError(f'{FLAGS[key]}: {msg[len(key):].lstrip(" :")}') from None


def select_device(name: str, world: int = 1, local_rank: int = 0) -> str:
    """``--device``: 'cpu', 'cuda' or 'cuda:N', checked against what this machine has (under torchrun, 'cuda' means
    cuda:LOCAL_RANK)."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InferenceError(f"--device {name!r} is not a device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == 'cpu':
        return name
    if dev.type != 'cuda':
        raise InferenceError(f"--device {name!r}: only 'cpu' and 'cuda' (or 'cuda:N') are supported")
    if not torch.cuda.is_available():
        raise InferenceError(f'--device {name}: CUDA is not available here; use --device cpu')
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise InferenceError(f'--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}')
    return f'cuda:{local_rank}' if world > 1 and dev.index is None else name


def check_paths(args: argparse.Namespace) -> None:
    """The input and output paths, with messages that say which flag is wrong and how (before anything is loaded)."""
    if args.ref and args.ref_dir:
        raise InferenceError('give references with --ref (one or several) or --ref-dir, not both')
    if not os.path.exists(args.lr):
        what = 'image file' if is_image_file(args.lr) else 'video file' if is_video_file(args.lr) else \
            'image file or folder'
        raise FileNotFoundError(f'--lr {args.lr}: no such {what}')
    for ref in args.ref or ():
        if os.path.isdir(ref):
            raise IsADirectoryError(f'--ref {ref} is a folder; give image files with --ref, or a folder of references '
                                    'matched by name with --ref-dir')
        if not os.path.exists(ref):
            raise FileNotFoundError(f'--ref {ref}: no such image file')
    if args.ref_dir and not os.path.isdir(args.ref_dir):
        if os.path.exists(args.ref_dir):
            raise NotADirectoryError(f'--ref-dir {args.ref_dir} is a file; give a folder of references (or the image '
                                     'with --ref)')
        raise FileNotFoundError(f'--ref-dir {args.ref_dir}: no such folder')
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise NotADirectoryError(f'-o {args.output} is a file; give the folder to write the pictures into')
    check_writable(args.output)


def single_image_options(args: argparse.Namespace, arch: str) -> Dict[str, Any]:
    """The inference dataset's options for a single-image network; reference and search flags are errors."""
    given = [flag for flag, on in (('--ref', args.ref), ('--ref-dir', args.ref_dir), ('--self-ref', args.self_ref),
                                   ('--texture-map', args.texture_map), ('--max-memory', args.max_memory),
                                   ('--search', args.search != 'auto'),  # auto: the default
                                   ('--search-geometry', args.search_geometry)) if on]
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


def run(argv: Optional[Sequence[str]] = None, own_process: bool = False) -> List[Dict[str, Path]]:
    """Parse the flags, check everything that can be checked before any work (flags, paths, the output folder,
    the weights, collisions, existing outputs, every input's header), then super-resolve. Inputs whose pixel data
    turn out to be corrupt are skipped and reported at the end (an :class:`InferenceError` after the rest were
    written; ``--skip-existing`` finishes the folder once they are fixed). Returns the outputs written.

    ``own_process`` (the command line): the process is this run's alone, so on CPU without ``--max-memory`` or
    ``--release-memory`` it keeps freed memory for reuse (:func:`~extracter.utils.malloc.retain_freed_memory`)."""
    args = build_parser().parse_args(argv)
    apply_image_arguments(args)
    rank, world, local_rank = distributed_env()
    device = select_device(args.device, world, local_rank)
    options = inference_options(args)
    check_paths(args)
    video = check_video_flags(args, world) if os.path.isfile(args.lr) and is_video_file(args.lr) else None
    if video is None and (args.frames or args.video_codec != DEFAULT_CODEC):
        raise InferenceError(f'--frames and --video-codec are for a video --lr; {args.lr} is not one '
                             f'({", ".join(VIDEO_EXTENSIONS)})')
    if own_process and torch.device(device).type == 'cpu' and args.max_memory is None and not args.release_memory:
        retain_freed_memory()
    net = load_network(args.weights, args.opt, device, args.param_key)
    if video is not None:
        return run_video(args, net, device, options, video, sys.argv[1:] if argv is None else argv)
    if not descriptor_of(net).uses_reference:
        dataset = RefSRInferenceDataset(single_image_options(args, type(net).__name__))
    else:
        # the geometry is checked now (TTSR refuses another); it applies per call
        stride = net.size_multiples(net.search_spec(geometry=options.search.geometry))[0]
        dataset = RefSRInferenceDataset(dataset_options(args, stride))
    barrier = None
    if world > 1:  # every process checks all outputs before any writes one
        import torch.distributed as dist

        dist.init_process_group('gloo')
        barrier = dist.barrier
    bar = tqdm(total=len(range(rank, len(dataset), world)), desc='images', unit='img', disable=rank != 0)
    command = command_line('infer.py', sys.argv[1:] if argv is None else argv)
    try:
        # the lock before the outputs are looked at: the processes of one torchrun launch share it
        with folder_lock(args.output, command, args.wait, log=lambda line: tqdm.write(line, file=sys.stderr)):
            report = infer_folder(net, dataset, Path(args.output), options.run_kwargs(), device, args.texture_map,
                                  args.overwrite, args.skip_existing, rank, world, keep_going=True,
                                  after_plan=barrier,
                                  on_image=lambda done, total, name: (bar.update(1), bar.set_postfix_str(name)))
            if barrier is not None:  # the lock's maker keeps it until every process is done
                barrier()
    finally:
        bar.close()
        if world > 1:
            dist.destroy_process_group()
    for name, used in report.searches:
        print(f'{name}: {used}')
    if report.reference_cache is not None and report.reference_cache.total_hits:
        print(report.reference_cache.describe())
    for line in report.cleaned:
        print(line, file=sys.stderr)
    for line in report.redone:
        print(f'made again (--skip-existing): {line}', file=sys.stderr)
    if report.skipped:
        print(f'skipped {len(report.skipped)} input(s) whose outputs exist and are whole')
    if report.failed:
        done = len(report.written) + len(report.skipped)
        lines = '\n  '.join(msg if name in msg else f'{name}: {msg}' for name, msg in report.failed)
        raise InferenceError(f'{len(report.failed)} input(s) failed ({done} done, outputs in {args.output}); fix or '
                             f'remove them and rerun with --skip-existing to finish:\n  {lines}')
    return report.written


def check_video_flags(args: argparse.Namespace, world: int) -> VideoInfo:
    """What a video ``--lr`` refuses, before the weights are loaded: flags of folders and pictures, several
    processes, and a clip PyAV cannot read (PyAV missing, not a video, no video stream, a codec it cannot decode, no
    frames)."""
    given = [flag for flag, on in (('--ref-dir', args.ref_dir), ('--texture-map', args.texture_map)) if on]
    if given:
        raise InferenceError(f'--lr {args.lr} is a video: {" and ".join(given)} do not apply (give its references '
                             'with --ref, or --self-ref)')
    if world > 1:
        raise InferenceError(f'--lr {args.lr} is a video: its frames run in order in one process (not under '
                             'torchrun); for several processes, extract the frames and give the folder')
    return probe_video(args.lr)


def run_video(args: argparse.Namespace, net, device: str, options: InferenceOptions, info: VideoInfo,
              argv: Sequence[str]) -> List[Dict[str, Path]]:
    """``--lr clip.mp4``: the frames through :func:`~extracter.inference.video.infer_video` with ``--ref`` (the same
    references every frame), ``--self-ref``, or none for a single-image network; progress with ETA over frames."""
    if not descriptor_of(net).uses_reference:
        single_image_options(args, type(net).__name__)  # refuses reference and search flags
        sample = {'lq_multiple': 1, 'ref_multiple': 4, 'ref_mode': 'none'}
        references = None
    else:
        stride = net.size_multiples(net.search_spec(geometry=options.search.geometry))[0]
        data_opt = dataset_options(args, stride)  # refuses a RefSR clip without references
        sample = {'lq_multiple': stride, 'ref_multiple': 4 * stride,
                  'ref_mode': 'self' if data_opt.get('ref_mode') == 'self' else 'given'}
        references = None if args.self_ref else fixed_references(args.ref)
    bar = tqdm(total=info.frames, desc='frames', unit='frame')

    command = command_line('infer.py', argv)
    try:
        with folder_lock(args.output, command, args.wait, log=lambda line: tqdm.write(line, file=sys.stderr)):
            report = infer_video(net, args.lr, Path(args.output), references, options.run_kwargs(), sample, device,
                                 keep_frames=args.frames, overwrite=args.overwrite, skip_existing=args.skip_existing,
                                 codec=args.video_codec, on_frame=lambda number, total, computed: bar.update(1),
                                 depends_on={'references': [file_identity(p) for p in args.ref or ()]})
    finally:
        bar.close()
    for line in report.cleaned:
        print(line, file=sys.stderr)
    if report.skipped:
        print(f'skipped {args.lr}: its video exists and opens (--skip-existing)')
        return [{'video': None}]
    if report.search_used:
        print(f'{os.path.basename(args.lr)}: {report.search_used}')
    if report.reference_cache is not None:
        print(report.reference_cache.describe())
    resumed = f' ({report.resumed} resumed from {report.frames_dir or "the work folder"})' if report.resumed else ''
    rate = report.info.rate
    print(f'wrote {report.video}: {report.frames} frames at {float(rate):g} fps{resumed}'
          + (f'; frames in {report.frames_dir}' if report.frames_dir else ''))
    return [{'video': report.video}]


def main(argv: Optional[Sequence[str]] = None, own_process: bool = False) -> int:
    """The command line: errors become one ``error:`` line and an exit status (see :mod:`extracter.utils.cli`).
    ``own_process``: see :func:`run` (only the script and the ``extracter-infer`` entry point, never a caller's
    process, set it)."""
    def cli(args: List[str]) -> int:
        written = run(args, own_process=own_process)
        if not any('video' in p for p in written):  # a video's run said what it wrote
            print(f'wrote {sum(len(p) for p in written)} files for {len(written)} image(s)')
        return 0

    return run_main(cli, argv)


def entry_point() -> int:
    """``extracter-infer``: the command line in its own process."""
    return main(own_process=True)


if __name__ == '__main__':
    sys.exit(entry_point())
