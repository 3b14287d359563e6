"""benchmarks/benchmark_search.py end to end at tiny sizes (``python -m benchmarks.benchmark_search``): the tables
it writes, and that its scratch files never land in the output folder (they hold images derived from ../shared/data,
which must not be committed)."""

import csv

import pytest

from tests.bench_helpers import run_benchmark


def _run(args, shared_data):
    return run_benchmark('benchmark_search', *args, '--threads', '1', '--machine', 'test', timeout=300)


def test_search_benchmark_writes_tables_and_keeps_no_scratch(tmp_path, shared_data):
    out = tmp_path / 'bs'
    proc = _run(['--sizes', '96', '--pairs', 'sintel', '--cases', 'demo:3/1/1', '--exact-full-max', '0',
                 '--samples', '40', '--knobs', '{"fallback": false, "max_candidates": 4096}', '--out', str(out)],
                shared_data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['benchmark.log', 'results.csv', 'results.md',
                                                     'search_time.png', 'slopes.json']
    rows = list(csv.DictReader(open(out / 'results.csv')))
    assert len(rows) == 1 and rows[0]['pair'] == 'sintel' and rows[0]['evaluated_queries'] == '40'
    # 4096 candidates cover all 576 reference patches at this size: the approximate search is then exact
    assert float(rows[0]['recall_at_1']) == 1.0
    assert abs(float(rows[0]['relevance_ratio']) - 1.0) < 1e-6
    assert 'Timings: 1 thread(s); test.' in (out / 'results.md').read_text()
    # a second run refuses to replace the results without --overwrite
    again = _run(['--sizes', '96', '--pairs', 'sintel', '--cases', 'demo:3/1/1', '--out', str(out)], shared_data)
    assert again.returncode != 0 and '--overwrite' in again.stderr


@pytest.mark.slow
def test_e2e_benchmark_through_infer_keeps_no_scratch(tmp_path, shared_data):
    out = tmp_path / 'e2e'
    proc = _run(['--e2e', '--targets', 'vid4_720x480', '--shrink', '6', '--out', str(out)], shared_data)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ['e2e.csv', 'e2e.log', 'e2e.md']
    row = next(csv.DictReader(open(out / 'e2e.csv')))
    assert row['target'] == 'vid4_720x480' and float(row['exact_s']) > 0 and float(row['approx_s']) > 0
    # the exact search's own time is part of the exact run, so the bound on any search's speed-up is above 1
    assert 0 < float(row['exact_search_s']) < float(row['exact_s']) and float(row['bound']) > 1
