"""The web page's job runner: one super-resolution job at a time, inputs checked in plain words, outputs only in its
own folder.

A job is an LR photo, zero or more reference photos, a model and optionally a memory budget and search mode
(:class:`JobRequest`). :meth:`JobRunner.run` reads the photos with the command line's reader
(:func:`extracter.data.image_io.read_image`: EXIF rotation, greyscale, 16-bit, alpha, size limit), builds the
command line's sample (:func:`extracter.data.inference_dataset.inference_sample`) and runs the same engine
(:func:`extracter.inference.folder.super_resolve`, or :func:`extracter.inference.engine.run_sisr` for a single-image
model when no reference is given), so for the same inputs and options the SR equals ``infer.py``'s.

Guarantees:

- One job runs at a time per runner; later ones wait in order and say so (``queued: N job(s) ahead``), at most
  ``max_waiting`` of them.
- Input files are read only from ``upload_dir`` (where the page stores uploads) and ``examples_dir`` (the page's
  examples, :mod:`extracter.app.examples`). Outputs go to
  ``output_dir/jobs/<job id>/``, written atomically, never replaced; only the SR's file takes its name from the
  photo's (sanitised: ``walk10_lr.png`` -> ``walk10_lr_x4.png``), the rest have generated names; the job's folder
  is created exclusively (another page process sharing ``output_dir`` can never get the same one).
- Old jobs and uploads are removed after each job: the newest ``keep_jobs`` job folders are kept, at most
  ``keep_mb`` megabytes of them (see :class:`JobRunner`); never the job that just ran.
- Every failure becomes a :class:`JobError` whose message says what is wrong in plain words; nothing escapes.
- A job can be cancelled (``run(..., cancel=event)``): the event is checked as each stage starts, after each tile
  and while waiting, and the job ends with :class:`JobCancelled`; its folder is made only after the computation,
  so a cancelled job leaves nothing behind.
- The time left is estimated from the job's work and this machine's measured speed (:mod:`extracter.app.timing`);
  while a stage runs without tiles, the progress is re-reported every :data:`TICK_S` so that it keeps moving.
- "Choose references for me" (``gallery_files`` or ``gallery_dir``, ``refs_per_image``): the photo's references are
  chosen by :func:`extracter.gallery.folder.choose_references`, the call of ``infer.py --gallery`` (the same choice
  and SR for the same inputs), as a stage of its own; uploads are linked into ``upload_dir/gallery-<digest>/photos``
  with the set's index beside it, a named folder (only with ``allow_model_paths``: the page on this machine only) is
  read where it is, its index in the user's cache. The job's folder holds ``references.csv`` and a thumbnail of each
  chosen reference.
- A memory budget always applies to reference-based runs: the request's, else the runner's default (half of the
  memory that is free when the runner starts, see :func:`default_memory_budget`).
"""

import contextvars
import hashlib
import logging
import math
import os
import re
import secrets
import shutil
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from PIL import Image, ImageOps

from extracter.app.timing import JobClock, SpeedBook, Stage, refsr_stages, single_image_stages
from extracter.data import degradations as deg
from extracter.data.image_io import ImageInputWarning, ImageReadError, ImageTooLargeError, read_image
from extracter.data.inference_dataset import inference_sample
from extracter.gallery.folder import CSV_NAME, choose_references, references_csv_text
from extracter.gallery.select import DEFAULT_REFS_PER_IMAGE, DEFAULT_SHORTLIST
from extracter.inference.engine import run_sisr
from extracter.inference.folder import batch_of_one, super_resolve
from extracter.inference.memory_plan import MemoryBudgetError
from extracter.inference.network import NetworkLoadError, load_network
from extracter.inference.options import SEARCH_MODES, InferenceOptionError, InferenceOptions, SearchOptions
from extracter.search.choice import choose_search
from extracter.utils.file_io import atomic_write_text
from extracter.utils.visualize import save_png, side_by_side, tensor_to_uint8

LOG = logging.getLogger('extracter.app')

MIN_LR_SIDE = 16  # LR pixels: below this there is nothing to enlarge
MIN_REF_SIDE = 16
# A reference with fewer than a quarter of the LR's pixels cannot supply its textures: refused. One smaller than the
# LR itself gets a note (a useful reference is an HR picture: about 16 times the LR's pixels).
MIN_REF_AREA_RATIO = 0.25
WEIGHT_SUFFIXES = ('.pth', '.pt')
TEXTURE_MIN_H = 320
DEFAULT_SEARCH = 'auto'  # as infer.py: approximate where the exact search is expensive
SISR_TILE = {'tile_size': 256, 'tile_pad': 16}  # single-image models: tiles above this size (LR pixels)
JOB_ID_ATTEMPTS = 8
DEFAULT_KEEP_JOBS = 20  # the retention policy (extracter-app --keep-jobs, --keep-mb)
DEFAULT_KEEP_MB = 500
UPLOAD_GRACE_S = 3600  # an upload this recent is never removed (it may be for a job about to start)
TICK_S = 0.5  # while a job computes, its progress is re-reported this often (the bar moves in untiled stages)
COMPUTE_SPAN = (0.05, 0.95)  # the share of the progress bar the computation takes (reading before, writing after)
CHOICE_SPAN = (0.03, 0.25)  # ... and the choice of the references, when the job chooses them (the rest computes)
CANCELLED = 'The job was cancelled.'


class JobError(ValueError):
    """A job that cannot run or failed; the message is for the person who asked for it."""


class JobCancelled(JobError):
    """The job was cancelled (its cancel event was set: the page's Cancel button, or its tab was closed)."""


