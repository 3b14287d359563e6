"""The original TTSR / EXTRACTER data protocol on uint8 RGB ``H x W x 3`` arrays, with PIL bicubic resizing.

Degradations (TTSR ``dataset/cufed.py``, kept by EXTRACTER), for HR of size (h, w) and a reference of size (h2, w2):
    LR         = bicubic(HR, (w // 4, h // 4))
    lq_up      = bicubic(LR, (w, h))             (the LR's image for the search, TTSR Eq. 4's Q side)
    ref_downup = bicubic(bicubic(Ref, (w2 // 4, h2 // 4)), (w2, h2))   (the reference's, Eq. 4's K side)
Augmentations, drawn after the degradations as the original does: horizontal flip, vertical flip, then a rotation by
k * 90 degrees (k in 0..3), each drawn independently for the LR group (lq, lq_up, gt) and the Ref group (ref,
ref_downup). Random draws use Python's ``random`` module, which PyTorch seeds per DataLoader worker and BasicSR's
``set_random_seed`` seeds in the main process.
"""

import random
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from extracter.archs.refsr_base import SCALE  # the one definition of the x4 factor

Size = Union[int, Sequence[int]]


def as_hw(size: Size, name: str) -> Tuple[int, int]:
    """An int or a (h, w) pair as a (h, w) tuple of positive ints."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        if len(size) != 2:
            raise ValueError(f'{name} must be an int or [h, w], got {size!r}')
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f'{name} must be positive, got {size!r}')
    return h, w


def pil_bicubic(img: np.ndarray, size_wh: Tuple[int, int]) -> np.ndarray:
    """Resize a uint8 image to (width, height) with PIL's bicubic filter, as the original code does."""
    w, h = size_wh
    if w < 1 or h < 1:
        raise ValueError(f'cannot resize an image of size {img.shape[1]}x{img.shape[0]} (w x h) to {w}x{h}')
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def make_lq(gt: np.ndarray) -> np.ndarray:
    """LR = HR bicubically downsampled to (w // 4, h // 4)."""
    h, w = gt.shape[:2]
    return pil_bicubic(gt, (w // SCALE, h // SCALE))


def make_lq_up(lq: np.ndarray, size_hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """The LR bicubically upsampled to ``size_hw`` (the HR size; default 4x the LR)."""
    h, w = size_hw if size_hw is not None else (lq.shape[0] * SCALE, lq.shape[1] * SCALE)
    return pil_bicubic(lq, (w, h))


def make_ref_downup(ref: np.ndarray) -> np.ndarray:
    """The reference bicubically down to (w2 // 4, h2 // 4), then up to (w2, h2)."""
    h2, w2 = ref.shape[:2]
    return pil_bicubic(pil_bicubic(ref, (w2 // SCALE, h2 // SCALE)), (w2, h2))


def degrade(gt: np.ndarray, ref: np.ndarray) -> Dict[str, np.ndarray]:
    """All five images of the protocol: gt, lq, lq_up, ref, ref_downup (gt's sides must be multiples of 4)."""
    h, w = gt.shape[:2]
    if h % SCALE or w % SCALE:
        raise ValueError(f'HR size {h}x{w} must be a multiple of {SCALE}; crop or pad it first')
    lq = make_lq(gt)
    return {'gt': gt, 'lq': lq, 'lq_up': make_lq_up(lq, (h, w)), 'ref': ref, 'ref_downup': make_ref_downup(ref)}


def crop_to_multiple(img: np.ndarray, multiple: int, name: str = 'image') -> np.ndarray:
    """Keep the top-left part whose sides are multiples of ``multiple`` (the original test-set crop)."""
    h, w = img.shape[:2]
    h2, w2 = h // multiple * multiple, w // multiple * multiple
    if h2 == 0 or w2 == 0:
        raise ValueError(f'{name}: size {h}x{w} is smaller than the required multiple {multiple}')
    return img[:h2, :w2]


def pad_to_size(img: np.ndarray, size_hw: Tuple[int, int], mode: str = 'edge') -> np.ndarray:
    """Pad at the bottom and right up to ``size_hw`` (no-op where already as large). ``mode``: 'edge' (replicate,
    OpenCV's BORDER_REPLICATE as EXTRACTER pads) or 'constant' (zeros, as TTSR pads references)."""
    h, w = img.shape[:2]
    ph, pw = max(size_hw[0] - h, 0), max(size_hw[1] - w, 0)
    if ph == 0 and pw == 0:
        return img
    pad = ((0, ph), (0, pw)) + ((0, 0),) * (img.ndim - 2)
    return np.pad(img, pad, mode=mode)


def pad_to_multiple(img: np.ndarray, multiple: int, mode: str = 'edge') -> np.ndarray:
    """Pad at the bottom and right to the next multiple of ``multiple`` (EXTRACTER's training pads to 16)."""
    h, w = img.shape[:2]
    return pad_to_size(img, (-(-h // multiple) * multiple, -(-w // multiple) * multiple), mode)


def stitch_references(refs: Sequence[np.ndarray], canvas: int = 512,
                      names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Several references as one image, as MASA-SR's multi-reference CUFED5 test set (``dataloader/dataset.py``,
    ``TestSet_multi``): each reference centred on a ``canvas`` x ``canvas`` image with replicated edges (the top and
    left get the smaller half of the padding; OpenCV's BORDER_REPLICATE), stacked top to bottom (``cv2.vconcat``)."""
    out = []
    for i, ref in enumerate(refs):
        h, w = ref.shape[:2]
        if h > canvas or w > canvas:
            name = names[i] if names else f'reference {i}'
            raise ValueError(f'{name}: size {h}x{w} is larger than the stitching canvas {canvas}x{canvas} '
                             '(raise stitch_size)')
        top, left = (canvas - h) // 2, (canvas - w) // 2
        pad = ((top, canvas - h - top), (left, canvas - w - left)) + ((0, 0),) * (ref.ndim - 2)
        out.append(np.pad(ref, pad, mode='edge'))
    return np.concatenate(out, axis=0)


def random_crop(img: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """A uniformly placed crop of at most ``size_hw`` (a side already smaller stays whole)."""
    h, w = img.shape[:2]
    ch, cw = min(size_hw[0], h), min(size_hw[1], w)
    top = random.randint(0, h - ch)
    left = random.randint(0, w - cw)
    return img[top:top + ch, left:left + cw]


def draw_augment(use_hflip: bool, use_vflip: bool, use_rot: bool,
                 joint: bool = False) -> Dict[str, Tuple[bool, bool, int]]:
    """Independent (hflip, vflip, k) for the LR group and the Ref group, drawn in the original's order.

    ``joint``: the Ref group takes the LR group's transform (the draws are the same, so the random stream is too)."""
    hf_lr = use_hflip and random.random() < 0.5
    hf_ref = use_hflip and random.random() < 0.5
    vf_lr = use_vflip and random.random() < 0.5
    vf_ref = use_vflip and random.random() < 0.5
    k_lr = random.randint(0, 3) if use_rot else 0
    k_ref = random.randint(0, 3) if use_rot else 0
    if joint:
        return {'lr': (hf_lr, vf_lr, k_lr), 'ref': (hf_lr, vf_lr, k_lr)}
    return {'lr': (hf_lr, vf_lr, k_lr), 'ref': (hf_ref, vf_ref, k_ref)}


def apply_augment(img: np.ndarray, hflip: bool, vflip: bool, k: int) -> np.ndarray:
    """Horizontal flip, vertical flip, then ``np.rot90`` by k (counter-clockwise), as the original."""
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if k:
        img = np.rot90(img, k)
    return np.ascontiguousarray(img)


LR_GROUP = ('gt', 'lq', 'lq_up')
REF_GROUP = ('ref', 'ref_downup')


def augment_sample(images: Dict[str, np.ndarray], params: Dict[str, Tuple[bool, bool, int]]) -> Dict[str, np.ndarray]:
    """Apply :func:`draw_augment`'s parameters to the LR group and the Ref group of a sample."""
    out = dict(images)
    for group, keys in (('lr', LR_GROUP), ('ref', REF_GROUP)):
        for key in keys:
            if key in out:
                out[key] = apply_augment(out[key], *params[group])
    return out


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 ``H x W x 3`` -> float32 ``3 x H x W`` in [0, 1]. ``img`` may be read-only (as :func:`read_image`'s
    arrays are: Pillow's pixel buffer); torch is never handed a read-only array (it would warn)."""
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    if not chw.flags.writeable:  # the transpose needed no copy (a 1 x 1 image): still the read-only buffer
        chw = chw.copy()
    return torch.from_numpy(chw).float().div_(255.0)
