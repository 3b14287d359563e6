"""scripts/benchmark_conv.py: FLOP counting, the conv table, argument errors."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scripts import benchmark_conv as bc


@pytest.mark.parametrize('conv,hw', [(nn.Conv2d(64, 64, 3, padding=1), 20), (nn.Conv2d(64, 32, 3, 2, 1), 17),
                                     (nn.Conv2d(6, 12, 3, padding=1, groups=3), 9), (nn.Conv2d(32, 3, 1), 11)])
def test_conv_flops_are_pytorchs_count(conv, hw):
    x = torch.randn(2, conv.in_channels, hw, hw)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = conv(x)
    assert bc.conv_flops(conv, out) == counter.get_total_flops()


def test_conv_table_runs_and_prints_every_shape_size_and_layout(capsys):
    status = bc.main(['--sizes', '8', '12', '--shapes', '4:8', '--repeats', '1', '--min-seconds', '0.001',
                      '--skip-network'])
    out = capsys.readouterr().out
    assert status == 0
    assert '| channels | size | nchw | channels_last |' in out
    assert '| 4 -> 8 | 8 x 8 |' in out and '| 4 -> 8 | 12 x 12 |' in out
    assert 'process time' in out  # one thread: CPU time


@pytest.mark.parametrize('argv,name', [(['--shapes', '64x64'], '--shapes'), (['--tile', '7'], '--tile'),
                                       (['--threads', '0'], '--threads')])
def test_bad_arguments_are_refused_in_one_line(capsys, argv, name):
    assert bc.main(argv + ['--skip-network']) == 2
    err = capsys.readouterr().err
    assert name in err and 'Traceback' not in err
