"""Robust image reading: every image of this package is read here, into uint8 RGB ``H x W x 3`` arrays.

Decoding is done by Pillow for files and for bytes (LMDB records) alike, so both backends give identical pixels.
Normalisation, in this order:

1. EXIF orientation is applied (``ImageOps.exif_transpose``): a photo stored upside down with orientation 3 comes out
   upright, as every viewer shows it.
2. Modes: palette (``P``) and ``1``/``L``/``LA`` are expanded to RGB (greyscale replicated to three channels); an alpha
   channel is dropped, as OpenCV's ``IMREAD_COLOR`` (what BasicSR reads with) does; ``CMYK``/``YCbCr`` are converted.
   Dropping an alpha channel that is not fully opaque emits an :class:`ImageInputWarning` (the colours under the
   transparent pixels show).
3. 16-bit samples keep their high byte (``v >> 8``), as Pillow does for 48-bit RGB PNGs and OpenCV for all 16-bit
   images, so 16-bit greyscale and 16-bit colour files map to 8 bits the same way. That is the ``'high-byte'``
   scaling, the default. Data of 10 or 12 significant bits stored unscaled in 16 bits (maximum below 4096) comes out
   nearly black that way: it emits an :class:`ImageInputWarning` giving the maximum, and
   :func:`set_16bit_scaling` ``('significant-bits')`` stretches such data by its real bit depth instead.

Limits: an image whose header claims more than :func:`get_max_image_pixels` pixels (default
:data:`DEFAULT_MAX_IMAGE_PIXELS`, Pillow's own threshold) is refused before it is decoded, a guard against
decompression bombs (a small file claiming, say, 20000 x 20000 pixels would need 1.2 GB of memory). Genuinely huge
photos are read after :func:`set_max_image_pixels` (the command lines' ``--max-image-pixels``).

Both settings are process-wide; they are also put into the environment (``EXTRACTER_MAX_IMAGE_PIXELS``,
``EXTRACTER_16BIT_SCALING``), so DataLoader workers and subprocesses started afterwards inherit them.

Errors (missing file, directory, permission, empty file, unknown format, truncated or corrupt data, too many pixels,
unsupported mode) raise :class:`ImageReadError` naming the file; running out of memory while decoding raises
``MemoryError`` naming it.
"""

import io
import os
import re
import struct
import warnings
from typing import BinaryIO, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from extracter.utils.input_warning import InputWarning

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

