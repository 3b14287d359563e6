"""C2-Matching's training data for its contrastive correspondence network (stages 1 and 2): an image and a copy of it
warped by a random homography, with the map of where each pixel went (the original's ``mmsr/data/contras_dataset.py``,
``ContrasDataset`` for training and ``ContrasValDataset`` for validation).

Per sample (the original's order):
1. read the image (CUFED's ``train/input``: 160 x 160); ``fit: resize`` brings it to ``gt_size`` with OpenCV's
   bicubic (the original, a no-op on CUFED's inputs), ``fit: random_crop`` cuts a ``gt_size`` crop instead (for
   larger photos); validation (``fixed_warps``) keeps the whole image cropped to a multiple of 4;
2. flips and a rotation by k * 90 degrees (training);
3. a homography: the corners of a ``warp_window`` square placed at random are each moved by up to ``max_shift - 1``
   pixels in x and y (the original's ``image_pair_generation(img, (0, 10), 160)``); ``ref`` is the image warped by it
   (OpenCV's bilinear ``warpPerspective``, zeros outside) and ``warp_coords[y, x]`` = (x', y'), where pixel (x, y) of
   ``gt`` lies in ``ref``;
4. PIL bicubic degradations of both (:mod:`extracter.data.degradations`): ``lq``, ``lq_up`` (stage 2's student sees
   it), ``ref_downup``.
Validation warps (and crops) are fixed per image (drawn from ``seed`` and the image's index), as the original's pool
of transforms drawn once with seed 0, so a validation loss compares across iterations.

Differences from the original, none of which changes a value on CUFED: the 8-bit copies for PIL are clipped before
they are truncated (the original's bicubic resize could overflow); Python's ``random`` draws (seeded per worker like
every dataset here) replace NumPy's.
"""

import random
from fnmatch import fnmatch
from typing import Any, Dict, Mapping, Optional, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from extracter.archs.refsr_base import SCALE
from extracter.data import degradations as deg
from extracter.data.options import REQUIRED, merge_options
from extracter.data.sources import open_source
from extracter.registry import DATASET_REGISTRY

FITS = ('resize', 'random_crop')


def draw_homography(rng: random.Random, h: int, w: int, max_shift: int = 10, window: int = 160) -> np.ndarray:
    """The original's random homography H (``image_pair_generation``): the ``window`` square with its top-left corner
    drawn in [max_shift, max(w, w - window - max_shift)) (y likewise) -> the same square with each corner coordinate
    moved by +-randrange(max_shift). ``ref`` = the image warped by H^-1 (OpenCV's convention); returns H^-1."""
    x0 = rng.randrange(max_shift, max(w, w - window - max_shift))
    y0 = rng.randrange(max_shift, max(h, h - window - max_shift))
    square = np.array([(x0, y0), (x0 + window, y0), (x0 + window, y0 + window), (x0, y0 + window)], np.float32)
    moved = square.copy()
    for corner in range(4):
        for axis in range(2):
            moved[corner, axis] += rng.randrange(0, max_shift) * rng.choice((-1.0, 1.0))
    homography = cv2.getPerspectiveTransform(src=square, dst=moved)
    return np.linalg.inv(homography)


