"""Super-resolve your own photos (x4) with the help of high-resolution reference pictures.

    python extracter/infer.py --weights W.pth --lr LR.png --ref REF.png [--ref REF2.png ...] -o OUT_DIR
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref-dir REF_DIR -o OUT_DIR   # matched by file name
    python extracter/infer.py --weights W.pth --lr LR_DIR --ref REF.png -o OUT_DIR       # one reference for all
    torchrun --nproc_per_node=2 extracter/infer.py ... -o OUT_DIR   # a folder shared between processes
    python extracter/infer.py --weights W.pth --lr LR.png --self-ref -o OUT_DIR     # no reference: the LR's own
    python extracter/infer.py --weights W.pth --lr LR_DIR --gallery PHOTOS -o OUT_DIR  # references found for you
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
budgets like one reference. ``--gallery DIR`` chooses each input's references (``--refs-per-image``, default 2)
among a folder of photos, through an index kept in the cache folder (:mod:`extracter.gallery`), and writes the
choice to ``OUT_DIR/references.csv``. A single-image network (DRCT) takes no reference; its options may also be read
off its weights (an original DRCT checkpoint needs no YAML). A video (``--lr clip.mp4``, any container PyAV reads) is
super-resolved frame by frame into ``OUT_DIR/clip_sr.mkv`` (``--video-codec``; ``--frames`` keeps the PNG frames;
``--skip-existing`` resumes at frame level; :mod:`extracter.inference.video`), with ``--ref`` or ``--gallery`` (each
frame's references chosen among the stills). This file is a thin command line over :mod:`extracter.inference` and
:mod:`extracter.gallery`.
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
    from extracter.data.image_io import is_image_file, list_images
    from extracter.data.inference_dataset import RefSRInferenceDataset
    from extracter.gallery.folder import CSV_NAME, GalleryFrames, choose_references, write_references_csv
    from extracter.gallery.index import update_index
    from extracter.gallery.select import DEFAULT_REFS_PER_IMAGE, DEFAULT_SHORTLIST
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
    parser.add_argument('--gallery', default=None,
                        help='a folder of photos (sub-folders too): each input\'s references are chosen among them '
                             '(written to OUT_DIR/references.csv)')
    parser.add_argument('--refs-per-image', type=int, default=None,
                        help=f'--gallery: references chosen per input (default {DEFAULT_REFS_PER_IMAGE}; fewer when '
                             'the others offer the same patches)')
    parser.add_argument('--gallery-index', default=None,
                        help='--gallery: the index file (default: under $XDG_CACHE_HOME or ~/.cache, '
                             'extracter/gallery/; never inside the gallery)')
    parser.add_argument('--shortlist', type=int, default=None,
                        help=f'--gallery: candidates re-ranked per input (default {DEFAULT_SHORTLIST})')
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


def check_gallery(args: argparse.Namespace) -> None:
    """``--gallery`` and its flags: not with another source of references; the output not inside the gallery."""
    if not args.gallery:
        given = [f for f, v in (('--refs-per-image', args.refs_per_image), ('--gallery-index', args.gallery_index),
                                ('--shortlist', args.shortlist)) if v is not None]
        if given:
            raise InferenceError(f'{", ".join(given)} work with --gallery DIR; give the gallery or leave them out')
        return
    other = [f for f, v in (('--ref', args.ref), ('--ref-dir', args.ref_dir), ('--self-ref', args.self_ref)) if v]
    if other:
        raise InferenceError(f'--gallery chooses the references: leave out {", ".join(other)}')
    for flag, value in (('--refs-per-image', args.refs_per_image), ('--shortlist', args.shortlist)):
        if value is not None and value < 1:
            raise InferenceError(f'{flag} must be >= 1, got {value}')
    if not os.path.isdir(args.gallery):
        raise (NotADirectoryError if os.path.exists(args.gallery) else FileNotFoundError)(
            f'--gallery {args.gallery}: ' + ('is a file; give a folder of photos' if os.path.exists(args.gallery)
                                             else 'no such folder'))
    gallery, out = Path(args.gallery).resolve(), Path(args.output).resolve()
    if out == gallery or gallery in out.parents:
        raise InferenceError(f'-o {args.output} is inside --gallery {args.gallery}: the outputs would be taken as '
                             'gallery photos by the next run; give another folder')


def check_paths(args: argparse.Namespace) -> None:
    """The input and output paths, with messages that say which flag is wrong and how (before anything is loaded)."""
    check_gallery(args)
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
                                   ('--gallery', args.gallery),
                                   ('--texture-map', args.texture_map), ('--max-memory', args.max_memory),
                                   ('--search', args.search != 'auto'),  # auto: the default
                                   ('--search-geometry', args.search_geometry)) if on]
    if given:
        raise InferenceError(f'{arch} is a single-image network: it takes no reference and has no search; leave out '
                             f'{", ".join(given)}')
    return {'dataroot_lq': args.lr, 'lq_multiple': 1, 'ref_mode': 'none'}  # the engine pads to the window


def dataset_options(args: argparse.Namespace, stride: int,
                    gallery_refs: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
    """The inference dataset's options of a reference-based network; ``gallery_refs``: the references chosen from
    ``--gallery`` (:func:`gallery_references`)."""
    if gallery_refs is not None:
        return {'dataroot_lq': args.lr, 'stride': stride, 'refs': gallery_refs}
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


def lr_files(lr: str) -> List[str]:
    """The LR images of ``--lr``: the file, or the folder's images (as the inference dataset lists them)."""
    return [lr] if os.path.isfile(lr) else [os.path.join(lr, n) for n in list_images(lr)]


