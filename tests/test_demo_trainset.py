"""The demo training-set recipe: CUFED layout, real differences between target and reference, no overwrite."""

import csv

import numpy as np
import pytest

from extracter.data.image_io import read_image
from scripts.make_demo_trainset import build


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
