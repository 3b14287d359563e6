"""scripts/profile_inference.py: stages that add up, operations attributed to stages, the JSON it writes."""

import json

from scripts import profile_inference as pi


def test_profile_of_a_small_tiled_run_adds_up(tmp_path, capsys):
    out = tmp_path / 'p.json'
    assert pi.main(['--size', '128', '--tile', '16', '--tile-pad', '8', '--search', 'chunked', '--ops',
                    '--json', str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    stages = res['stages_s']
    assert set(stages) == set(pi.STAGES)
    assert abs(sum(stages.values()) - res['total_s']) < 1e-6
    assert all(stages[s] > 0 for s in ('vgg', 'search', 'transfer', 'main'))
    assert res['tiles'] == 4  # a 32 x 32 LR in tiles of 16
    assert res['ops_s']['main/convolution'] > 0 and res['ops_s']['vgg/convolution'] > 0
    assert not any(k.startswith('main/') and 'matmul' in k for k in res['ops_s'])  # the search's, not the main's
    # 2 Cin Cout k^2 H W summed over the main network's convolutions: its FLOPs per LR pixel times the tiles' pixels
    per_px = res['main_conv_flops'] / (4 * (16 + 8) ** 2)
    assert 70e6 < per_px < 90e6
    assert '| main |' in text and 'GFLOP/s' in text
    assert pi.main(['--size', '128', '--json', str(out)]) == 2  # an existing file is kept
    assert 'exists' in capsys.readouterr().err
