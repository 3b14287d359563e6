"""Running the developer benchmarks (``benchmarks/``, not part of the package) the way a developer does: as
``python -m benchmarks.<name> ARGS`` in a subprocess, with the checkout first on ``PYTHONPATH`` and one thread. The
tests never import them; they assert on the exit status, the messages and the tables and files written."""

import os
import subprocess
import sys
from typing import Dict, Hashable, Mapping, Optional, Sequence

from tests.data_helpers import REPO_ROOT


def benchmark_env() -> dict:
    """The environment of a benchmark run: this checkout first on ``PYTHONPATH``, one OpenMP thread."""
    return {**os.environ, 'PYTHONPATH': str(REPO_ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''),
            'OMP_NUM_THREADS': '1'}


def benchmark_command(name: str, *args) -> list:
    return [sys.executable, '-m', f'benchmarks.{name}', *map(str, args)]


def run_benchmark(name: str, *args, timeout: float = 600, cwd: Optional[os.PathLike] = None) -> \
        subprocess.CompletedProcess:
    """Run ``benchmarks/<name>.py`` with ``args`` (from the repository root unless ``cwd``); its exit status, stdout
    and stderr (text)."""
    return subprocess.run(benchmark_command(name, *args), capture_output=True, text=True, env=benchmark_env(),
                          cwd=cwd or REPO_ROOT, timeout=timeout)


def run_benchmarks(runs: Dict[Hashable, Sequence], cwd: Optional[Mapping[Hashable, os.PathLike]] = None,
                   timeout: float = 600) -> Dict[Hashable, subprocess.CompletedProcess]:
    """Several runs at once, ``{key: (name, *args)}`` -> ``{key: CompletedProcess}``: runs that stop early (bad
    arguments) spend their time starting Python and torch, which overlaps well. ``cwd``: a folder per key (default
    the repository root)."""
    procs = {key: subprocess.Popen(benchmark_command(*spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=benchmark_env(), cwd=(cwd or {}).get(key, REPO_ROOT))
             for key, spec in runs.items()}
    done = {}
    try:
        for key, proc in procs.items():
            out, err = proc.communicate(timeout=timeout)
            done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done
