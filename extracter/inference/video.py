"""Super-resolve a video clip frame by frame: :func:`infer_video` (``infer.py --lr clip.mp4``).

The realistic case: a low-resolution clip and a few high-resolution stills of the same scene (photos taken while
recording, or periodic keyframes) as references. Frames are decoded in order (any container and codec the installed
PyAV reads; PyAV is the optional extra ``video``: ``pip install 'extracter[video]'``), each is super-resolved with the
references ``references_for(frame_number, frame)`` returns (``--ref``: the same every frame; a gallery's choice per
frame plugs in here), through the folder inference's :func:`~extracter.inference.folder.super_resolve`, and all frames
share one :class:`~extracter.inference.reference_cache.ReferenceCache`: a reference is encoded once for the clip.
A single-image network (DRCT) runs frame by frame on the frame alone.

Outputs, for ``clip.mp4`` in ``-o OUT``:

- ``OUT/clip_sr.mkv``: the SR frames at the input's frame rate, written at the end, atomically (a temporary file
  renamed). The codec (:data:`VIDEO_CODECS`): ``ffv1`` (default: lossless RGB, FFV1 in Matroska; FFV1 is FFmpeg's
  own encoder, so every PyAV build has it; the decoded frames equal the PNG frames bit for bit) or ``h264``
  (``clip_sr.mp4``, libx264 at CRF 12, yuv420p: high quality and plays anywhere; the PyAV wheels ship libx264, a
  PyAV built without it is refused in one line). The audio track is not copied.
- ``OUT/clip_sr_frames/frame_000001.png``...: the work folder, one PNG per SR frame, each written atomically.
  ``skip_existing`` (``--skip-existing``) resumes there: frames whose PNG is whole are not computed again. What the
  frames depend on is recorded there first (``.run.json``, :func:`frames_identity`: the clip's name, size and
  modification time, the network's weights, the search, the references ``depends_on`` names); a work folder made
  from another clip or with other settings is refused rather than resumed (its frames would be stale), and
  ``overwrite`` makes every frame again. It is removed once the video is written, unless ``keep_frames``
  (``--frames``) asks for the frames (frames of an earlier, longer clip left there are removed).

Existing outputs (the video, or frames in the work folder) are never replaced without ``overwrite``; with
``skip_existing`` a clip whose video exists (and opens, with a first frame) is skipped. Bad input (no PyAV, a file
that is not a video, no video stream, a codec this PyAV cannot decode, no frames) is one :class:`VideoError` line
naming the file, raised before anything is written.
"""

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from extracter.data.image_io import read_image
from extracter.data.inference_dataset import inference_sample
from extracter.inference.folder import batch_of_one, super_resolve
from extracter.inference.reference_cache import CacheStats, ReferenceCache, tensor_digest
from extracter.utils.file_io import (
    Terminated,
    atomic_write,
    atomic_write_text,
    check_writable,
    clean_stale_temp_files,
    ensure_folder,
    set_left_behind,
)
from extracter.utils.visualize import png_problem, png_writer

# the containers people record and share clips in (what --lr treats as a video; PyAV reads many more)
VIDEO_EXTENSIONS = ('.mp4', '.m4v', '.mov', '.mkv', '.webm', '.avi', '.mpg', '.mpeg', '.ts', '.m2ts', '.mts',
                    '.wmv', '.flv', '.ogv', '.3gp', '.y4m')
INSTALL_HINT = "pip install 'extracter[video]' (PyAV)"
FRAME_NAME = 'frame_{:06d}.png'
MANIFEST = '.run.json'  # in the work folder: what its frames were made from (frames_identity)
# engine options that change the memory used and the frames at most by float rounding (tiles: ~2e-7, see
# docs/large_images.md): a resume may lower --max-memory after running out of memory
MEMORY_ONLY = ('max_memory', 'tile', 'chunk_size', 'key_chunk_size')
_FRAME_RE = re.compile(r'frame_\d{6}\.png')
References = Callable[[int, np.ndarray], Sequence[str]]  # (frame number from 1, the frame RGB uint8) -> paths


