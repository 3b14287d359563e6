"""What the developer benchmarks and profilers in ``benchmarks/`` share.

They are not part of the installed package: run them from the repository root as modules, e.g.
``python -m benchmarks.benchmark_search --help`` (they import the ``extracter`` package of the checkout, and this
harness as ``benchmarks.harness``). The tests run them the same way, in subprocesses.

- where things are: :data:`ROOT` (the checkout), :data:`SHARED_DATA` (``../shared/data`` beside it, or
  ``$EXTRACTER_SHARED_DATA``), :data:`DEMO_WEIGHTS`; :func:`load_inputs`, the real input pair at a given size;
- subprocesses: :func:`module_command` (a benchmark's own worker, ``python -m benchmarks.<name>``),
  :func:`subprocess_env` (the checkout on ``PYTHONPATH``, a thread count), :func:`run_measured` (wall time and peak
  RSS of a child), :func:`command_line` (how this process was started, for logs);
- results: :func:`refuse_existing` (existing results are kept unless ``--overwrite`` is given), :func:`csv_text`,
  :func:`markdown_table`;
- timing and memory: :func:`add_timing_arguments` (``--threads``, ``--clock``), :func:`clock_name`,
  :func:`make_clock`, :func:`best_time`, :func:`peak_rss_mib`, :func:`rss_bytes`;
- the machine: :func:`add_machine_argument` (``--machine``, written into the result tables) and :data:`IDLE_NOTE`;
- argument values argparse's types do not check: :func:`check_at_least`, :func:`check_geometry`,
  :func:`check_memory` (usage errors: one ``error:`` line, exit status 2, before any work).

It uses only long-standing parts of ``extracter`` (``utils.file_io``), so that ``profile_inference`` (whose hooks
use only long-standing names too) also measures an older checkout put first on ``PYTHONPATH``, run from outside the
repository: ``cd /tmp && PYTHONPATH=<old checkout>:<this checkout> python -m benchmarks.profile_inference``.
"""

import argparse
import csv
import io
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from extracter.utils.file_io import refuse_overwrite

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get('EXTRACTER_SHARED_DATA', ROOT.parent / 'shared' / 'data'))
DEMO_WEIGHTS = ROOT / 'pretrained' / 'demo_cpu' / 'extracter_demo_cpu.pth'
DCSR_PAIR = SHARED_DATA / 'refsr-pairs' / 'dcsr-camerafusion'
PACKAGE = 'benchmarks'

IDLE_NOTE = ('Timings are results only on an idle machine (say so with --machine); on a machine shared with other '
             'jobs measure CPU time with one thread (--threads 1, OMP_NUM_THREADS=1) and compare ratios only.')


def load_inputs(size: int, seed: int, folder: Path = DCSR_PAIR):
    """LR (size/4) and reference (size) in [0, 1], [1, 3, h, w], and where they come from: centre crops of the wide
    (HR, downscaled) and telephoto (reference) views of ``folder`` (DCSR CameraFusion) when present, else seeded
    noise."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    if (folder / 'wide.jpg').is_file() and (folder / 'tele.jpg').is_file():
        def crop(name):
            img = ImageOps.exif_transpose(Image.open(folder / name)).convert('RGB')
            w, h = img.size
            side = min(w, h, 3 * size)  # a centre crop, scaled to the wanted size
            box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
            return img.crop(box).resize((size, size), Image.BICUBIC)

        def to_t(im):
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255

        hr, ref = crop('wide.jpg'), crop('tele.jpg')
        lr = hr.resize((size // 4, size // 4), Image.BICUBIC)
        return to_t(lr), to_t(ref), 'dcsr-camerafusion wide/tele centre crops'
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size // 4, size // 4, generator=g), torch.rand(1, 3, size, size, generator=g), 'noise'


# ------------------------------------------------------------------------------------------------------ subprocesses
def module_command(name: str, *args: str) -> List[str]:
    """The command line running benchmark ``name`` (e.g. ``'benchmark_search'``) with ``args`` in a subprocess."""
    return [sys.executable, '-m', f'{PACKAGE}.{name}', *map(str, args)]


def subprocess_env(threads: Optional[int] = None) -> dict:
    """This process' environment with the checkout first on ``PYTHONPATH`` (so that ``-m benchmarks.<name>`` and
    ``extracter`` resolve to it from any folder) and, if given, ``OMP_NUM_THREADS``."""
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    if threads is not None:
        env['OMP_NUM_THREADS'] = str(threads)
    return env


def run_measured(cmd: Sequence[str], env: Mapping[str, str]) -> Tuple[float, float]:
    """Run ``cmd``; (wall seconds, peak RSS MiB of that process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=dict(env))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, list(cmd))
    return wall, usage.ru_maxrss / 1024


def command_line() -> str:
    """How this process was started (``python -m benchmarks.<name> ARGS`` for a benchmark run as a module)."""
    spec = getattr(sys.modules.get('__main__'), '__spec__', None)
    head = f'python -m {spec.name}' if spec is not None and spec.name else sys.argv[0]
    return ' '.join([head, *sys.argv[1:]])


