"""benchmarks/benchmark_scaling.py: the options that reach each case's subprocess (``--search`` for ``ours``), seen
through ``--dry-run`` (the case commands and their ``run_refsr`` arguments, nothing run)."""

import json
import subprocess

from tests.bench_helpers import benchmark_env, run_benchmark
from tests.data_helpers import REPO_ROOT


def _dry_run(*argv):
    proc = run_benchmark('benchmark_scaling', *argv, '--dry-run')
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]


def test_search_option_reaches_the_case_and_its_run_refsr_arguments(tmp_path):
    (case,) = _dry_run('--sizes', '2048', '--methods', 'ours', '--search', 'approximate', '--budget', '2048=6G')
    cmd = case['command']
    assert cmd[cmd.index('--search') + 1] == 'approximate'
    assert case['run_refsr'] == {'max_memory': '6G', 'search_mode': 'approximate'}
    # what the subprocess parses (its own --dry-run prints it instead of running the case)
    proc = subprocess.run(cmd + ['--dry-run'], capture_output=True, text=True, env=benchmark_env(), cwd=REPO_ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (child['case_size'], child['case_method'], child['case_budget'], child['search']) == \
        (2048, 'ours', '6G', 'approximate')
    assert child['run_refsr'] == {'max_memory': '6G', 'search_mode': 'approximate'}
    assert case['out'].endswith('w6_s2_p2_approximate')


def test_search_defaults_to_the_exact_chunked_search_and_untiled_methods_ignore_it():
    cases = {c['method']: c for c in _dry_run('--sizes', '512')}
    assert cases['ours']['command'][cases['ours']['command'].index('--search') + 1] == 'chunked'
    assert cases['ours']['run_refsr'] == {'max_memory': '2G', 'search_mode': 'chunked'}
    assert cases['ours']['out'] == str(REPO_ROOT / 'results' / 'benchmark_scaling' / 'w6_s2_p2')
    cases = {c['method']: c['run_refsr'] for c in _dry_run('--sizes', '512', '--search', 'auto')}
    assert cases == {'dense': {'search_mode': 'dense'}, 'chunked': {'search_mode': 'chunked'},
                     'ours': {'max_memory': '2G', 'search_mode': 'auto'}}


def test_unknown_search_is_refused_in_one_line(tmp_path):
    proc = run_benchmark('benchmark_scaling', '--sizes', '512', '--search', 'exact', '--out', tmp_path / 'bs')
    assert proc.returncode == 2
    assert '--search' in proc.stderr and "'exact'" in proc.stderr
    assert not (tmp_path / 'bs').exists()
