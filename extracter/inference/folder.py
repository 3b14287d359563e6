"""Super-resolve files and folders with the engine: what ``infer.py``, the demo and the quality benchmark share.

For every input ``x`` the outputs are ``x_sr.png``, ``x_bicubic.png``, ``x_compare.png`` (bicubic | SR |
references) and optionally ``x_texture.png`` (where the textures came from, drawn from the run's own search).
Guarantees: output names never collide (inputs whose names differ only in the extension get the extension in
their output names), existing outputs are never replaced without ``overwrite``, and an input's outputs are complete
or absent: they are written together (:func:`~extracter.utils.file_io.atomic_write_all`: each to a temporary file,
then all renamed at once), and with ``skip_existing`` an input is skipped only if every one of its outputs exists and
is a whole PNG (:func:`~extracter.utils.visualize.png_problem`); any other is made again, its leftovers replaced (a
rerun finishes an interrupted job, also one killed between two renames or with a file cut short). An interruption
(Ctrl-C, SIGTERM) says what it left (:func:`interruption_note`). Under ``torchrun`` each process takes every
WORLD_SIZE-th input (:func:`shard`). The caller holds the folder's lock (:mod:`extracter.utils.folder_lock`).
"""

import errno
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from extracter.archs.descriptor import descriptor_of
from extracter.archs.refsr_base import SCALE, RefSRNet, bicubic_resize
from extracter.data.image_io import ImageReadError, check_image_file
from extracter.inference.engine import run_refsr, run_sisr
from extracter.inference.reference_cache import CacheStats, ReferenceCache
from extracter.search.transfer import split_index
from extracter.utils.file_io import (
    Terminated,
    atomic_write_all,
    check_writable,
    clean_stale_temp_files,
    ensure_folder,
    set_left_behind,
    written_before_failure,
)
from extracter.utils.visualize import png_problem, png_writer, side_by_side, tensor_to_uint8, texture_source_panels

OUTPUT_KINDS = ('sr', 'bicubic', 'compare')
TEXTURE_KIND = 'texture'


def output_stems(lq_paths: Sequence[str]) -> List[str]:
    """Output name stems: the file stem, or ``stem_ext`` where two inputs share a stem (``a.png``/``a.jpg``)."""
    stems = [Path(p).stem for p in lq_paths]
    counts = Counter(stems)
    out = [f'{s}_{Path(p).suffix.lstrip(".").lower()}' if counts[s] > 1 else s for s, p in zip(stems, lq_paths)]
    dup = [s for s, c in Counter(out).items() if c > 1]
    if dup:  # e.g. 'a.png' and 'a.PNG' in one folder
        raise ValueError(f'inputs would write the same outputs {dup[0]}_*.png: rename one of them')
    return out


def output_paths(out_dir: Path, stem: str, texture_map: bool) -> Dict[str, Path]:
    kinds = list(OUTPUT_KINDS) + ([TEXTURE_KIND] if texture_map else [])
    return {kind: out_dir / f'{stem}_{kind}.png' for kind in kinds}


def shard(n: int, rank: int, world_size: int) -> List[int]:
    """The inputs process ``rank`` of ``world_size`` handles: every world_size-th, starting at ``rank``."""
    return list(range(rank, n, world_size))


def batch_of_one(sample: Dict[str, Any]) -> Dict[str, Any]:
    """A dataset sample as a batch of one (tensors and lists of tensors get a leading dimension)."""
    out = {}
    for key, value in sample.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.unsqueeze(0)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            out[key] = [t.unsqueeze(0) for t in value]
        else:
            out[key] = value
    return out