# ----------------------------------------------------------------------------------------------------------- results
def refuse_existing(path, overwrite: bool, hint: str = '') -> None:
    """Keep earlier results: raise ``FileExistsError`` if ``path`` (a results file, or a folder holding anything)
    exists and ``overwrite`` (``--overwrite``) is not set. ``hint``: another way out, e.g. ``'or choose --out'``."""
    path = Path(path)
    if path.is_dir():
        if any(path.iterdir()) and not overwrite:
            raise FileExistsError(f'{path} already holds results; pass --overwrite{" " + hint if hint else ""}')
        return
    try:
        refuse_overwrite(path, overwrite)
    except FileExistsError:
        raise FileExistsError(f'{path} already exists; pass --overwrite to replace it'
                              f'{" " + hint if hint else ""}') from None


def csv_text(rows: Iterable[Mapping], fields: Sequence[str], lineterminator: str = '\n') -> str:
    """``rows`` (dicts; keys outside ``fields`` ignored) as CSV text with a header line."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator=lineterminator, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = '') -> str:
    """A Markdown table (no final newline). ``align``: one letter per column, ``l`` (``---``, the default for
    missing letters) or ``r`` (``---:``)."""
    rules = ['---:' if i < len(align) and align[i] == 'r' else '---' for i in range(len(header))]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(rules) + '|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
    return '\n'.join(lines)


# --------------------------------------------------------------------------------------------------- timing, memory
def add_timing_arguments(parser: argparse.ArgumentParser, threads_help: Optional[str] = None) -> None:
    """``--threads`` (torch threads, default 1) and ``--clock`` (auto, process or wall: see :func:`clock_name`)."""
    parser.add_argument('--threads', type=int, default=1, help=threads_help)
    parser.add_argument('--clock', choices=['auto', 'process', 'wall'], default='auto')


def clock_name(name: str, threads: int) -> str:
    """``auto``: process CPU time with one thread (meaningful on a shared machine), wall time with more (process time
    would sum the threads); ``process`` and ``wall`` as given."""
    if name == 'auto':
        return 'process' if threads == 1 else 'wall'
    return name


def make_clock(name: str, threads: int) -> Callable[[], float]:
    """``time.process_time`` or ``time.perf_counter``, as :func:`clock_name` chooses."""
    return time.process_time if clock_name(name, threads) == 'process' else time.perf_counter


def best_time(fn: Callable[[], object], clock: Callable[[], float], repeats: int, min_seconds: float) -> float:
    """Best time per call over ``repeats`` rounds, each of enough calls to last ``min_seconds`` (one call for 0),
    after a warm-up call."""
    t = clock()
    fn()
    once = max(clock() - t, 1e-6)
    calls = max(1, int(min_seconds / once))
    best = float('inf')
    for _ in range(repeats):
        t = clock()
        for _ in range(calls):
            fn()
        best = min(best, (clock() - t) / calls)
    return best


def peak_rss_mib() -> float:
    """Peak resident set of this process so far, MiB (Linux: ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_bytes() -> Optional[int]:
    """Current resident set of this process in bytes (``/proc/self/statm``; ``None`` where it cannot be read)."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------- argument values
def check_at_least(parser: argparse.ArgumentParser, *checks: Tuple) -> None:
    """Refuse the first ``(flag, value, least[, meaning])`` whose value (or any of its values, for a list) is below
    ``least``: one ``error:`` line, exit status 2 (``parser.error``), before any work."""
    for flag, value, least, *meaning in checks:
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v < least for v in values):
            parser.error(f'{flag} must be >= {least}{meaning[0] if meaning else ""}, got '
                         f'{" ".join(map(str, values))}')


def check_geometry(parser: argparse.ArgumentParser, geometry: Sequence[int], flag: str = '--geometry') -> None:
    """A search geometry WINDOW STRIDE PAD as the networks take it: stride >= 1, window >= stride, 0 <= pad <
    window."""
    window, stride, pad = geometry
    if stride < 1 or window < stride or not 0 <= pad < window:
        parser.error(f'{flag} WINDOW STRIDE PAD needs stride >= 1, window >= stride and 0 <= pad < window, got '
                     f'{window} {stride} {pad}')


def check_memory(parser: argparse.ArgumentParser, flag: str, value) -> int:
    """Bytes of a memory flag (``6G``, ``512M``, bytes), or its usage error naming the flag once."""
    from extracter.inference.memory_plan import parse_memory

    try:
        return parse_memory(value)
    except ValueError as err:  # 'max_memory must look like ...' -> '--dense-limit: must look like ...'
        message = str(err)
        parser.error(f'{flag}: {message[len("max_memory "):] if message.startswith("max_memory ") else message}')


# ------------------------------------------------------------------------------------------------------- the machine
def add_machine_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--machine``: how the machine was while measuring, written into the result tables."""
    parser.add_argument('--machine', default=default,
                        help='how the machine was while measuring, for the tables, e.g. "idle 2-core machine" '
                             f'(default: {default!r}). {IDLE_NOTE}')