@dataclass(frozen=True)
class VideoCodec:
    """How the SR video is written: PyAV's encoder, the container and extension, the pixel format, the options."""

    encoder: str
    container: str
    suffix: str
    pix_fmt: str
    options: Tuple[Tuple[str, str], ...]
    description: str


VIDEO_CODECS: Dict[str, VideoCodec] = {
    'ffv1': VideoCodec('ffv1', 'matroska', '.mkv', 'bgr0', (), 'lossless RGB (FFV1 in Matroska, .mkv)'),
    'h264': VideoCodec('libx264', 'mp4', '.mp4', 'yuv420p', (('crf', '12'), ('preset', 'medium')),
                       'H.264 at CRF 12, yuv420p (.mp4, plays anywhere; not lossless)'),
}
DEFAULT_CODEC = 'ffv1'


class VideoError(ValueError):
    """A clip that cannot be read or written (one line naming the file)."""


def is_video_file(path) -> bool:
    """Whether ``path`` names a video by its extension (:data:`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def require_av(what: str):
    """The ``av`` module (PyAV), or a :class:`VideoError` naming the extra to install."""
    try:
        import av
    except ImportError:
        raise VideoError(f'{what}: reading and writing video needs PyAV, which is not installed: '
                         f'{INSTALL_HINT}') from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """A clip's first video stream: its size, frame rate, frame count (None where neither the container nor a pass
    over its packets tells) and codec."""

    path: str
    width: int
    height: int
    rate: Fraction
    frames: Optional[int]
    codec: str


def _open(av, path: str, flag: str):
    try:
        return av.open(path)
    except av.error.EOFError:
        raise VideoError(f'{flag} {path}: the video has no frames (it ends before its first one)') from None
    except (av.error.FFmpegError, OSError) as err:
        if isinstance(err, FileNotFoundError) or not os.path.exists(path):
            raise VideoError(f'{flag} {path}: no such video file') from None
        raise VideoError(f'{flag} {path}: not a video PyAV can read ({type(err).__name__}: '
                         f'{getattr(err, "strerror", None) or err})') from None


def _video_stream(container, path: str, flag: str):
    if not container.streams.video:
        raise VideoError(f'{flag} {path}: no video stream in the file (audio or data only)')
    stream = container.streams.video[0]
    if stream.codec_context is None:
        tag = getattr(stream, 'codec_tag', '') or 'unknown'
        raise VideoError(f'{flag} {path}: its video codec ({tag}) cannot be decoded by this PyAV build')
    return stream


def probe_video(path, flag: str = '--lr') -> VideoInfo:
    """Open ``path`` and decode its first frame: a :class:`VideoInfo`, or a :class:`VideoError` for a file that is
    not a video, has no video stream, a codec this PyAV cannot decode, or no frames."""
    av = require_av(f'{flag} {path}')
    path = os.fspath(path)
    with _open(av, path, flag) as container:
        stream = _video_stream(container, path, flag)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        try:
            first = next(iter(container.decode(stream)), None)
        except av.error.FFmpegError as err:
            raise VideoError(f'{flag} {path}: its first frame cannot be decoded ({err})') from None
        if first is None:
            raise VideoError(f'{flag} {path}: the video has no frames')
        if not rate:
            raise VideoError(f'{flag} {path}: the video states no frame rate')
        codec, count = stream.codec_context.name, int(stream.frames or 0)
    if count <= 0:  # Matroska and others state no count: count the packets (no decoding)
        with av.open(path) as container:
            count = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    return VideoInfo(path, first.width, first.height, Fraction(rate), count or None, codec)


def read_frames(path, flag: str = '--lr') -> Iterator[np.ndarray]:
    """The frames of the first video stream of ``path``, in order, as RGB uint8 arrays [H, W, 3]."""
    av = require_av(f'{flag} {path}')
    path = os.fspath(path)
    with _open(av, path, flag) as container:
        stream = _video_stream(container, path, flag)
        n = 0
        try:
            for frame in container.decode(stream):
                n += 1
                yield frame.to_ndarray(format='rgb24')
        except av.error.FFmpegError as err:
            raise VideoError(f'{flag} {path}: frame {n + 1} cannot be decoded ({err})') from None


def write_video(frame_paths: Sequence[Path], path: Path, rate: Fraction, codec: str = DEFAULT_CODEC) -> None:
    """Encode the PNG frames ``frame_paths`` (in order, one size) into ``path`` at ``rate`` frames per second, as
    ``codec`` (:data:`VIDEO_CODECS`) says; atomically (a temporary file in the same folder, then renamed)."""
    av = require_av(str(path))
    spec = VIDEO_CODECS[codec]
    try:
        av.codec.Codec(spec.encoder, 'w')
    except (av.error.FFmpegError, ValueError) as err:
        raise VideoError(f'--video-codec {codec}: this PyAV build has no {spec.encoder} encoder ({err}); use '
                         f'--video-codec ffv1') from None
    first = np.asarray(read_image(str(frame_paths[0])))
    h, w = first.shape[:2]
    pix_fmt = 'yuv444p' if spec.pix_fmt == 'yuv420p' and (h % 2 or w % 2) else spec.pix_fmt  # 4:2:0 needs even sides

    def write(tmp: str) -> None:
        with av.open(tmp, 'w', format=spec.container) as out:
            stream = out.add_stream(spec.encoder, rate=rate, options=dict(spec.options))
            stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
            for p in frame_paths:
                img = np.ascontiguousarray(read_image(str(p)))
                if img.shape[:2] != (h, w):
                    raise VideoError(f'{p}: {img.shape[1]}x{img.shape[0]}, the other frames are {w}x{h}')
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    atomic_write(path, write)


@dataclass(frozen=True)
class VideoOutputs:
    """Where a clip's outputs go: the video and the work folder of PNG frames."""

    video: Path
    frames: Path

    def frame(self, n: int) -> Path:
        return self.frames / FRAME_NAME.format(n)

    def frame_files(self) -> List[Path]:
        if not self.frames.is_dir():
            return []
        return sorted(p for p in self.frames.iterdir() if _FRAME_RE.fullmatch(p.name))


