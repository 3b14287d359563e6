"""CUDA-free distributed helpers (single process here; the 2-process run is in test_train_pipeline.py)."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from extracter.utils import dist as dist_util


def test_select_device_and_wrap_without_process_group():
    assert dist_util.select_device(0) == torch.device('cpu')
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA is not available'):
            dist_util.select_device(1)
    with pytest.raises(ValueError, match='num_gpu'):
        dist_util.select_device(-1)
    net = nn.Linear(2, 2)
    wrapped = dist_util.wrap_model(net, torch.device('cpu'), distributed=False)
    assert wrapped is net and dist_util.bare_model(wrapped) is net
    assert dist_util.get_dist_info() == (0, 1)
    assert dist_util.gather_objects('x') == ['x']


def test_init_dist_outside_torchrun_is_a_clear_error(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match='RANK.*torchrun'):
        dist_util.init_dist('pytorch', num_gpu=0)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    device = torch.device('cpu')
    state = dist_util.get_rng_state(device)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({'rng': [state]}, tmp_path / 's.state')
    random.random(), np.random.rand(), torch.rand(3)  # move the streams on
    loaded = torch.load(tmp_path / 's.state', weights_only=True)['rng'][0]
    dist_util.set_rng_state(loaded, device)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_weights_digest_detects_any_change():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert dist_util.weights_digest(a) == dist_util.weights_digest(b)
    with torch.no_grad():
        b.bias[0] = torch.nextafter(b.bias[0], torch.tensor(10.0))
    assert dist_util.weights_digest(a) != dist_util.weights_digest(b)