# Pillow's own threshold (it warns above it and refuses twice as many): about 9459 x 9459, or a 100-megapixel
# camera's 11648 x 8736 refused. Decoded as uint8 RGB that is 268 MB, and super-resolving it x4 yields 1.4 gigapixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = 'EXTRACTER_MAX_IMAGE_PIXELS'
SCALING_ENV = 'EXTRACTER_16BIT_SCALING'
SCALINGS = ('high-byte', 'significant-bits')
LOW_RANGE_16BIT = 4096  # a 16-bit maximum below this (12 significant bits or fewer) is 'low range'

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """An image file (or LMDB record) could not be read; the message names it."""


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than the limit (see :func:`set_max_image_pixels`)."""


class ImageInputWarning(InputWarning):
    """An image was read, but something in it was lost or looks wrong (the message names the file)."""


def _parse_max_pixels(text: str) -> Optional[int]:
    if text.strip().lower() in ('none', '0', ''):
        return None
    return int(text)


def _sync_pillow_limit(limit: Optional[int]) -> None:
    # Pillow refuses more than 2 * Image.MAX_IMAGE_PIXELS in Image.open, before our check can run: raise its limit
    # with ours (never lower it; ours is the one that decides).
    if Image.MAX_IMAGE_PIXELS is not None and (limit is None or limit > Image.MAX_IMAGE_PIXELS):
        Image.MAX_IMAGE_PIXELS = limit


try:
    _max_pixels: Optional[int] = _parse_max_pixels(os.environ.get(MAX_PIXELS_ENV, str(DEFAULT_MAX_IMAGE_PIXELS)))
except ValueError:
    warnings.warn(f'{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a number; using the default '
                  f'{DEFAULT_MAX_IMAGE_PIXELS}', ImageInputWarning, stacklevel=1)
    _max_pixels = DEFAULT_MAX_IMAGE_PIXELS
_sync_pillow_limit(_max_pixels)
_scaling = os.environ.get(SCALING_ENV, 'high-byte')
if _scaling not in SCALINGS:
    warnings.warn(f'{SCALING_ENV}={_scaling!r} is not one of {", ".join(SCALINGS)}; using high-byte',
                  ImageInputWarning, stacklevel=1)
    _scaling = 'high-byte'


def set_max_image_pixels(limit: Optional[int]) -> None:
    """Largest image (width x height) that is decoded; ``None`` (or 0) removes the limit (trusted files only).

    Also exported as ``EXTRACTER_MAX_IMAGE_PIXELS`` for processes started afterwards (DataLoader workers)."""
    global _max_pixels
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f'the image pixel limit must be a positive whole number (0 or None: no limit), got {limit!r}')
    _max_pixels = int(limit) if limit else None
    os.environ[MAX_PIXELS_ENV] = str(_max_pixels or 0)
    _sync_pillow_limit(_max_pixels)


def get_max_image_pixels() -> Optional[int]:
    return _max_pixels


def set_16bit_scaling(mode: str) -> None:
    """How 16-bit samples become 8-bit ones.

    ``'high-byte'`` (default): ``v >> 8``, what OpenCV and BasicSR do, and right for any file that uses the 16-bit
    range as PNG and TIFF define it. ``'significant-bits'``: data whose maximum is below 2**14 is taken as having
    ``b`` significant bits (the PNG ``sBIT`` chunk's value when the data fits in it, else the smallest of 10, 12, 14
    that holds the maximum) and mapped by ``round(v * 255 / (2**b - 1))``; full-range data is unchanged. The bit depth
    is inferred per file, so a dark frame of a 12-bit sequence without sBIT may be stretched as 10-bit data: only use
    it for files known to be stored that way."""
    global _scaling
    if mode not in SCALINGS:
        raise ValueError(f'16-bit scaling must be one of {", ".join(SCALINGS)}, got {mode!r}')
    _scaling = mode
    os.environ[SCALING_ENV] = mode


def get_16bit_scaling() -> str:
    return _scaling


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose does)
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def _png_sbit(data: bytes) -> Optional[int]:
    """Significant bits of a PNG's colour samples (its sBIT chunk), or None."""
    if not data.startswith(b'\x89PNG\r\n\x1a\n'):
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        if kind in (b'IDAT', b'IEND'):
            return None
        if kind == b'sBIT' and length >= 1:
            body = data[pos + 8:pos + 8 + length]
            colour = body[:3] if length >= 3 else body[:1]  # grey: 1 (+ alpha), RGB: 3 (+ alpha)
            return max(colour) if colour else None
        pos += 12 + length
    return None


def _significant_bits(peak: int, sbit: Optional[int]) -> int:
    if sbit and 8 < sbit < 16 and peak < (1 << sbit):
        return sbit
    for bits in (10, 12, 14):
        if peak < (1 << bits):
            return bits
    return 16