def super_resolve(net: RefSRNet, sample: Dict[str, Any], device: str, run_kwargs: Dict[str, Any],
                  texture_map: bool = False, progress=None, stage=None,
                  reference_cache: Optional[ReferenceCache] = None) -> Dict[str, Any]:
    """SR of one batch-of-one sample (the inference dataset's contract) with its one or several references, through
    :func:`run_refsr`. Returns uint8 images (``sr``, ``bicubic``, ``refs``), the relevance statistics
    (``relevance``: mean/min/max top-1 relevance) and, with ``texture_map``, the texture-source panels drawn from this
    run's own search result. ``progress``/``stage``: :func:`run_refsr`'s callbacks (tiles done; stage names). A
    single-image network (``uses_reference`` False: DRCT) runs through :func:`run_sisr` on the LR alone (``refs``
    empty, no relevance). ``reference_cache``: the run's encoded references (:func:`run_refsr`)."""
    lq, lq_up = sample['lq'].to(device), sample['lq_up'].to(device)
    h, w = (int(v) for v in sample['lq_size'].reshape(-1)[:2])
    if not descriptor_of(net).uses_reference:
        if texture_map:
            raise ValueError(f'{type(net).__name__} is a single-image network: there is no texture source to map')
        sr = run_sisr(net, lq, progress=progress, **run_kwargs)
        scale = sr.shape[-2] // lq.shape[-2]
        # the dataset's PIL-bicubic x4 LR; another factor: torch's bicubic (for the comparison picture only)
        bicubic = lq_up if scale == SCALE else bicubic_resize(lq, (scale * lq.shape[-2], scale * lq.shape[-1]))
        return {'sr': tensor_to_uint8(sr[..., :scale * h, :scale * w]),
                'bicubic': tensor_to_uint8(bicubic[..., :scale * h, :scale * w]), 'refs': [], 'plan': None,
                'relevance': None, 'scale': scale}
    refs = sample['ref'] if isinstance(sample['ref'], list) else [sample['ref']]
    refs_du = sample['ref_downup'] if isinstance(sample['ref_downup'], list) else [sample['ref_downup']]
    refs = [r.to(device) for r in refs]
    refs_du = [r.to(device) for r in refs_du]
    res = run_refsr(net, lq, refs, lr_up=lq_up, ref_downup=refs_du, progress=progress, stage=stage,
                    return_aux=True, reference_cache=reference_cache, **run_kwargs)
    sr = res.sr[..., :SCALE * h, :SCALE * w]
    top1 = res.scores[0, 0]
    out = {'sr': tensor_to_uint8(sr), 'bicubic': tensor_to_uint8(lq_up[..., :SCALE * h, :SCALE * w]),
           'refs': [tensor_to_uint8(r) for r in refs], 'plan': res.plan, 'search_used': res.search_used,
           'relevance': {'mean': float(top1.mean()), 'min': float(top1.min()), 'max': float(top1.max())}}
    if texture_map:
        out['texture_panels'] = texture_panels(res, refs, (SCALE * h, SCALE * w))
    return out


def texture_panels(res, refs: Sequence[torch.Tensor], out_hw: Tuple[int, int]):
    """Which reference patch each output region copied (top-1), from a :class:`RefSRResult`."""
    ref_id, index = split_index(res.index[0, 0], res.patch_counts)
    # the references as searched (padded to the network's multiple; the padding mode matters for display only)
    padded_refs = [tensor_to_uint8(F.pad(r, (0, rw - r.shape[-1], 0, rh - r.shape[-2]), mode='replicate'))
                   for r, (rh, rw) in zip(refs, res.padded_ref_hw)]
    full_hw = (SCALE * res.padded_lr_hw[0], SCALE * res.padded_lr_hw[1])
    panels = texture_source_panels(res.scores[0, 0], ref_id, index, res.lr_grid, res.ref_grids, padded_refs, full_hw)
    return [(label, p[:out_hw[0], :out_hw[1]]) if i < 2 else (label, p) for i, (label, p) in enumerate(panels)]


def write_outputs(result: Dict[str, Any], paths: Dict[str, Path]) -> None:
    """The pictures of one input, written as one (:func:`~extracter.utils.file_io.atomic_write_all`): all or none
    of them are in place, unless the process is killed outright between two renames."""
    x = result.get('scale', SCALE)
    height = result['sr'].shape[0]

    def compare() -> np.ndarray:
        panels = [(f'bicubic x{x}', result['bicubic']), (f'SR x{x}', result['sr'])]
        return side_by_side(panels + [(f'reference {j + 1}', r) for j, r in enumerate(result['refs'])], height)

    pictures = {'sr': lambda: result['sr'], 'bicubic': lambda: result['bicubic'], 'compare': compare}
    if TEXTURE_KIND in paths:
        pictures[TEXTURE_KIND] = lambda: side_by_side([('SR x4', result['sr'])] + result['texture_panels'], height)
    atomic_write_all([(paths[kind], png_writer(make)) for kind, make in pictures.items()])


def output_problems(paths: Dict[str, Path]) -> Dict[Path, str]:
    """The outputs of one input that are missing or not whole PNGs, each with what is wrong."""
    problems = {}
    for path in paths.values():
        if not path.exists():
            problems[path] = 'is missing'
        else:
            problem = png_problem(path)
            if problem:
                problems[path] = f'is {problem}' if problem.startswith(('truncated', 'corrupt', 'not')) else problem
    return problems