def gallery_references(args: argparse.Namespace, net, device: str, rank: int, world: int):
    """Choose every input's references from ``--gallery`` (the index brought up to date first); an input for which
    none could be chosen stops the run before anything is written."""
    k = args.refs_per_image or DEFAULT_REFS_PER_IMAGE
    lr_paths = lr_files(args.lr)
    choice = choose_references(net, lr_paths, args.gallery, k, args.gallery_index, args.shortlist or DEFAULT_SHORTLIST,
                               device, rank, world, progress=rank == 0)
    missing = [os.path.basename(p) for p in lr_paths if os.path.basename(p) not in choice.refs]
    if missing:
        lines = '\n  '.join(n for n in choice.notes if n.split(':')[0] in missing)
        raise InferenceError(f'no references for {len(missing)} input(s) ({", ".join(missing)}); nothing was '
                             f'written:\n  {lines}')
    return choice


def report_gallery(choice) -> None:
    """The index's update, the gallery files skipped and the choice's notes (after the run)."""
    stats = choice.stats
    print(f'gallery index {stats.path}: {stats.described} image(s) described, {stats.reused} reused, '
          f'{stats.removed} dropped')
    for line in stats.notes:
        print(f'note: {line}', file=sys.stderr)
    for line in choice.notes:
        print(f'note: {line}', file=sys.stderr)
    if stats.skipped:
        print(f'gallery: skipped {len(stats.skipped)} file(s):\n  ' + '\n  '.join(stats.skipped), file=sys.stderr)


def references_csv_step(args: argparse.Namespace, rows, rank: int, barrier):
    """``OUT/references.csv``: refused now if it exists (without ``--overwrite`` / ``--skip-existing``); the step
    that writes it (rank 0, atomically) once every output has been checked, then the barrier."""
    csv_path = Path(args.output) / CSV_NAME
    if csv_path.exists() and not (args.overwrite or args.skip_existing):
        raise FileExistsError(f'{csv_path} exists; pass --overwrite to replace it or --skip-existing to finish the '
                              'rest')

    def step() -> None:
        if rank == 0:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            write_references_csv(csv_path, rows)
        if barrier is not None:
            barrier()

    return step


def distributed_env() -> tuple:
    """(rank, world size, local rank) under torchrun (its environment variables), else (0, 1, 0)."""
    return (int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1)),
            int(os.environ.get('LOCAL_RANK', 0)))


def folder_dataset(args: argparse.Namespace, net, options: InferenceOptions, device: str, rank: int, world: int):
    """The inference dataset of ``--lr`` (a file or folder) and, with ``--gallery``, the references' choice."""
    if not descriptor_of(net).uses_reference:
        return RefSRInferenceDataset(single_image_options(args, type(net).__name__)), None
    # the geometry is checked now (TTSR refuses another); it applies per call
    stride = net.size_multiples(net.search_spec(geometry=options.search.geometry))[0]
    choice = gallery_references(args, net, device, rank, world) if args.gallery else None
    return RefSRInferenceDataset(dataset_options(args, stride, choice.refs if choice else None)), choice