def _to_uint8(samples: np.ndarray, bits: int) -> np.ndarray:
    if bits >= 16:
        return (samples >> 8).astype(np.uint8)
    scaled = np.rint(samples.astype(np.float64) * (255.0 / ((1 << bits) - 1)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _decode_16bit_colour(data: bytes) -> Optional[np.ndarray]:
    """The 16-bit RGB samples of a 48/64-bit PNG or TIFF (Pillow only gives their high bytes), or None."""
    import cv2

    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(arr[..., 2::-1])  # BGR(A) -> RGB


def _read_all(fp) -> bytes:
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()
    fp.seek(0)
    return fp.read()


def _to_rgb_uint8(img: Image.Image, name: str, fp, rawmode: str, notes: List[str]) -> np.ndarray:
    """``img`` (loaded, not yet transposed) as uint8 RGB; problems worth a warning are appended to ``notes``."""
    try:
        orientation = img.getexif().get(0x0112, 1)
        img = ImageOps.exif_transpose(img)
    except Exception as err:  # noqa: BLE001  a corrupt EXIF block: the pixels are still good
        orientation = 1
        notes.append(f'{name}: unreadable EXIF data ({type(err).__name__}: {err}); orientation not applied')
    mode = img.mode
    if mode == 'F':
        raise ImageReadError(f'{name}: floating-point images (mode F) are not supported; convert to 8 or 16 bit')
    _check_alpha(img, name, notes)
    if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
        # 16-bit greyscale (Pillow opens 16-bit PNGs as I;16 or I)
        arr = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        out = _scale_16bit(arr, name, fp, notes)
        return np.ascontiguousarray(np.repeat(out[..., None], 3, axis=2))
    if mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
    if img.mode != 'RGB':
        img = img.convert('RGB')  # L, LA, 1, RGBA (alpha dropped), CMYK, YCbCr, ...
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f'{name}: could not convert mode {mode} to RGB (got shape {arr.shape})')
    low = (1 << 14) if _scaling == 'significant-bits' else LOW_RANGE_16BIT
    if ';16' in rawmode and mode in ('RGB', 'RGBA') and int(arr.max()) < (low >> 8):
        # 48/64-bit colour whose high bytes are all small: look at the full samples (a second decode, by OpenCV)
        samples = _decode_16bit_colour(_read_all(fp))
        if samples is None:
            notes.append(f'{name}: 16-bit colour image whose 8-bit maximum is {int(arr.max())} (nearly black); its '
                         'data may have fewer than 16 significant bits')
        else:
            out = _scale_16bit(samples.astype(np.int64), name, fp, notes)
            if orientation in _ORIENTATION:
                out = np.asarray(Image.fromarray(out).transpose(_ORIENTATION[orientation]))
            arr = out
    return np.ascontiguousarray(arr)


def _scale_16bit(samples: np.ndarray, name: str, fp, notes: List[str]) -> np.ndarray:
    peak = int(samples.max()) if samples.size else 0
    if _scaling == 'significant-bits' and peak < (1 << 14):
        return _to_uint8(samples, _significant_bits(peak, _png_sbit(_read_all(fp))))
    if peak >= LOW_RANGE_16BIT:
        return _to_uint8(samples, 16)
    bits = _significant_bits(peak, None)
    notes.append(f'{name}: 16-bit image whose maximum sample is {peak} (< {LOW_RANGE_16BIT}), as {bits}-bit data '
                 'stored unscaled in 16 bits would be; keeping the high byte (the default, as OpenCV and BasicSR do) '
                 f'makes it nearly black (8-bit maximum {peak >> 8}). To stretch it by its real bit depth pass '
                 '--16bit-scaling significant-bits (extracter.data.image_io.set_16bit_scaling), or rescale the file')
    return _to_uint8(samples, 16)


def _check_alpha(img: Image.Image, name: str, notes: List[str]) -> None:
    mode = img.mode
    if mode not in ('RGBA', 'LA', 'PA', 'RGBa', 'La') and 'transparency' not in img.info:
        return
    try:
        alpha = np.asarray(img.convert('RGBA').getchannel('A'))
    except (ValueError, OSError):  # a mode Pillow cannot take to RGBA: nothing to say
        return
    transparent = alpha < 255
    if not transparent.any():
        return
    notes.append(f'{name}: the alpha channel is dropped, but {100.0 * transparent.mean():.1f}% of the pixels are not '
                 f'fully opaque (lowest alpha {int(alpha.min())}): the colours stored under the transparent pixels '
                 'will show (often black or leftovers). Flatten the image onto a background first, e.g. with Pillow: '
                 'Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA")).convert("RGB")')


def _tile_rawmode(img: Image.Image) -> str:
    try:
        args = img.tile[0].args if img.tile else None
    except (AttributeError, IndexError):
        return ''
    if isinstance(args, tuple):
        args = args[0] if args else ''
    return args if isinstance(args, str) else ''


def _too_large(name: str, size: Optional[Tuple[int, int]], pixels: Optional[int]) -> ImageTooLargeError:
    what = f'{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels' if size else f'{pixels:,} pixels'
    need = size[0] * size[1] if size else pixels
    limit = f'{_max_pixels:,}' if _max_pixels else f'{Image.MAX_IMAGE_PIXELS * 2:,} (Pillow\'s)'
    return ImageTooLargeError(
        f'{name}: the image is {what}, more than the limit of {limit} pixels (a guard against decompression bombs: '
        f'small files whose header claims a huge image); if it is a genuine photo, raise the limit with '
        f'--max-image-pixels {need} (extracter.data.image_io.set_max_image_pixels)')


def _unknown_format(name: str, fp) -> str:
    try:
        fp.seek(0)
        head = fp.read(32)
    except OSError:
        head = b''
    if head[4:12] in (b'ftypheic', b'ftypheix', b'ftyphevc', b'ftypmif1', b'ftypmsf1'):
        hint = ': HEIC/HEIF is not supported, convert it to PNG or JPEG'
    elif head[4:12] in (b'ftypavif', b'ftypavis'):
        hint = ': this Pillow cannot read AVIF, convert it to PNG or JPEG'
    elif head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        hint = f' (it looks like text: {head.decode("ascii")[:20]!r}...)'
    else:
        hint = ''
    return f'{name}: not an image, or a format that cannot be read{hint}'


def _decode(fp: BinaryIO, name: str) -> Tuple[np.ndarray, List[str]]:
    notes: List[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; ours decides (below), so its warning would only repeat it
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            try:
                img = Image.open(fp)
            except Image.DecompressionBombError as err:
                m = re.search(r'\((\d+) pixels\)', str(err))
                raise _too_large(name, None, int(m.group(1)) if m else 0) from err
            except UnidentifiedImageError as err:
                raise ImageReadError(_unknown_format(name, fp)) from err
            with img:
                if _max_pixels is not None and img.size[0] * img.size[1] > _max_pixels:
                    raise _too_large(name, img.size, None)
                frames = getattr(img, 'n_frames', 1)
                rawmode = _tile_rawmode(img)
                try:
                    img.load()
                except Image.DecompressionBombError as err:
                    raise _too_large(name, img.size, None) from err
                except MemoryError as err:
                    raise MemoryError(f'{name}: out of memory decoding a {img.size[0]} x {img.size[1]} image') \
                        from err
                except Exception as err:  # noqa: BLE001  any decoder failure means corrupt data
                    raise ImageReadError(f'{name}: corrupt or truncated image data, cannot decode it '
                                         f'({type(err).__name__}: {err})') from err
                try:
                    arr = _to_rgb_uint8(img, name, fp, rawmode, notes)
                except (ImageReadError, MemoryError):
                    raise
                except Exception as err:  # noqa: BLE001
                    raise ImageReadError(f'{name}: cannot convert the image (mode {img.mode}) to RGB '
                                         f'({type(err).__name__}: {err})') from err
    except (ImageReadError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001  the header of a corrupt file
        raise ImageReadError(f'{name}: corrupt or truncated image data, cannot read its header '
                             f'({type(err).__name__}: {err})') from err
    if isinstance(frames, int) and frames > 1:
        notes.append(f'{name}: has {frames} frames (pages); only the first is used')
    return arr, notes


def _warn(notes: List[str]) -> None:
    for note in notes:
        warnings.warn(note, ImageInputWarning, stacklevel=3)


def _open_image_file(path: str) -> BinaryIO:
    """The file opened for reading, or an :class:`ImageReadError` naming it (missing, a folder, no permission,
    empty)."""
    try:
        f = open(path, 'rb')
    except FileNotFoundError as err:
        raise ImageReadError(f'{path}: no such image file') from err
    except IsADirectoryError as err:
        raise ImageReadError(f'{path}: is a folder, not an image file') from err
    except PermissionError as err:
        raise ImageReadError(f'{path}: permission denied, cannot open the image for reading') from err
    except OSError as err:
        raise ImageReadError(f'{path}: cannot open the image ({err.strerror or err})') from err
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError:
        size = -1
    if size == 0:
        f.close()
        raise ImageReadError(f'{path}: empty file (0 bytes), not an image')
    return f


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``H x W x 3`` (see the module docstring for the normalisation). The array is
    usually read-only (Pillow's pixel buffer, not copied again): copy it before writing into it; for a tensor use
    :func:`extracter.data.degradations.to_tensor`."""
    path = os.fspath(path)
    with _open_image_file(path) as f:
        arr, notes = _decode(f, path)
    _warn(notes)
    return arr


def check_image_file(path: PathLike) -> Tuple[int, int]:
    """Read only the header of an image file and return its (width, height), with the errors :func:`read_image`
    would raise for a missing, empty, unknown-format or too large (pixel limit) file. Cheap (no pixels are decoded):
    a folder's inputs are all checked this way before the first output is written. Corrupt pixel data behind a
    valid header is only found by :func:`read_image`."""
    path = os.fspath(path)
    with _open_image_file(path) as f:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', Image.DecompressionBombWarning)
                try:
                    img = Image.open(f)
                except Image.DecompressionBombError as err:
                    m = re.search(r'\((\d+) pixels\)', str(err))
                    raise _too_large(path, None, int(m.group(1)) if m else 0) from err
                except UnidentifiedImageError as err:
                    raise ImageReadError(_unknown_format(path, f)) from err
                with img:
                    size = img.size
        except ImageReadError:
            raise
        except Exception as err:  # noqa: BLE001  the header of a corrupt file
            raise ImageReadError(f'{path}: corrupt or truncated image data, cannot read its header '
                                 f'({type(err).__name__}: {err})') from err
    if _max_pixels is not None and size[0] * size[1] > _max_pixels:
        raise _too_large(path, size, None)
    return size


def decode_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes (an LMDB record) exactly as :func:`read_image` reads a file; ``name`` is used in
    error messages."""
    if not data:
        raise ImageReadError(f'{name}: empty image record')
    arr, notes = _decode(io.BytesIO(data), name)
    _warn(notes)
    return arr


def encode_png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """Lossless PNG bytes of a uint8 RGB image, as BasicSR's LMDB tools write them (OpenCV, given BGR order)."""
    import cv2

    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'encode_png expects uint8 H x W x 3, got {img.dtype} {img.shape}')
    try:
        ok, buf = cv2.imencode('.png', np.ascontiguousarray(img[..., ::-1]),
                               [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    except cv2.error as err:
        raise ValueError(f'PNG encoding of a {img.shape[1]} x {img.shape[0]} image failed: {err}') from err
    if not ok:
        raise ValueError(f'PNG encoding of a {img.shape[1]} x {img.shape[0]} image failed')
    return buf.tobytes()


def list_images(folder: PathLike) -> list:
    """Sorted image file names (not paths) of a folder; a missing or image-less folder is an error naming it."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise NotADirectoryError(f'{folder}: is a file, expected a folder of images')
        raise FileNotFoundError(f'{folder}: no such folder')
    try:
        entries = os.listdir(folder)
    except PermissionError as err:
        raise PermissionError(f'{folder}: permission denied, cannot list the folder') from err
    names = sorted(n for n in entries if is_image_file(n) and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise FileNotFoundError(f'{folder}: folder has no images (extensions {", ".join(IMAGE_EXTENSIONS)})')
    return names
