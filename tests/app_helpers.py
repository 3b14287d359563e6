"""Shared by the web page's tests: a tiny checkpoint, small real photo pairs (scikit-image's Middlebury motorcycle
stereo pair, as in scripts/demo.py), PSNR as the demo measures it, and whether the page's extras are installed."""

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from extracter.data import degradations as deg

TINY_NET = dict(type='Extracter', num_res_blocks='1+1+1+1', num_grad_blocks='1+1+1+1', n_feats=8, top_k=2, window=6,
                stride=2, padding=2, dfe_init='random')
CHROMIUM = os.environ.get('EXTRACTER_CHROMIUM', '/usr/bin/chromium')
REQUIRED_ENV = 'EXTRACTER_APP_TESTS'


def tiny_checkpoint(folder: Path, name: str = 'tiny') -> Path:
    """A randomly initialised small EXTRACTER (seed 0) as ``name.pth`` with its ``name.yml``."""
    from extracter.registry import ARCH_REGISTRY

    folder.mkdir(parents=True, exist_ok=True)
    opt = dict(TINY_NET)
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(opt.pop('type'))(**opt)
    torch.save({'params': net.state_dict()}, folder / f'{name}.pth')
    (folder / f'{name}.yml').write_text(yaml.safe_dump({'network_g': TINY_NET}))
    return folder / f'{name}.pth'


def motorcycle_pair(crop: Optional[int], ref_scale: float = 1.0) -> Dict[str, np.ndarray]:
    """The demo's example: HR = a centred ``crop`` x ``crop`` of the left view (None: the whole view), cut to
    multiples of 4, LR = it downscaled x4 (PIL bicubic), reference = the right view (scaled by ``ref_scale``, PIL
    bicubic)."""
    from skimage.data import stereo_motorcycle

    left, right, _ = stereo_motorcycle()
    ch, cw = left.shape[:2] if crop is None else (crop, crop)
    ch, cw = ch - ch % 4, cw - cw % 4
    top, lft = (left.shape[0] - ch) // 2, (left.shape[1] - cw) // 2
    hr = np.ascontiguousarray(left[top:top + ch, lft:lft + cw])
    if ref_scale != 1.0:
        right = deg.pil_bicubic(right, (round(right.shape[1] * ref_scale), round(right.shape[0] * ref_scale)))
    return {'hr': hr, 'lr': deg.make_lq(hr), 'ref': np.ascontiguousarray(right)}


def save(img: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def psnr_y(img: np.ndarray, gt: np.ndarray) -> float:
    """PSNR on Y, border 4 (BasicSR's calculate_psnr, as scripts/demo.py and test.py report it)."""
    from basicsr.metrics import calculate_psnr

    return calculate_psnr(img[..., ::-1].copy(), gt[..., ::-1].copy(), crop_border=4, test_y_channel=True)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert('RGB'))


def app_extras() -> Tuple[bool, str]:
    """(available, why not) for the page's tests: gradio, playwright and Debian's chromium."""
    if importlib.util.find_spec('gradio') is None:
        return False, 'gradio is not installed (pip install -r requirements-app.txt)'
    if importlib.util.find_spec('playwright') is None:
        return False, 'playwright is not installed (pip install -r requirements-app-test.txt)'
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return False, f'{CHROMIUM} not found (apt-get install chromium)'
    return True, ''


def require_app_extras() -> None:
    """Skip (or, with EXTRACTER_APP_TESTS=required, fail) when the page's extras or the browser are missing."""
    ok, why = app_extras()
    if ok:
        return
    if os.environ.get(REQUIRED_ENV) == 'required':
        pytest.fail(f'{REQUIRED_ENV}=required but {why}')
    pytest.skip(why)


def other_scenes(hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Photos of other scenes (scikit-image's astronaut, coffee and cat), each scaled to ``hw`` (PIL bicubic): the
    photos a gallery holds besides the scene's own."""
    from skimage import data

    h, w = hw
    return {name: np.ascontiguousarray(deg.pil_bicubic(getattr(data, name)(), (w, h)))
            for name in ('astronaut', 'coffee', 'chelsea')}