def print_report(args: argparse.Namespace, report, choice, rank: int) -> None:
    """What a folder run did (searches, the gallery, the cache, cleaned, redone, skipped); its failures raise."""
    for name, used in report.searches:
        print(f'{name}: {used}')
    if choice is not None and rank == 0:
        report_gallery(choice)
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
    barrier = None
    if world > 1:  # every process checks all outputs before any writes one
        import torch.distributed as dist

        dist.init_process_group('gloo')
        barrier = dist.barrier
    dataset, choice = folder_dataset(args, net, options, device, rank, world)
    bar = tqdm(total=len(range(rank, len(dataset), world)), desc='images', unit='img', disable=rank != 0)
    command = command_line('infer.py', sys.argv[1:] if argv is None else argv)
    try:
        # the lock before the outputs are looked at: the processes of one torchrun launch share it
        with folder_lock(args.output, command, args.wait, log=lambda line: tqdm.write(line, file=sys.stderr)):
            after_plan = barrier
            if choice is not None:
                after_plan = references_csv_step(args, choice.rows, rank, barrier)
            report = infer_folder(net, dataset, Path(args.output), options.run_kwargs(), device, args.texture_map,
                                  args.overwrite, args.skip_existing, rank, world, keep_going=True,
                                  after_plan=after_plan,
                                  on_image=lambda done, total, name: (bar.update(1), bar.set_postfix_str(name)))
            if barrier is not None:  # the lock's maker keeps it until every process is done
                barrier()
    finally:
        bar.close()
        if world > 1:
            dist.destroy_process_group()
    print_report(args, report, choice, rank)
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
    gallery = None
    if not descriptor_of(net).uses_reference:
        single_image_options(args, type(net).__name__)  # refuses reference and search flags
        sample = {'lq_multiple': 1, 'ref_multiple': 4, 'ref_mode': 'none'}
        references = None
    else:
        stride = net.size_multiples(net.search_spec(geometry=options.search.geometry))[0]
        if args.gallery:  # each frame's references chosen among the stills
            index, stats = update_index(net, args.gallery, args.gallery_index, device)
            gallery = GalleryFrames(net, index, args.refs_per_image or DEFAULT_REFS_PER_IMAGE,
                                    args.shortlist or DEFAULT_SHORTLIST, device)
            data_opt = {}
        else:
            data_opt = dataset_options(args, stride)  # refuses a RefSR clip without references
        sample = {'lq_multiple': stride, 'ref_multiple': 4 * stride,
                  'ref_mode': 'self' if data_opt.get('ref_mode') == 'self' else 'given'}
        references = gallery or (None if args.self_ref else fixed_references(args.ref))
    bar = tqdm(total=info.frames, desc='frames', unit='frame')
    # references.csv: an existing one is refused now; written with the rows of the frames computed in this run
    csv_step = references_csv_step(args, gallery.rows, 0, None) if gallery is not None else None

    # what the frames depend on besides the clip, the weights and the search (a resume checks it): the stills
    depends_on = {'references': [file_identity(p) for p in args.ref or ()]} if gallery is None else {
        'gallery': {'photos': [[n, *(int(v) for v in st)] for n, st in zip(index.names, index.stats)],
                    'refs_per_image': gallery.k, 'shortlist': gallery.shortlist}}
    command = command_line('infer.py', argv)
    try:
        with folder_lock(args.output, command, args.wait, log=lambda line: tqdm.write(line, file=sys.stderr)):
            report = infer_video(net, args.lr, Path(args.output), references, options.run_kwargs(), sample, device,
                                 keep_frames=args.frames, overwrite=args.overwrite, skip_existing=args.skip_existing,
                                 codec=args.video_codec, on_frame=lambda number, total, computed: bar.update(1),
                                 depends_on=depends_on)
            if csv_step is not None and gallery.rows:
                csv_step()
    finally:
        bar.close()
    if gallery is not None:
        print(f'gallery index {stats.path}: {stats.described} image(s) described, {stats.reused} reused')
        for line in stats.notes + gallery.notes + [f'gallery: skipped {s}' for s in stats.skipped]:
            print(f'note: {line}', file=sys.stderr)
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
