"""The demo training-set recipe: CUFED layout, real differences between target and reference, no overwrite."""

import csv

import numpy as np
import pytest

from extracter.data import degradations as deg
from extracter.data.image_io import read_image
from extracter.tools.make_demo_trainset import build


def test_recipe_builds_cufed_layout_deterministically(shared_data, tmp_path):
    a = build(shared_data, tmp_path / 'a', num=12, size=48, seed=5)
    b = build(shared_data, tmp_path / 'b', num=12, size=48, seed=5)
    names = sorted(p.name for p in (a / 'train' / 'input').iterdir())
    assert names == sorted(p.name for p in (a / 'train' / 'ref').iterdir()) and len(names) == 12
    rows = list(csv.DictReader(open(a / 'pairs.csv')))
    assert {r['kind'] for r in rows} <= {'overlap', 'video', 'unrelated'}
    for name in names:
        hr, ref = read_image(a / 'train' / 'input' / name), read_image(a / 'train' / 'ref' / name)
        assert hr.shape == ref.shape == (48, 48, 3)
        assert not np.array_equal(hr, ref)  # never a copy of the target
        assert np.array_equal(hr, read_image(b / 'train' / 'input' / name))
    with pytest.raises(FileExistsError, match='--overwrite'):
        build(shared_data, a, num=2, size=48, seed=5)
    assert len(list((a / 'train' / 'input').iterdir())) == 12


def test_recipe_rejects_bad_size(shared_data, tmp_path):
    with pytest.raises(ValueError, match='multiple of 16'):
        build(shared_data, tmp_path / 'x', num=2, size=50, seed=0)


def test_recipe_shift_options_bound_the_reference_window(shared_data, tmp_path):
    """The stage-3 set (references covering most of their target) is the same recipe with tighter shifts."""
    out = build(shared_data, tmp_path / 'near', num=16, size=48, seed=1, mix=(0.5, 0.5, 0.0),
                overlap_shift=(0.0, 0.1), video_steps=1, video_shift=0.1)
    rows = list(csv.DictReader(open(out / 'pairs.csv')))
    assert {r['kind'] for r in rows} == {'overlap', 'video'}
    for r in rows:
        fields = dict(item.split('=') for item in r['how'].split(';'))
        dy, dx = (int(v) for v in fields['shift'].strip('()').split(','))
        assert max(abs(dy), abs(dx)) <= 5, r  # 0.1 x 48 = 4.8 pixels, rounded to whole pixels
        if r['kind'] == 'video':
            t, u = (int(v) for v in fields['frames'].strip('()').split(','))
            assert abs(t - u) == 1, r


@pytest.mark.parametrize('kwargs, message', [({'overlap_shift': (0.5, 0.2)}, 'overlap-shift'),
                                             ({'video_steps': 0}, 'video-steps'),
                                             ({'video_shift': 1.0}, 'video-shift')])
def test_recipe_rejects_bad_shift_options(shared_data, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(shared_data, tmp_path / 'x', num=2, size=48, seed=0, **kwargs)


def test_self_reference_pairs_are_the_targets_own_down_up(shared_data, tmp_path):
    out = build(shared_data, tmp_path / 's', num=4, size=48, seed=2, mix=(0, 0, 0, 1))
    for name in sorted(p.name for p in (out / 'train' / 'input').iterdir()):
        hr, ref = read_image(out / 'train' / 'input' / name), read_image(out / 'train' / 'ref' / name)
        np.testing.assert_array_equal(ref, deg.make_lq_up(deg.make_lq(hr)))
    with pytest.raises(ValueError, match='--mix'):
        build(shared_data, tmp_path / 'bad', num=2, size=48, seed=0, mix=(1, 0))
