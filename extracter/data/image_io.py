"""Robust image reading: every image of this package is read here, into uint8 RGB ``H x W x 3`` arrays.

Decoding is done by Pillow for files and for bytes (LMDB records) alike, so both backends give identical pixels.
Normalisation, in this order:

1. EXIF orientation is applied (``ImageOps.exif_transpose``): a photo stored upside down with orientation 3 comes out
   upright, as every viewer shows it.
2. Modes: palette (``P``) and ``1``/``L``/``LA`` are expanded to RGB (greyscale replicated to three channels); an alpha
   channel is dropped, as OpenCV's ``IMREAD_COLOR`` (what BasicSR reads with) does; ``CMYK``/``YCbCr`` are converted.
3. 16-bit samples keep their high byte (``v >> 8``), as Pillow does for 48-bit RGB PNGs and OpenCV for all 16-bit
   images, so 16-bit greyscale and 16-bit colour files map to 8 bits the same way.

Errors (missing file, not an image, truncated data, unsupported mode) raise :class:`ImageReadError` naming the file.
"""

import io
import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """An image file (or LMDB record) could not be read; the message names it."""


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb_uint8(img: Image.Image, name: str) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        # 16-bit greyscale (Pillow opens 16-bit PNGs as I;16 or I): keep the high byte.
        arr = np.asarray(img).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if mode == 'F':
        raise ImageReadError(f'{name}: floating-point images (mode F) are not supported; convert to 8 or 16 bit')
    if mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    if img.mode != 'RGB':
        img = img.convert('RGB')  # L, LA, 1, RGBA (alpha dropped), CMYK, YCbCr, ...
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f'{name}: could not convert mode {mode} to RGB (got shape {arr.shape})')
    return np.ascontiguousarray(arr)


def _decode(fp, name: str) -> np.ndarray:
    try:
        with Image.open(fp) as img:
            img.load()
            return _to_rgb_uint8(img, name)
    except ImageReadError:
        raise
    except UnidentifiedImageError as err:
        raise ImageReadError(f'{name}: not a readable image ({err})') from err
    except (OSError, ValueError, SyntaxError) as err:  # truncated / corrupt data
        raise ImageReadError(f'{name}: cannot decode image ({err})') from err


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``H x W x 3`` (see the module docstring for the normalisation)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f'{path}: no such image file')
    return _decode(path, path)


def decode_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes (an LMDB record) exactly as :func:`read_image` reads a file; ``name`` is used in
    error messages."""
    if not data:
        raise ImageReadError(f'{name}: empty image record')
    return _decode(io.BytesIO(data), name)


def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """Lossless PNG bytes of a uint8 RGB image, as BasicSR's LMDB tools write them (OpenCV, given BGR order)."""
    import cv2

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'encode_png expects uint8 H x W x 3, got {img.dtype} {img.shape}')
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise ValueError('PNG encoding failed')
    return buf.tobytes()


def list_images(folder: PathLike) -> list:
    """Sorted image file names (not paths) of a folder; a missing or image-less folder is an error naming it."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{folder}: no such folder')
    names = sorted(n for n in os.listdir(folder) if is_image_file(n) and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise FileNotFoundError(f'{folder}: folder has no images (extensions {", ".join(IMAGE_EXTENSIONS)})')
    return names