def video_outputs(out_dir: Path, clip: str, codec: str = DEFAULT_CODEC) -> VideoOutputs:
    stem = Path(clip).stem
    return VideoOutputs(Path(out_dir) / f'{stem}_sr{VIDEO_CODECS[codec].suffix}', Path(out_dir) / f'{stem}_sr_frames')


@dataclass
class VideoReport:
    """What :func:`infer_video` did: the video written (None: skipped, it existed), the frames (all, computed now,
    resumed from the work folder), where the PNG frames are kept (None: removed), the search of the first frame and
    the reference cache's statistics."""

    video: Optional[Path]
    info: VideoInfo
    frames: int = 0
    computed: int = 0
    resumed: int = 0
    frames_dir: Optional[Path] = None
    skipped: bool = False
    search_used: str = ''
    reference_cache: Optional[CacheStats] = None
    cleaned: List[str] = field(default_factory=list)


def check_video_outputs(outputs: VideoOutputs, overwrite: bool, skip_existing: bool) -> bool:
    """Whether the clip is to be run: False with ``skip_existing`` when its video exists and opens; raises
    ``FileExistsError`` for an existing video or frames without ``overwrite``/``skip_existing``."""
    for path in (outputs.video, outputs.frames):
        if path.exists() and path.is_dir() != (path == outputs.frames):
            raise FileExistsError(f'{path} exists and is a {"folder" if path.is_dir() else "file"}; move it or '
                                  'choose another -o')
    if overwrite:
        return True
    if outputs.video.exists():
        if not skip_existing:
            raise FileExistsError(f'output video {outputs.video} exists; pass --overwrite to replace it')
        try:
            probe_video(outputs.video, 'output video')
            return False
        except VideoError:
            return True  # cut short: made again
    if outputs.frame_files() and not skip_existing:
        raise FileExistsError(f'{len(outputs.frame_files())} frame(s) of an earlier run are in {outputs.frames}; '
                              'pass --skip-existing to resume there or --overwrite to make them again')
    return True