@dataclass
class ModelEntry:
    """A model the page offers: a checkpoint with its options (``W.yml`` beside ``W.pth``, or read off the weights
    by the architectures' descriptors)."""

    label: str
    weights: Path
    arch: str
    uses_reference: bool


def model_entry(weights: Path, label: Optional[str] = None) -> ModelEntry:
    """The entry of a checkpoint ``W.pth`` with its options ``W.yml`` (``network_g``), or, without one, with the
    options read off its weights; :class:`JobError` if unusable."""
    from extracter.archs.descriptor import descriptor_of

    weights = Path(weights)
    name = label or weights.name
    if weights.suffix.lower() not in WEIGHT_SUFFIXES:
        raise JobError(f'The model file {name} is not a checkpoint (expected a {" or ".join(WEIGHT_SUFFIXES)} file).')
    if not weights.is_file():
        raise JobError(f'The model file {name} does not exist.')
    options = weights.with_suffix('.yml')
    if not options.is_file():
        arch = arch_read_off_weights(weights)
        if arch is None:
            raise JobError(f'The model {name} has no options file beside it ({options.name} with a network_g block) '
                           'and its architecture cannot be read off the weights; convert original checkpoints with '
                           'scripts/convert_official.py, which writes one.')
        return ModelEntry(name, weights, arch, descriptor_of(arch).uses_reference)
    try:
        with open(options, encoding='utf-8') as f:
            arch = ((yaml.safe_load(f) or {}).get('network_g') or {}).get('type')
        descriptor = descriptor_of(arch)
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        raise JobError(f'The options file of the model {name} ({options.name}) has no usable network_g type.') \
            from None
    return ModelEntry(name, weights, str(arch), descriptor.uses_reference)


def _one_reference(entry: ModelEntry) -> bool:
    """Whether the model's correspondence search is its own stage (C2-Matching): one reference per image."""
    from extracter.archs.descriptor import descriptor_of

    return descriptor_of(entry.arch).own_search


def arch_read_off_weights(weights: Path) -> Optional[str]:
    """The architecture of a checkpoint without a YAML where its state dict tells it (as ``infer.py`` loads it:
    :func:`extracter.inference.network.options_from_weights`); None if it cannot be read or told."""
    from extracter.inference.network import options_from_weights
    from extracter.utils.checkpoint import CheckpointError, load_checkpoint, network_state

    try:
        options = options_from_weights(network_state(load_checkpoint(str(weights)), str(weights), None))
    except (CheckpointError, OSError, ValueError):
        return None
    return None if options is None else str(options.get('type'))


