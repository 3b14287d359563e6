"""benchmarks/profile_inference.py (in a subprocess): stages that add up, operations attributed to stages, the JSON
it writes."""

import json

from tests.bench_helpers import run_benchmark

STAGES = ('vgg', 'search', 'transfer', 'main', 'other')


def test_profile_of_a_small_tiled_run_adds_up(tmp_path):
    out = tmp_path / 'p.json'
    proc = run_benchmark('profile_inference', '--size', '128', '--tile', '16', '--tile-pad', '8', '--search',
                         'chunked', '--ops', '--json', out)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    res = json.loads(out.read_text())
    stages = res['stages_s']
    assert set(stages) == set(STAGES)
    assert abs(sum(stages.values()) - res['total_s']) < 1e-6
    assert all(stages[s] > 0 for s in ('vgg', 'search', 'transfer', 'main'))
    assert res['tiles'] == 4  # a 32 x 32 LR in tiles of 16
    assert res['ops_s']['main/convolution'] > 0 and res['ops_s']['vgg/convolution'] > 0
    assert not any(k.startswith('main/') and 'matmul' in k for k in res['ops_s'])  # the search's, not the main's
    # 2 Cin Cout k^2 H W summed over the main network's convolutions: its FLOPs per LR pixel times the tiles' pixels
    per_px = res['main_conv_flops'] / (4 * (16 + 8) ** 2)
    assert 70e6 < per_px < 90e6
    assert '| main |' in text and 'GFLOP/s' in text
    again = run_benchmark('profile_inference', '--size', '128', '--json', out)
    assert again.returncode == 2  # an existing file is kept
    assert 'exists' in again.stderr