def fixed_references(paths: Sequence[str]) -> References:
    """``--ref``: the same references for every frame."""
    paths = [os.fspath(p) for p in paths]
    return lambda number, frame: paths


def file_identity(path) -> Dict[str, Any]:
    """A file as a resumed run recognises it: its name, size and modification time (a moved file is the same)."""
    st = os.stat(path)
    return {'name': os.path.basename(os.fspath(path)), 'bytes': st.st_size, 'mtime_ns': st.st_mtime_ns}


def frames_identity(info: VideoInfo, net, run_kwargs: Dict[str, Any], sample_options: Dict[str, Any],
                    depends_on: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What the SR frames of a clip depend on, as recorded in the work folder (:data:`MANIFEST`): the clip
    (:func:`file_identity`, its frame size), the network (its type and a digest of its weights), the sampling and
    the search options (not those that change the memory used, :data:`MEMORY_ONLY`), and ``depends_on`` (the
    caller's: e.g. the references' :func:`file_identity`). JSON-ready."""
    return {'clip': {**file_identity(info.path), 'width': info.width, 'height': info.height},
            'network': {'type': type(net).__name__, 'weights': tensor_digest(*net.state_dict().values())},
            'sample': {k: repr(v) for k, v in sorted(sample_options.items())},
            'search': {k: repr(v) for k, v in sorted(run_kwargs.items()) if k not in MEMORY_ONLY},
            'depends_on': json.loads(json.dumps(depends_on or {}, default=repr))}


def check_frames_identity(outputs: VideoOutputs, identity: Dict[str, Any], resume: bool) -> None:
    """Before any frame is made: with ``resume`` and frames in the work folder, refuse them unless its manifest
    says they were made from this clip with these settings (else they would be stale); then record ``identity``
    there (atomically)."""
    manifest = outputs.frames / MANIFEST
    if resume and outputs.frame_files():
        try:
            recorded = json.loads(manifest.read_text(encoding='utf-8'))
        except (OSError, ValueError):
            recorded = None
        if recorded != identity:
            what = 'no record of what they were made from' if not isinstance(recorded, dict) else \
                'made with another ' + ', '.join(k for k in identity if recorded.get(k) != identity[k])
            raise FileExistsError(f'{outputs.frames}: its frames cannot be resumed ({what}); pass --overwrite to '
                                  'make them again, or choose another -o')
        return
    atomic_write_text(manifest, json.dumps(identity, indent=1, sort_keys=True))


class _ReferenceImages:
    """The decoded reference images of the current frames, read once while they stay in use."""

    def __init__(self) -> None:
        self.images: Dict[str, np.ndarray] = {}

    def get(self, paths: Sequence[str]) -> List[np.ndarray]:
        self.images = {p: self.images[p] if p in self.images else read_image(p) for p in paths}
        return [self.images[p] for p in paths]


def infer_video(net, clip, out_dir, references_for: Optional[References], run_kwargs: Dict[str, Any],
                sample_options: Dict[str, Any], device: str = 'cpu', keep_frames: bool = False,
                overwrite: bool = False, skip_existing: bool = False, codec: str = DEFAULT_CODEC,
                reference_cache: Optional[ReferenceCache] = None,
                on_frame: Optional[Callable[[int, Optional[int], bool], None]] = None,
                depends_on: Optional[Dict[str, Any]] = None) -> VideoReport:
    """Super-resolve every frame of ``clip`` into ``out_dir`` (see the module docstring).

    Args:
        references_for: ``(frame number from 1, frame RGB uint8) -> reference paths``; None for a single-image
            network or the self-reference (``sample_options['ref_mode']`` ``'none'`` / ``'self'``).
        sample_options: :func:`~extracter.data.inference_dataset.inference_sample`'s ``lq_multiple``,
            ``ref_multiple`` and ``ref_mode`` (as the inference dataset would use them).
        run_kwargs: the engine's options (:meth:`InferenceOptions.run_kwargs`).
        reference_cache: the clip's cache (default: a new one where ``references_for`` is given; its statistics
            end in the report).
        on_frame: ``on_frame(number, total or None, computed)`` after each frame (False: resumed).
        depends_on: what else the frames depend on (JSON-ready; ``infer.py``: the ``--ref`` files'
            :func:`file_identity`), recorded with them so that a resume never mixes in frames made otherwise.
    """
    info = probe_video(clip)
    if codec not in VIDEO_CODECS:
        raise VideoError(f'--video-codec must be one of {", ".join(VIDEO_CODECS)}, got {codec!r}')
    outputs = video_outputs(Path(out_dir), info.path, codec)
    report = VideoReport(None, info)
    if outputs.video.parent.exists() and not outputs.video.parent.is_dir():
        raise NotADirectoryError(f'output {outputs.video.parent} is a file, not a folder; give a folder with -o')
    if not check_video_outputs(outputs, overwrite, skip_existing):
        report.skipped = True
        return report
    check_writable(outputs.video.parent)
    ensure_folder(outputs.frames)
    report.cleaned = clean_stale_temp_files(outputs.video.parent).lines() + \
        clean_stale_temp_files(outputs.frames).lines()
    resume = skip_existing and not overwrite
    check_frames_identity(outputs, frames_identity(info, net, run_kwargs, sample_options, depends_on), resume)
    # a cache where references can repeat (not for the self-reference or a single-image network)
    cache = reference_cache if reference_cache is not None or references_for is None else ReferenceCache()
    refs = _ReferenceImages()
    paths: List[Path] = []
    try:
        for number, frame in enumerate(read_frames(info.path), start=1):
            path = outputs.frame(number)
            paths.append(path)
            done = resume and path.exists() and png_problem(path) is None
            if not done:
                ref_paths = [] if references_for is None else list(references_for(number, frame))
                sample = inference_sample(frame, refs.get(ref_paths), **sample_options)
                result = super_resolve(net, batch_of_one(sample), device, run_kwargs, reference_cache=cache)
                atomic_write(path, png_writer(lambda sr=result['sr']: sr))
                report.search_used = report.search_used or result.get('search_used', '')
            report.computed += not done
            report.resumed += done
            if on_frame is not None:
                on_frame(number, info.frames, not done)
    except (KeyboardInterrupt, Terminated) as err:
        set_left_behind(err, f'{report.computed + report.resumed} frame(s) done in {outputs.frames}; rerun with '
                             '--skip-existing to resume there')
        raise
    report.frames = len(paths)
    if not paths:
        raise VideoError(f'--lr {info.path}: the video has no frames')
    report.reference_cache = None if cache is None else cache.stats()
    write_video(paths, outputs.video, info.rate, codec)
    report.video = outputs.video
    made = set(paths)
    for p in outputs.frame_files():  # all of them, or (--frames) those of an earlier, longer clip
        if not keep_frames or p not in made:
            p.unlink()
    if keep_frames:
        report.frames_dir = outputs.frames
    else:
        (outputs.frames / MANIFEST).unlink(missing_ok=True)
        if not any(outputs.frames.iterdir()):
            shutil.rmtree(outputs.frames)
    return report
