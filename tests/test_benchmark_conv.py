"""benchmarks/benchmark_conv.py: FLOP counting (extracter.tools.measure.conv_flops), the conv table, argument
errors (the script in a subprocess)."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from extracter.tools.measure import conv_flops
from tests.bench_helpers import run_benchmark, run_benchmarks


@pytest.mark.parametrize('conv,hw', [(nn.Conv2d(64, 64, 3, padding=1), 20), (nn.Conv2d(64, 32, 3, 2, 1), 17),
                                     (nn.Conv2d(6, 12, 3, padding=1, groups=3), 9), (nn.Conv2d(32, 3, 1), 11)])
def test_conv_flops_are_pytorchs_count(conv, hw):
    x = torch.randn(2, conv.in_channels, hw, hw)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = conv(x)
    assert conv_flops(conv, out) == counter.get_total_flops()


def test_conv_table_runs_and_prints_every_shape_size_and_layout():
    proc = run_benchmark('benchmark_conv', '--sizes', '8', '12', '--shapes', '4:8', '--repeats', '1',
                         '--min-seconds', '0.001', '--skip-network')
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert '| channels | size | nchw | channels_last |' in out
    assert '| 4 -> 8 | 8 x 8 |' in out and '| 4 -> 8 | 12 x 12 |' in out
    assert 'process time' in out  # one thread: CPU time


BAD_ARGUMENTS = [(['--shapes', '64x64'], '--shapes'), (['--tile', '7'], '--tile'), (['--threads', '0'], '--threads')]


@pytest.fixture(scope='module')
def refusals():
    """Every bad command line, run at once."""
    return run_benchmarks({i: ('benchmark_conv', *argv, '--skip-network') for i, (argv, _) in enumerate(BAD_ARGUMENTS)})


@pytest.mark.parametrize('case', range(len(BAD_ARGUMENTS)), ids=[name for _, name in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_in_one_line(refusals, case):
    proc, name = refusals[case], BAD_ARGUMENTS[case][1]
    assert proc.returncode == 2
    err = proc.stderr
    assert name in err and 'Traceback' not in err
