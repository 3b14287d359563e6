"""benchmarks/gallery_retrieval.py and gallery_scaling.py at their smallest sizes (run as a developer does, in a
subprocess): they finish, write their tables, and refuse bad arguments in one line."""

import csv

import pytest

from tests.bench_helpers import run_benchmark, run_benchmarks


def test_bad_arguments_are_refused_in_one_line(tmp_path):
    procs = run_benchmarks({'key': ('gallery_retrieval', '--key-step', '0', '-o', tmp_path / 'a'),
                            'crop': ('gallery_retrieval', '--crop', '30', '-o', tmp_path / 'b'),
                            'size': ('gallery_scaling', '--faiss-size', '0', '-o', tmp_path / 'c')})
    for key, said in (('key', '--key-step must be >= 1'), ('crop', '--crop must be a multiple of 4'),
                      ('size', '--faiss-size must be >= 1')):
        assert procs[key].returncode == 2 and said in procs[key].stderr, procs[key].stderr
    assert not any((tmp_path / n).exists() for n in 'abc')


@pytest.mark.slow
def test_gallery_retrieval_quick(shared_data, tmp_path):
    proc = run_benchmark('gallery_retrieval', '--quick', '--crop', '32', '--threads', '1', '-o', tmp_path / 'r',
                         timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / 'r' / 'per_query.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r['clip'] == 'calendar' for r in rows)
    assert all(0 <= float(r['precision']) <= 1 for r in rows)
    assert (tmp_path / 'r' / 'psnr.png').is_file() and 'precision' in (tmp_path / 'r' / 'summary.md').read_text()


@pytest.mark.slow
def test_gallery_scaling_quick(shared_data, tmp_path):
    proc = run_benchmark('gallery_scaling', '--quick', '--queries', '1', '--threads', '1', '-o', tmp_path / 's',
                         timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / 's' / 'scaling.csv', newline='') as f:
        parts = [(r['part'], r['size']) for r in csv.DictReader(f)]
    assert parts[:3] == [('index', '8'), ('query', '100'), ('query', '1000')] and parts[3][0] == 'faiss'