def warp_pair(image: np.ndarray, h_inverse: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(the image warped by ``h_inverse``, [H, W, 2] float32 map of (x, y) in the warped image of each pixel)."""
    h, w = image.shape[:2]
    warped = cv2.warpPerspective(src=image, M=h_inverse, dsize=(w, h))
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    points = np.stack([gx, gy, np.ones_like(gx)]).reshape(3, -1).astype(np.float64)
    moved = h_inverse @ points
    moved = moved[:2] / moved[2]
    return warped, moved.T.reshape(h, w, 2).astype(np.float32)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as the original hands it to PIL: x 255, truncated (clipped first)."""
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def _float_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()


@DATASET_REGISTRY.register()
class ContrastiveWarpDataset(Dataset):
    """Image / warped-image pairs for C2-Matching's contrastive stages (module docstring).

    Options:
        dataroot_gt: folder (or ``.lmdb``) of images, e.g. ``CUFED/train/input`` (references are not used).
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb}``.
        filename_filter: a shell pattern the keys must match (e.g. ``'*_0'``: CUFED5's HR images only).
        gt_size: the training size (square, 160 in the original); None keeps the whole image (cropped to a multiple
            of 4; batches of 1).
        fit: ``resize`` (the original) or ``random_crop`` (images larger than ``gt_size``).
        use_hflip, use_vflip, use_rot: augmentations (training; the original's ``use_flip``/``use_rot``).
        max_shift, warp_window: the homography's corner moves and square (10, 160 in the original).
        fixed_warps: one fixed warp per image, no augmentation (validation, as the original's ``ContrasValDataset``).
        seed: the fixed warps' seed.
    """

    DEFAULTS: Dict[str, Any] = {
        'dataroot_gt': REQUIRED, 'io_backend': None, 'filename_filter': None, 'gt_size': 160, 'fit': 'resize',
        'use_hflip': True, 'use_vflip': True, 'use_rot': True, 'max_shift': 10, 'warp_window': 160,
        'fixed_warps': False, 'seed': 0,
    }

    def __init__(self, opt: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        self.opt = merge_options(type(self).__name__, self.DEFAULTS, opt, kwargs)
        o = self.opt
        self.source = open_source(o['dataroot_gt'], o['io_backend'], 'dataroot_gt')
        pattern = o['filename_filter']
        self.keys = [k for k in self.source.keys if pattern is None or fnmatch(k, str(pattern))]
        if not self.keys:
            raise ValueError(f'dataroot_gt {self.source.root}: no image matches filename_filter {pattern!r}')
        self.gt_size = None if o['gt_size'] is None else int(o['gt_size'])
        if self.gt_size is not None and (self.gt_size < SCALE or self.gt_size % SCALE):
            raise ValueError(f'gt_size must be a positive multiple of {SCALE}, got {o["gt_size"]}')
        if o['fit'] not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {o['fit']!r}")
        if int(o['max_shift']) < 1 or int(o['warp_window']) < 1:
            raise ValueError(f"max_shift and warp_window must be >= 1, got {o['max_shift']}, {o['warp_window']}")

    def __len__(self) -> int:
        return len(self.keys)

    def _image(self, key: str, rng) -> np.ndarray:
        """The float image in [0, 1] at the training size (step 1) and augmented (step 2); ``rng`` places the crop."""
        img = self.source.read(key).astype(np.float32) / 255.0
        if self.gt_size is None:
            return deg.crop_to_multiple(img, SCALE, self.source.path(key))
        size = (self.gt_size, self.gt_size)
        if self.opt['fit'] == 'resize':
            if img.shape[:2] != size:
                img = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
        else:
            top, left = (rng.randint(0, max(img.shape[i] - self.gt_size, 0)) for i in (0, 1))
            img = deg.pad_to_size(img[top:top + self.gt_size, left:left + self.gt_size], size, 'edge')
        if not self.opt['fixed_warps']:
            o = self.opt
            img = deg.apply_augment(img, *deg.draw_augment(o['use_hflip'], o['use_vflip'], o['use_rot'],
                                                           joint=True)['lr'])
        return img

    def __getitem__(self, index: int) -> Dict[str, Any]:
        key = self.keys[index]
        rng = random.Random(f"{self.opt['seed']}-{index}") if self.opt['fixed_warps'] else random
        gt = self._image(key, rng)
        h, w = gt.shape[:2]
        h_inverse = draw_homography(rng, h, w, int(self.opt['max_shift']), int(self.opt['warp_window']))
        ref, coords = warp_pair(gt, h_inverse)
        images = deg.degrade(_to_uint8(gt), _to_uint8(ref))
        sample: Dict[str, Any] = {k: deg.to_tensor(images[k]) for k in ('lq', 'lq_up', 'ref_downup')}
        sample.update(gt=_float_tensor(gt), ref=_float_tensor(ref), warp_coords=torch.from_numpy(coords))
        path = self.source.path(key)
        sample.update(lq_path=path, gt_path=path, ref_path=path)
        return sample