def find_models(folder: Path) -> List[ModelEntry]:
    """Every checkpoint under ``folder`` (recursively) whose network is known (options beside it, or read off the
    weights), sorted by path."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        return []
    found = []
    for weights in sorted(p for p in folder.rglob('*') if p.suffix.lower() in WEIGHT_SUFFIXES):
        try:
            found.append(model_entry(weights, str(weights.relative_to(folder))))
        except JobError as err:
            LOG.info('not offering %s: %s', weights, err)
    return found


def default_memory_budget(device: str = 'cpu', fraction: float = 0.5) -> str:
    """``fraction`` of the memory free now (the device's for CUDA, else the machine's available RAM), in half GiB
    steps, at least 0.5G: the budget a job gets when the page does not set one."""
    free = None
    if device.startswith('cuda') and torch.cuda.is_available():
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        try:
            with open('/proc/meminfo', encoding='ascii') as f:
                info = dict(line.split(':', 1) for line in f if ':' in line)
            free = int(info['MemAvailable'].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            try:
                free = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
            except (ValueError, OSError, AttributeError):
                free = None
    if not free:
        return '2G'
    halves = max(1, math.floor(free * fraction / 2 ** 29))
    return f'{halves / 2:g}G'


@dataclass
class JobRequest:
    """What the page sends: paths of uploaded files (inside the runner's ``upload_dir``), the model's checkpoint,
    and optional memory budget (``'6G'``) and search mode (one of :data:`SEARCH_MODES`; None: ``'auto'``, as
    ``infer.py``'s default)."""

    lr: Optional[str]
    refs: Sequence[str] = ()
    model: Optional[str] = None
    max_memory: Optional[str] = None
    search_mode: Optional[str] = None
    lr_name: Optional[str] = None  # names to show in messages (and the SR's file name, sanitised)
    ref_names: Optional[Sequence[str]] = None
    # "choose references for me": the references are chosen among these uploads, or the photos of this folder on
    # the server (as infer.py --gallery; refs must then be empty), refs_per_image of them
    gallery_files: Sequence[str] = ()
    gallery_dir: Optional[str] = None
    refs_per_image: int = DEFAULT_REFS_PER_IMAGE

    @property
    def chooses_references(self) -> bool:
        return bool(self.gallery_files) or bool((self.gallery_dir or '').strip())


@dataclass
class Progress:
    """A progress report: the stage, the fraction done (0..1) and the estimated seconds left (None: unknown)."""

    stage: str
    fraction: float
    eta_s: Optional[float] = None

    @property
    def text(self) -> str:
        if self.eta_s is None:
            return self.stage
        return f'{self.stage} (about {format_seconds(self.eta_s)} left)'


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f'{s} s' if s < 90 else f'{s // 60} min {s % 60:02d} s'


@dataclass
class JobResult:
    """What a job produced: the PNGs it wrote (in its own folder), the images, and what to tell the person."""

    job_id: str
    folder: Path
    files: Dict[str, Path]
    sr: np.ndarray
    bicubic: np.ndarray
    textures: List[Tuple[str, Path]]  # the texture-source panels (label, PNG), none for a single-image model
    relevance: Optional[Dict[str, float]]
    model: str
    single_image: bool
    seconds: float
    plan: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    search: Optional[str] = None  # the search that ran, and why (RefSR)
    chosen: List[Dict[str, object]] = field(default_factory=list)  # the references chosen for the photo (gallery)


def _safe_name(name: Optional[str], fallback: str) -> str:
    """An uploaded file's name, for messages only: its last component, printable, at most 60 characters."""
    if not name:
        return fallback
    base = re.split(r'[\\/]', str(name))[-1]
    base = ''.join(c for c in base if c.isprintable())[:60]
    return base or fallback


class JobRunner:
    """Runs :class:`JobRequest` s one at a time; see the module docstring.

    Args:
        output_dir: the runner's own folder; jobs write ``output_dir/jobs/<job id>/``.
        upload_dir: the folder of uploads, input files are read from (default ``output_dir/uploads``).
        examples_dir: the other folder input files are read from: the page's examples (default
            ``output_dir/examples``).
        device: ``'cpu'`` or ``'cuda[:N]'``.
        max_memory: the default budget of a job (default :func:`default_memory_budget`).
        models: the models offered (their checkpoints may be read); a request may also name another checkpoint
            when ``allow_model_paths`` is set (the page's path box, off when the page listens on all interfaces).
        max_waiting: jobs that may wait behind the running one; more are refused.
        keep_jobs, keep_mb: the retention policy, applied after each job: the newest ``keep_jobs`` job folders are
            kept, and older ones are removed (oldest first) also while all of them together take more than
            ``keep_mb`` megabytes; the job that just ran is never removed. Uploads (top-level entries of
            ``upload_dir``) older than the oldest job kept, and than an hour, are removed too, except those of
            the running and waiting jobs.
    """

    def __init__(self, output_dir: Path, upload_dir: Optional[Path] = None, device: str = 'cpu',
                 max_memory: Optional[str] = None, models: Sequence[ModelEntry] = (), allow_model_paths: bool = True,
                 max_waiting: int = 4, keep_jobs: int = DEFAULT_KEEP_JOBS,
                 keep_mb: float = DEFAULT_KEEP_MB, examples_dir: Optional[Path] = None) -> None:
        self.output_dir = Path(output_dir).resolve()
        self.upload_dir = Path(upload_dir).resolve() if upload_dir else self.output_dir / 'uploads'
        self.examples_dir = Path(examples_dir).resolve() if examples_dir else self.output_dir / 'examples'
        self.jobs_dir = self.output_dir / 'jobs'
        self.device = device
        self.max_memory = max_memory or default_memory_budget(device)
        InferenceOptions(max_memory=self.max_memory)  # checked now (a ValueError naming it)
        self.models = list(models)
        self.allow_model_paths = allow_model_paths
        self.max_waiting = max_waiting
        if keep_jobs < 1 or not keep_mb > 0:
            raise ValueError(f'keep_jobs must be at least 1 and keep_mb above 0, got {keep_jobs} and {keep_mb}')
        self.keep_jobs = keep_jobs
        self.keep_bytes = int(keep_mb * 2 ** 20)
        self._cond = threading.Condition()
        self._waiting: deque = deque()
        self._busy = False
        self._count = 0
        self._net_cache: Optional[Tuple[Tuple[str, float, str], torch.nn.Module]] = None
        self._parameters: Dict[str, int] = {}  # per checkpoint: the network's parameter count (its work per pixel)
        self.speed = SpeedBook()  # this machine's measured speed, per model and kind of work
        self._clock: Optional[JobClock] = None  # the running job's

    # ------------------------------------------------------------------ queue
    @property
    def busy(self) -> bool:
        with self._cond:
            return self._busy

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def run(self, request: JobRequest, report: Optional[Callable[[Progress], None]] = None,
            cancel: Optional[threading.Event] = None) -> JobResult:
        """Run ``request`` when its turn comes (reporting ``queued: ...`` and the wait meanwhile), then report its
        stages. Raises :class:`JobError` with a message in plain words for any failure, :class:`JobCancelled` once
        ``cancel`` is set (checked while waiting, as each stage starts and after each tile)."""
        report = report or (lambda p: None)
        cancel = cancel or threading.Event()
        if cancel.is_set():  # cancelled before it was asked for (the page: Cancel while it waited in Gradio's queue)
            raise JobCancelled(CANCELLED)
        ticket = _Ticket(request, self.estimate_seconds(request))
        with self._cond:
            if (self._busy or self._waiting) and len(self._waiting) >= self.max_waiting:  # it would wait
                raise JobError(f'The page is busy: {len(self._waiting)} jobs are already waiting. Try again in a '
                               'few minutes.')
            self._waiting.append(ticket)
            try:
                while True:  # a job cancelled before its turn never starts (nor is it checked)
                    if cancel.is_set():
                        raise JobCancelled(CANCELLED)
                    if not self._busy and self._waiting[0] is ticket:
                        break
                    report(Progress(self._queue_text(ticket), 0.0))
                    self._cond.wait(timeout=1.0)
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()
            self._busy = True
        try:
            result = self._run_guarded(request, _Reporter(report, cancel))
            self._apply_retention(result.folder, request)
            return result
        except JobCancelled:
            LOG.info('a job was cancelled')
            raise
        finally:
            with self._cond:
                self._busy = False
                self._clock = None
                self._cond.notify_all()

    def _queue_text(self, ticket: '_Ticket') -> str:
        """``queued: N job(s) ahead of yours`` and how long until it starts: the running job's time left and the
        estimates of the jobs waiting ahead (called with the lock held)."""
        ahead_tickets = list(self._waiting)[:list(self._waiting).index(ticket)]
        ahead = len(ahead_tickets) + (1 if self._busy else 0)
        waits = [t.estimate for t in ahead_tickets]
        if self._busy:
            waits.append(None if self._clock is None else self._clock.seconds_left())
        text = f'queued: {ahead} job(s) ahead of yours'
        if any(w is None for w in waits):
            return text + '; it starts when they finish'
        return text + f'; it starts in about {format_seconds(sum(waits))}'

    def estimate_seconds(self, request: JobRequest) -> Optional[float]:
        """The computation's seconds for ``request`` on this machine (None: not known yet: its model is not the one
        loaded, or not in the list, or nothing of its kind was measured, or the request is not valid). Reads only the
        photos' headers."""
        if request.chooses_references:
            return None  # the references are not known before the choice
        if request.model and all(str(m.weights) != str(request.model) for m in self.models):
            return None  # a checkpoint outside the list: never read for an estimate
        try:
            with_refs = bool(request.refs)
            entry = self._choose_model(request, with_refs, [])
            net = self._cached_network(entry)
            if net is None:
                return None
            sizes = [_header_size(self._input_path(p, 'photo')) for p in (request.lr, *request.refs)]
            stages = self._stages(net, entry, sizes[0], sizes[1:] if entry.uses_reference else [],
                                  self._inference_options(request))
        except (JobError, OSError, ValueError, Image.DecompressionBombError):
            return None
        return self.speed.estimate(str(entry.weights), stages)

    def _stages(self, net, entry: ModelEntry, lr_hw: Tuple[int, int], ref_hws: Sequence[Tuple[int, int]],
                options: InferenceOptions) -> List[Stage]:
        """The job's stages and their work (:mod:`extracter.app.timing`), from the sizes the engine computes on."""
        params = self._parameters[str(entry.weights)]
        if not entry.uses_reference:
            return single_image_stages(lr_hw[0] * lr_hw[1], params, max(lr_hw) > SISR_TILE['tile_size'])
        spec = net.search_spec(geometry=options.search.geometry)
        lr_mult, ref_mult = net.size_multiples(spec)
        lr_p = _padded(lr_hw, lr_mult)
        refs_p = [_padded(hw, ref_mult) for hw in ref_hws]
        choice = choose_search(spec, options.search.mode, lr_p, refs_p, budgeted=True)
        return refsr_stages([h * w for h, w in refs_p], choice.spec.method, choice.multiply_adds,
                            lr_p[0] * lr_p[1], params)

    def _run_guarded(self, request: JobRequest, report: '_Reporter') -> JobResult:
        try:
            return self._run(request, report)
        except JobError:
            raise
        except MemoryBudgetError as err:
            text = str(err).replace('max_memory=', 'the memory budget of ').replace('raise max_memory',
                                                                                    'raise the memory budget')
            raise JobError(f'Not enough memory for this job: {text}.') from None
        except NetworkLoadError as err:
            raise JobError(f'The model could not be loaded: {err}.') from None
        except MemoryError:
            raise JobError('The machine ran out of memory for this job: lower the memory budget or use a smaller '
                           'photo or reference.') from None
        except RuntimeError as err:
            if 'out of memory' in str(err).lower():
                if self.device.startswith('cuda'):
                    torch.cuda.empty_cache()
                raise JobError('The graphics card ran out of memory for this job: lower the memory budget or use a '
                               'smaller photo or reference.') from None
            LOG.exception('job failed')
            raise JobError(f'The job failed unexpectedly ({type(err).__name__}: {err}). The page keeps working; '
                           'the details are in the server log.') from None
        except Exception as err:  # noqa: BLE001  nothing a job does may take the server down
            LOG.exception('job failed')
            raise JobError(f'The job failed unexpectedly ({type(err).__name__}: {err}). The page keeps working; '
                           'the details are in the server log.') from None

    # ------------------------------------------------------------------ retention
    def _apply_retention(self, current: Path, request: JobRequest) -> None:
        """Remove old job folders and uploads (see the class docstring); a failure is logged, never raised."""
        try:
            kept = prune_job_folders(self.jobs_dir, current, self.keep_jobs, self.keep_bytes)
            with self._cond:
                in_use = [request] + [t.request for t in self._waiting]
            paths = [p for r in in_use for p in (r.lr, *r.refs, *r.gallery_files) if p]
            cutoff = min([_mtime(f) for f in kept] + [time.time() - UPLOAD_GRACE_S])
            prune_uploads(self.upload_dir, cutoff, paths)
        except OSError as err:
            LOG.warning('could not remove old jobs or uploads: %s', err)

    # ------------------------------------------------------------------ one job
    def _input_path(self, path: Optional[str], label: str) -> Path:
        if not path:
            raise JobError(f'Please add {label}.')
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(root) for root in (self.upload_dir, self.examples_dir)):
            raise JobError(f'{label[0].upper()}{label[1:]} was not uploaded through this page; upload it again.')
        if not resolved.is_file():
            raise JobError(f'{label[0].upper()}{label[1:]} is no longer on the server; upload it again.')
        return resolved

    def _read(self, path: Path, label: str, notes: List[str]) -> np.ndarray:
        """``read_image`` with its errors and warnings worded for the page (the server path replaced by ``label``)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always', ImageInputWarning)
            try:
                img = read_image(path)
            except ImageTooLargeError as err:
                raise JobError(_too_large_text(str(err), path, label)) from None
            except ImageReadError as err:
                raise JobError(_reword(str(err), path, label)) from None
            except MemoryError:
                raise JobError(f'{label} is too large to decode on this machine.') from None
        for w in caught:
            if issubclass(w.category, ImageInputWarning):
                notes.append(_reword(str(w.message), path, label))
        return img

    def _choose_model(self, request: JobRequest, with_refs: bool, notes: List[str]) -> ModelEntry:
        if request.model:
            entry = next((m for m in self.models if str(m.weights) == str(request.model)), None)
            if entry is None:
                if not self.allow_model_paths:
                    raise JobError('Choose one of the models offered in the list.')
                entry = model_entry(Path(request.model).expanduser())
        elif self.models:
            entry = next((m for m in self.models if m.uses_reference == with_refs), self.models[0])
        else:
            raise JobError('No model is available: put a checkpoint with its .yml options in pretrained/, or give '
                           'the path of a converted checkpoint.')
        if with_refs or not entry.uses_reference:
            if with_refs and not entry.uses_reference:
                notes.append(f'{entry.label} is a single-image model: the reference photos were not used.')
            elif not with_refs and not request.model:
                notes.append(f'No reference photo was given: used the single-image model {entry.label}.')
            return entry
        single = next((m for m in self.models if not m.uses_reference), None)
        if single is None:
            raise JobError('No reference photo was given, and no single-image model is available: add one or more '
                           'reference photos (pictures of the same scene or subject, in high resolution), or put a '
                           'single-image (DRCT) checkpoint in pretrained/.')
        notes.append(f'No reference photo was given: used the single-image model {single.label}.')
        return single

    def _network(self, entry: ModelEntry) -> torch.nn.Module:
        key = (str(entry.weights), entry.weights.stat().st_mtime, self.device)
        if self._net_cache is None or self._net_cache[0] != key:
            self._net_cache = None  # free the previous model first
            net = load_network(str(entry.weights), device=self.device)
            self._parameters[str(entry.weights)] = sum(p.numel() for p in net.parameters())
            self._net_cache = (key, net)
        return self._net_cache[1]

    def _cached_network(self, entry: ModelEntry) -> Optional[torch.nn.Module]:
        """The network of ``entry`` if it is the one loaded (an estimate never loads a model)."""
        cache = self._net_cache
        if cache is None or cache[0][0] != str(entry.weights) or str(entry.weights) not in self._parameters:
            return None
        return cache[1]

    def _new_job_folder(self) -> Tuple[str, Path]:
        """A new folder of its own for a job. Creating it (``mkdir``, which fails if the name exists) is the claim, so
        two page processes sharing ``output_dir`` never write into one folder, and need no lock: should their ids
        ever collide (same second and count, and 24 random bits), the second takes another id."""
        for _ in range(JOB_ID_ATTEMPTS):
            self._count += 1
            job_id = f'{time.strftime("%Y%m%d-%H%M%S")}-{self._count:04d}-{secrets.token_hex(3)}'
            folder = self.jobs_dir / job_id
            try:
                folder.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                continue
            return job_id, folder
        raise JobError(f'Could not make a new job folder in {self.jobs_dir} (every name tried exists).')

    def _run(self, request: JobRequest, report: '_Reporter') -> JobResult:
        t0 = time.time()
        notes: List[str] = []
        lr_label = f'the photo to enlarge ({_safe_name(request.lr_name or request.lr, "LR")})'
        ref_names = list(request.ref_names or request.refs)
        ref_labels = [f'reference {i + 1} ({_safe_name(ref_names[i] if i < len(ref_names) else p, "reference")})'
                      for i, p in enumerate(request.refs)]
        lr_path = self._input_path(request.lr, 'the photo to enlarge (the low-resolution photo)')
        ref_paths = [self._input_path(p, label) for p, label in zip(request.refs, ref_labels)]
        gallery = self._gallery_source(request)
        options = self._inference_options(request)
        entry = self._choose_model(request, bool(ref_paths) or gallery is not None, notes)

        report(Progress('reading the photos', 0.02))
        lq = self._read(lr_path, lr_label, notes)
        h, w = lq.shape[:2]
        if min(h, w) < MIN_LR_SIDE:
            raise JobError(f'{_cap(lr_label)} is only {w} x {h} pixels; it must be at least {MIN_LR_SIDE} x '
                           f'{MIN_LR_SIDE}.')
        chosen: List[Dict[str, object]] = []
        if gallery is not None and entry.uses_reference:
            ref_paths, chosen = self._choose_references(entry, lr_path, gallery, request, report, notes)
            ref_labels = [f'reference {i + 1} ({_safe_name(p.name, "reference")})' for i, p in enumerate(ref_paths)]
        refs = []
        if entry.uses_reference:
            read = [self._read(path, label, notes) for path, label in zip(ref_paths, ref_labels)]
            for ref, label in _without_duplicates(read, ref_labels, notes):
                rh, rw = ref.shape[:2]
                if min(rh, rw) < MIN_REF_SIDE or rh * rw < MIN_REF_AREA_RATIO * h * w:
                    raise JobError(f'{_cap(label)} is {rw} x {rh} pixels, far smaller than the {w} x {h} photo to '
                                   'enlarge: it cannot supply its details. Use a reference at least as large as the '
                                   'photo, ideally a high-resolution picture of the same scene.')
                if rh * rw < h * w:
                    notes.append(f'{_cap(label)} ({rw} x {rh}) is smaller than the photo to enlarge ({w} x {h}): it '
                                 'can give little detail; a reference about 4 times as wide works best.')
                refs.append(ref)
            if len(refs) > 1 and _one_reference(entry):
                raise JobError(f'The model {entry.label} ({entry.arch}) takes one reference photo per photo to '
                               f'enlarge; {len(refs)} were given. Keep the best one, or choose another model.')

        report(Progress(f'loading the model {entry.label}', 0.04))
        net = self._network(entry)
        clock = JobClock(self.speed, str(entry.weights),
                         self._stages(net, entry, (h, w), [r.shape[:2] for r in refs], options))
        with self._cond:
            self._clock = clock
        span = (CHOICE_SPAN[1], COMPUTE_SPAN[1]) if chosen else COMPUTE_SPAN  # after a choice: the rest of the bar
        with report.ticking(clock, span):
            if entry.uses_reference:
                out = self._run_refsr(net, lq, refs, options, report)
            else:
                out = self._run_single(net, lq, report)
            clock.finish()
        report(Progress('writing the result', 0.97))  # the last point where a Cancel applies: nothing written yet
        job_id, folder = self._new_job_folder()
        try:
            files, textures = _write_outputs(out, job_id, folder, download_stem(request.lr_name or request.lr),
                                             out['sr'].shape[0] // h)
            chosen = _write_chosen(chosen, folder, files)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # all of a job's files or none
            raise
        seconds = time.time() - t0
        report.final(Progress('done', 1.0))
        return JobResult(job_id, folder, files, out['sr'], out['bicubic'], textures, out.get('relevance'),
                         entry.label, not entry.uses_reference, seconds, out.get('plan'), notes,
                         out.get('search_used'), chosen)

    # ------------------------------------------------------------------ references chosen for the photo
    def _gallery_source(self, request: JobRequest) -> Optional[Tuple[Path, Optional[Path]]]:
        """``(gallery folder, index path)`` of a "choose references for me" request, None otherwise. Uploads are
        linked into a folder of the upload area named by their contents (the same set reuses its index, kept beside
        it: the page's own folder); a named folder is read where it is, its index in the user's cache as infer.py
        keeps it."""
        if not request.chooses_references:
            return None
        if request.refs:
            raise JobError('Give either reference photos or photos to choose the references from, not both.')
        if not isinstance(request.refs_per_image, int) or request.refs_per_image < 1:
            raise JobError(f'The number of references per photo must be a whole number of at least 1, got '
                           f'{request.refs_per_image!r}.')
        if request.gallery_files and (request.gallery_dir or '').strip():
            raise JobError('Give either photos to choose from or a folder, not both.')
        if request.gallery_files:
            files = [self._input_path(p, f'photo {i + 1} to choose from')
                     for i, p in enumerate(request.gallery_files)]
            return self._uploaded_gallery(files)
        if not self.allow_model_paths:
            raise JobError('This page does not read folders of the server; upload the photos to choose from.')
        text = str(request.gallery_dir).strip()
        folder = Path(text).expanduser()
        if not folder.exists():
            raise JobError(f'The folder {text} does not exist on this machine.')
        if not folder.is_dir():
            raise JobError(f'{text} is a file, not a folder: give a folder of photos.')
        if not os.access(folder, os.R_OK | os.X_OK):
            raise JobError(f'The folder {text} cannot be read by the page (no permission).')
        return folder.resolve(), None

    def _uploaded_gallery(self, files: Sequence[Path]) -> Tuple[Path, Path]:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode() + b'\0' + hashlib.sha256(f.read_bytes()).digest())
        home = self.upload_dir / f'gallery-{digest.hexdigest()[:16]}'
        folder = home / 'photos'
        folder.mkdir(parents=True, exist_ok=True)
        used: Dict[str, int] = {}
        for f in files:
            name = f.name
            if name in used:  # two uploads of one name: the second gets a number
                used[name] += 1
                name = f'{f.stem}_{used[f.name]}{f.suffix}'
            used.setdefault(f.name, 1)
            target = folder / name
            if not target.exists():
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copyfile(f, target)
        return folder, home / 'index.npz'

    def _choose_references(self, entry: ModelEntry, lr_path: Path, gallery: Tuple[Path, Optional[Path]],
                           request: JobRequest, report: '_Reporter',
                           notes: List[str]) -> Tuple[List[Path], List[Dict[str, object]]]:
        """The photo's references chosen from ``gallery`` by :func:`extracter.gallery.folder.choose_references`
        (infer.py --gallery's own call: the same choice for the same inputs), a stage of its own on the clock."""
        folder, index_path = gallery
        net = self._network(entry)
        n = sum(1 for p in folder.rglob('*') if p.is_file())
        clock = JobClock(self.speed, str(entry.weights), [Stage('choosing the references', 'gallery', float(n))])
        with self._cond:
            self._clock = clock
        report(Progress('choosing the references', CHOICE_SPAN[0]))
        with report.ticking(clock, CHOICE_SPAN):
            clock.enter(0)
            try:
                choice = choose_references(net, [str(lr_path)], folder, request.refs_per_image, index_path,
                                           DEFAULT_SHORTLIST, self.device, progress=False)
            except (OSError, ValueError) as err:
                raise JobError(f'The references could not be chosen: {err}.') from None
            clock.finish()
        report(Progress('references chosen', CHOICE_SPAN[1]))  # a Cancel during the choice applies here
        notes += [n.split(': ', 1)[-1] for n in choice.notes]
        paths = choice.refs.get(lr_path.name)
        if not paths:
            raise JobError('No reference could be chosen among the photos given: none of them can be used '
                           '(see the notes of the log).')
        return [Path(p) for p in paths], list(choice.rows)

    def _inference_options(self, request: JobRequest) -> InferenceOptions:
        """The job's inference options (the same schema and route as infer.py's flags and the YAML ``val``
        section), with the page's words for what is wrong."""
        if request.search_mode not in (None, '') + SEARCH_MODES:
            raise JobError(f'Unknown search mode {request.search_mode!r}: choose one of {", ".join(SEARCH_MODES)}.')
        budget = request.max_memory or self.max_memory
        try:
            return InferenceOptions(max_memory=budget, search=SearchOptions(mode=request.search_mode or DEFAULT_SEARCH))
        except InferenceOptionError as err:
            if str(err).startswith('max_memory'):
                raise JobError(f'The memory budget {budget!r} is not a size: write it like 4G or 512M.') from None
            raise JobError(f'{str(err)[:1].upper()}{str(err)[1:]}.') from None

    def _run_refsr(self, net, lq: np.ndarray, refs: List[np.ndarray], options: InferenceOptions,
                   report: '_Reporter') -> Dict:
        run_kwargs = options.run_kwargs()
        lr_mult, ref_mult = net.size_multiples(net.search_spec(geometry=options.search.geometry))
        sample = batch_of_one(inference_sample(lq, refs, lr_mult, ref_mult))
        result = super_resolve(net, sample, self.device, run_kwargs, texture_map=True, progress=report.tile,
                               stage=report.stage)
        result['plan'] = result['plan'].describe() if result.get('plan') is not None else None
        return result

    def _run_single(self, net, lq: np.ndarray, report: '_Reporter') -> Dict:
        lr = deg.to_tensor(lq)[None].to(self.device)
        h, w = lq.shape[:2]
        tile = SISR_TILE if max(h, w) > SISR_TILE['tile_size'] else None
        report.enter_first()
        sr = run_sisr(net, lr, tile=tile, progress=report.tile)
        scale = sr.shape[-1] // w
        return {'sr': tensor_to_uint8(sr), 'bicubic': deg.make_lq_up(lq, (scale * h, scale * w))}


def _write_outputs(out: Dict, job_id: str, folder: Path, stem: str,
                   scale: int) -> Tuple[Dict[str, Path], List[Tuple[str, Path]]]:
    """The job's PNGs (each written atomically): the SR named after the photo, the bicubic, and each texture panel
    as a picture of its own (readable with several references), its label above it, at least TEXTURE_MIN_H pixels
    high so that the label fits. Returns the files by kind and the panels as (label, file)."""
    files = {'sr': folder / f'{stem}_x{scale}.png', 'bicubic': folder / f'{job_id}_bicubic.png'}
    save_png(out['sr'], files['sr'])
    save_png(out['bicubic'], files['bicubic'])
    textures = []
    height = min(max(out['sr'].shape[0], TEXTURE_MIN_H), 512)
    for i, (label, panel) in enumerate(out.get('texture_panels') or [], start=1):
        files[f'texture_{i}'] = folder / f'{job_id}_texture_{i}.png'
        save_png(side_by_side([(label, panel)], height=height), files[f'texture_{i}'])
        textures.append((label, files[f'texture_{i}']))
    return files, textures


CHOSEN_THUMB = 192  # the long side of a chosen reference's thumbnail on the page


def _write_chosen(rows: List[Dict[str, object]], folder: Path, files: Dict[str, Path]) -> List[Dict[str, object]]:
    """The chosen references in the job's folder: ``references.csv`` (infer.py's columns) and a thumbnail of each
    (the page shows them; a folder on the server is never served). Returns the rows with ``name`` and ``thumb``."""
    if not rows:
        return []
    files['references'] = folder / CSV_NAME
    atomic_write_text(files['references'], references_csv_text(rows))
    out = []
    for row in rows:
        thumb = folder / f'chosen_{row["rank"]}.png'
        with Image.open(str(row['reference'])) as img:
            small = ImageOps.exif_transpose(img).convert('RGB')
            small.thumbnail((CHOSEN_THUMB, CHOSEN_THUMB))
        save_png(np.asarray(small), thumb)
        files[f'chosen_{row["rank"]}'] = thumb
        out.append({**row, 'name': Path(str(row['reference'])).name, 'thumb': thumb})
    return out


@dataclass(eq=False)
class _Ticket:
    """A place in the queue (compared by identity), with the request that waits in it."""

    request: JobRequest
    estimate: Optional[float] = None  # its computation's seconds, when known (the queue's wait)


class _Reporter:
    """A job's progress reports: fixed steps (reading, loading, writing), and during the computation the
    :class:`JobClock`'s stage, fraction and time left, re-reported every :data:`TICK_S` by a timer thread. Every
    report from the job's own thread first checks ``cancel`` (raising :class:`JobCancelled`)."""

    def __init__(self, report: Callable[[Progress], None], cancel: threading.Event) -> None:
        self._report, self.cancel = report, cancel
        self._lock = threading.Lock()
        self.clock: Optional[JobClock] = None
        self.span = COMPUTE_SPAN  # the share of the bar the clock followed now fills
        self._last = 0.0  # the bar never moves back

    def __call__(self, p: Progress) -> None:
        self._check()
        self._send(p)

    def final(self, p: Progress) -> None:
        """A report that no longer checks the cancel event (the result is written)."""
        self._send(p)

    def _check(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled(CANCELLED)

    def _send(self, p: Progress) -> None:
        with self._lock:
            self._last = max(self._last, p.fraction)
            p = Progress(p.stage, self._last, p.eta_s)
            self._report(p)

    def _clock_progress(self) -> None:
        clock = self.clock
        if clock is None:
            return
        lo, hi = self.span
        self._send(Progress(clock.text(), lo + (hi - lo) * clock.fraction(), clock.seconds_left()))

    # the engine's callbacks (run in the job's thread)
    def stage(self, text: str) -> None:
        self._check()
        if self.clock is not None:
            self.clock.enter_text(text)
        self._clock_progress()

    def enter_first(self) -> None:
        self._check()
        if self.clock is not None:
            self.clock.enter(0)
        self._clock_progress()

    def tile(self, done: int, total: int) -> None:
        self._check()
        if self.clock is not None:
            self.clock.tile(done, total)
        self._clock_progress()

    @contextmanager
    def ticking(self, clock: JobClock, span: Tuple[float, float] = COMPUTE_SPAN):
        """Follow ``clock`` and re-report it every :data:`TICK_S` until the block ends. The timer thread runs in a
        copy of the job thread's context (context variables: Gradio finds the job's progress display by them)."""
        self.clock, self.span = clock, span
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(TICK_S):
                self._clock_progress()

        timer = threading.Thread(target=contextvars.copy_context().run, args=(tick,), name='extracter-app-progress',
                                 daemon=True)
        timer.start()
        try:
            yield clock
        finally:
            stop.set()
            timer.join()
            self.clock, self.span = None, COMPUTE_SPAN


def _padded(hw: Tuple[int, int], multiple: int) -> Tuple[int, int]:
    return (-(-int(hw[0]) // multiple) * multiple, -(-int(hw[1]) // multiple) * multiple)


def _header_size(path: Path) -> Tuple[int, int]:
    """(height, width) from the picture's header (nothing decoded)."""
    with Image.open(path) as img:
        return img.size[1], img.size[0]


def _mtime(path: Path) -> float:
    return path.lstat().st_mtime


def _bytes_under(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob('*') if not p.is_dir() or p.is_symlink())


def prune_job_folders(jobs_dir: Path, current: Path, keep: int, keep_bytes: int) -> List[Path]:
    """Remove the oldest job folders under ``jobs_dir`` until at most ``keep`` remain and they take at most
    ``keep_bytes``, never ``current``; returns the folders kept (``current`` among them)."""
    folders = sorted((p for p in jobs_dir.iterdir() if p.is_dir() and not p.is_symlink()),
                     key=lambda p: (p == current, _mtime(p), p.name))  # oldest first, the current one last
    sizes = {p: _bytes_under(p) for p in folders}
    total = sum(sizes.values())
    kept = list(folders)
    for folder in folders[:-1] if folders and folders[-1] == current else folders:
        if len(kept) <= keep and total <= keep_bytes:
            break
        shutil.rmtree(folder)
        kept.remove(folder)
        total -= sizes[folder]
        LOG.info('removed the old job folder %s (keeping %d jobs, at most %d MB)', folder.name, keep,
                 keep_bytes // 2 ** 20)
    return kept


def prune_uploads(upload_dir: Path, cutoff: float, in_use: Sequence[str]) -> None:
    """Remove the top-level entries of ``upload_dir`` (one per upload, as Gradio stores them) last changed before
    ``cutoff``, except those holding a path of ``in_use``; nothing outside ``upload_dir`` (links are not
    followed)."""
    if not upload_dir.is_dir():
        return
    protected = set()
    for path in in_use:
        try:
            protected.add(Path(path).resolve().relative_to(upload_dir).parts[0])
        except (ValueError, IndexError):
            continue
    for entry in upload_dir.iterdir():
        if entry.name in protected:
            continue
        newest = max([_mtime(entry)] + ([_mtime(p) for p in entry.iterdir()] if entry.is_dir() and
                                        not entry.is_symlink() else []))
        if newest >= cutoff:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _without_duplicates(refs: List[np.ndarray], labels: Sequence[str],
                        notes: List[str]) -> List[Tuple[np.ndarray, str]]:
    """``(reference, label)`` for each decoded picture once, in order (the same photo uploaded twice would change
    the search's result); a note names each one left out."""
    seen: Dict[Tuple, int] = {}
    kept = []
    for i, ref in enumerate(refs):
        key = (ref.shape, ref.dtype.str, hashlib.sha256(np.ascontiguousarray(ref).tobytes()).hexdigest())
        if key in seen:
            notes.append(f'{_cap(labels[i])} is the same photo as {labels[seen[key]]}: used once.')
            continue
        seen[key] = i
        kept.append((ref, labels[i]))
    return kept


def download_stem(name: Optional[str]) -> str:
    """The stem of the uploaded photo's name for the result's file name (``walk10_lr.png`` -> ``walk10_lr``):
    letters, digits, ``.``, ``-`` and ``_`` only, at most 60 characters, never hidden; ``photo`` if nothing is
    left."""
    base = re.split(r'[\\/]', str(name or ''))[-1]
    stem = base.rsplit('.', 1)[0] if '.' in base.lstrip('.') else base
    stem = re.sub(r'[^A-Za-z0-9._-]+', '_', stem).strip('._-')[:60].strip('._-')
    return stem or 'photo'


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _too_large_text(message: str, path: Path, label: str) -> str:
    """The size guard's refusal in plain words: how large the picture is, the page's limit and the option that
    raises it (no module names)."""
    size = re.search(r'the image is (.*?), more than the limit of (.*?) pixels', message)
    need = re.search(r'--max-image-pixels (\d+)', message)
    if not size or not need:
        return re.sub(r'\s*\((?:[a-z_]+\.)+[a-z_]+\)', '', _reword(message, path, label))
    return (f'{_cap(label)} is {size.group(1)}, more than this page accepts ({size.group(2)} pixels; a guard '
            'against files that only claim to be huge pictures). If it is a real photo, start the page with '
            f'--max-image-pixels {need.group(1)}, or use a smaller copy.')


def _reword(message: str, path: Path, label: str) -> str:
    """A reader message about ``path`` reworded for the page: the server path replaced by ``label``."""
    for p in sorted({str(path), os.fspath(path.resolve())}, key=len, reverse=True):
        message = message.replace(p, label)
    message = message.replace('--max-image-pixels', 'the app option --max-image-pixels')
    return _cap(message).rstrip('.') + '.'


__all__ = ['JobCancelled', 'JobError', 'JobRequest', 'JobResult', 'JobRunner', 'ModelEntry', 'Progress',
           'default_memory_budget', 'find_models', 'model_entry']
