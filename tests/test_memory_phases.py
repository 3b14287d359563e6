"""benchmarks/memory_phases.py: one inference per size in its own process, its peaks by phase beside the plan's
estimates (the figures mean something only on an idle machine; here only that they are there and consistent)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rows_of(markdown: str):
    lines = [ln for ln in markdown.splitlines() if ln.startswith('| C2Matching')]
    return [[c.strip() for c in ln.strip('|').split('|')] for ln in lines]


def test_phases_of_a_budgeted_c2matching_run(tmp_path):
    out = tmp_path / 'phases.md'
    cmd = [sys.executable, '-m', 'benchmarks.memory_phases', '--arch', 'C2Matching', '--sizes', '64', '96',
           '--max-memory', '1G', '-o', str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = rows_of(out.read_text())
    for size in ('64', '96'):
        phases = {r[3]: r for r in rows if r[1] == size}
        assert {'encoding reference', 'search', 'textures', 'main network'} <= set(phases)
        for r in phases.values():
            assert r[2] == '1G' and float(r[4]) >= 0 and r[6]  # measured, and the plan's estimate beside it
    assert 'own correspondence search' in out.read_text()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and 'pass --overwrite' in again.stderr
