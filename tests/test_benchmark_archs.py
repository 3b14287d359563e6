"""benchmarks/benchmark_archs.py at its quick size: every architecture runs in its own process and the table
reports it (the timings are not checked: they mean something only on an idle machine)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_reports_every_architecture(tmp_path):
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'benchmarks.benchmark_archs', '--quick', '--archs', 'TTSR', 'C2Matching',
           '--max-memory', '2G', '--out', str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((out / 'results.csv').open()))
    assert [(r['arch'], r['size'], r['status']) for r in rows] == [('TTSR', '128', 'ok'), ('C2Matching', '128', 'ok')]
    c2 = rows[1]
    assert abs(float(c2['main_m']) - 8.87) < 0.01  # the restoration net: the paper's 8.9 M
    assert 'own correspondence search' in c2['plan'] and float(c2['peak_rss_gib']) > 0
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and 'already holds results; pass --overwrite' in again.stderr