@dataclass
class FolderReport:
    """What a folder run did: outputs written per input, inputs skipped (outputs existed) and failures."""

    written: List[Dict[str, Path]] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    searches: List[Tuple[str, str]] = field(default_factory=list)  # (input, the search that ran and the memory plan)
    cleaned: List[str] = field(default_factory=list)  # stale temporary files of a killed run, removed or left
    redone: List[str] = field(default_factory=list)  # skip_existing: inputs made again, and why (rank 0 only)
    reference_cache: Optional[CacheStats] = None  # the encoded references reused (RefSR), at the end of the run


@dataclass
class FolderPlan:
    """Per input: its output paths and whether it is to be run; ``redo``: the inputs ``skip_existing`` makes again
    although some of their outputs exist, and why (``a.png: a_compare.png is missing``)."""

    planned: List[Dict[str, Path]]
    todo: List[bool]
    redo: List[str] = field(default_factory=list)


def plan_folder(lq_paths: Sequence[str], out_dir: Path, texture_map: bool, overwrite: bool, skip_existing: bool,
                input_folders: Sequence[str] = ()) -> FolderPlan:
    """Output paths per input and whether each input is to be run. Refuses, before any work: an output folder that
    is a file, is one of ``input_folders`` (folders read as a whole: the outputs would be taken as inputs by the next
    run) or is not writable; output names that collide; outputs that exist when neither ``overwrite`` nor
    ``skip_existing`` is set. With ``skip_existing`` an input is skipped only if all of its outputs exist and are
    whole PNGs (:func:`output_problems`); else it is run again, and its outputs that exist are replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f'output {out_dir} is a file, not a folder; give a folder with -o')
    for folder in input_folders:
        if Path(folder).resolve() == out_dir.resolve():
            raise ValueError(f'output folder {out_dir} is the input folder {folder}: the outputs would be read as '
                             'inputs by the next run; give another folder with -o')
    plan = FolderPlan([output_paths(out_dir, stem, texture_map) for stem in output_stems(lq_paths)], [])
    existing = []
    for lq_path, paths in zip(lq_paths, plan.planned):
        if skip_existing:
            problems = output_problems(paths)
            plan.todo.append(bool(problems))
            if problems and any(p.exists() for p in paths.values()):  # partly there: say what is made again
                plan.redo.append(f'{os.path.basename(lq_path)}: ' +
                                 '; '.join(f'{p.name} {why}' for p, why in problems.items()))
            continue
        existing += [p for p in paths.values() if p.exists()]
        plan.todo.append(True)
    if existing and not overwrite:
        hint = '--overwrite to replace them or --skip-existing to finish the rest'
        raise FileExistsError(errno.EEXIST, f'{len(existing)} output file(s) exist, e.g. {existing[0]}; pass {hint}')
    check_writable(out_dir)
    return plan


def check_inputs(paths: Sequence[str]) -> None:
    """Read the header of every image (inputs and references) before the first output is written: a missing, empty,
    unknown or too large file stops the run with all of them listed, and nothing written. (Corrupt pixel data behind
    a valid header is found when the image is read; :func:`infer_folder` then continues and reports it.)"""
    problems, seen = [], set()
    for path in paths:
        if path in seen:
            continue
        seen.add(path)
        try:
            check_image_file(path)
        except ImageReadError as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise ImageReadError(f'{problems[0]}; nothing was written')
    if problems:
        raise ImageReadError(f'{len(problems)} unreadable image(s); nothing was written\n  ' + '\n  '.join(problems))


def infer_folder(net: RefSRNet, dataset, out_dir: Path, run_kwargs: Dict[str, Any], device: str = 'cpu',
                 texture_map: bool = False, overwrite: bool = False, skip_existing: bool = False,
                 rank: int = 0, world_size: int = 1, keep_going: bool = False,
                 on_image: Optional[Callable[[int, int, str], None]] = None,
                 after_plan: Optional[Callable[[], None]] = None,
                 reference_cache: Optional[ReferenceCache] = None) -> FolderReport:
    """Super-resolve every input of an inference dataset (:class:`RefSRInferenceDataset`) into ``out_dir``; this
    process handles :func:`shard` (rank, world_size) of them. ``keep_going``: an input that fails (an unreadable
    image) is reported and the rest continue; else the first failure is raised. ``on_image(done, total, name)``;
    ``after_plan()``: called once every output has been checked (a barrier, when several processes share the folder).
    ``reference_cache``: the run's encoded references (a reference shared by several inputs, e.g. the frames of a
    clip, is encoded once); None: a new :class:`ReferenceCache` for this folder (its default cap; under
    ``max_memory`` what each call's plan leaves) where two of this process' inputs name the same reference file,
    else none (nothing could be reused: no memory is held for it). Its statistics end in
    ``report.reference_cache``."""
    out_dir = Path(out_dir)
    roots = (dataset.opt.get('dataroot_lq'), dataset.opt.get('dataroot_ref'))
    read_whole = [f for f in roots if f and os.path.isdir(f)]  # folders whose every image is an input
    plan = plan_folder(dataset.lq_paths, out_dir, texture_map, overwrite, skip_existing, read_whole)
    check_inputs([p for i, paths in enumerate(dataset.ref_paths) if plan.todo[i]
                  for p in [dataset.lq_paths[i]] + paths])
    if after_plan is not None:
        after_plan()
    report = FolderReport(redone=plan.redo if rank == 0 else [])
    mine = shard(len(plan.planned), rank, world_size)
    ensure_folder(out_dir)
    if rank == 0:  # temporary files of a run killed outright (SIGKILL, out of memory)
        report.cleaned = clean_stale_temp_files(out_dir).lines()
    cache = reference_cache
    if cache is None and descriptor_of(net).uses_reference and _shares_references(dataset, mine):
        cache = ReferenceCache()
    current = None
    try:
        for done, i in enumerate(mine, start=1):
            current = i
            name = os.path.basename(dataset.lq_paths[i])
            if not plan.todo[i]:
                report.skipped.append(name)
            else:
                _run_input(net, dataset, i, plan.planned[i], device, run_kwargs, texture_map, keep_going, report,
                           cache)
            current = None
            if on_image is not None:
                on_image(done, len(mine), name)
    except (KeyboardInterrupt, Terminated) as err:
        partial = (dataset.lq_paths[current], plan.planned[current]) if current is not None else None
        set_left_behind(err, interruption_note(out_dir, report, partial, written_before_failure(err)))
        raise
    report.reference_cache = None if cache is None else cache.stats()
    return report


def _shares_references(dataset, mine: Sequence[int]) -> bool:
    """Whether two of the inputs ``mine`` name the same reference file (then a cache of encoded references pays)."""
    counts = Counter(os.path.realpath(p) for i in mine for p in set(dataset.ref_paths[i]))
    return any(n > 1 for n in counts.values())


def _run_input(net: RefSRNet, dataset, i: int, paths: Dict[str, Path], device: str, run_kwargs: Dict[str, Any],
               texture_map: bool, keep_going: bool, report: FolderReport,
               cache: Optional[ReferenceCache] = None) -> None:
    """Super-resolve input ``i`` of ``dataset`` and write its outputs; a failure is raised or, with ``keep_going``,
    reported."""
    name = os.path.basename(dataset.lq_paths[i])
    try:
        result = super_resolve(net, batch_of_one(dataset[i]), device, run_kwargs, texture_map, reference_cache=cache)
    except (ValueError, OSError) as err:
        if not keep_going:
            raise
        inputs = [dataset.lq_paths[i]] + list(dataset.ref_paths[i])
        msg = str(err) if any(p in str(err) for p in inputs) else \
            f'{dataset.lq_paths[i]} with reference(s) {", ".join(inputs[1:])}: {err}'
        report.failed.append((name, msg))
        return
    write_outputs(result, paths)
    report.written.append(paths)
    if result.get('search_used'):  # RefSR only
        plan = result.get('plan')
        report.searches.append((name, result['search_used'] + (
            f'; memory plan: {plan.describe()}' if plan is not None else '')))


def interruption_note(out_dir: Path, report: FolderReport, current: Optional[Tuple[str, Dict[str, Path]]],
                      placed: Sequence[Path]) -> str:
    """What an interrupted folder run left, for the command line's message: the input in progress (``current``: its
    path and outputs) with the outputs already in place (``placed``, usually none: they are written as one), or
    that no input was left partly written."""
    n = len(report.written)
    done = f'{n} input(s) done by this process, outputs in {out_dir}' if n else 'none done by this process yet'
    if current is not None and placed:
        lq_path, paths = current
        missing = [p.name for p in paths.values() if p not in placed]
        return (f'temporary files were removed; {os.path.basename(lq_path)} was left partly written: '
                f'{", ".join(str(p) for p in placed)} ({", ".join(missing)} missing) ({done}); rerun with '
                '--skip-existing to make it again and finish')
    return (f'temporary files were removed, no input was left partly written ({done}); rerun with --skip-existing '
            'to finish')
