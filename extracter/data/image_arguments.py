"""The image-reading flags of the command lines, ``--max-image-pixels`` and ``--16bit-scaling``: a command line adds
them with :func:`add_image_arguments` and applies them with :func:`apply_image_arguments` (the settings of
:mod:`extracter.data.image_io`)."""

import argparse

from extracter.data.image_io import (
    SCALINGS,
    get_max_image_pixels,
    set_16bit_scaling,
    set_max_image_pixels,
)


def parse_pixel_count(text: str) -> int:
    """``--max-image-pixels`` values: a whole number (``_`` allowed), ``W x H`` (``20000x20000``), or 0 / none
    (no limit)."""
    t = text.strip().lower().replace(' ', '')
    try:
        if t in ('none', '0'):
            return 0
        if 'x' in t:
            w, h = t.split('x')
            value = int(w) * int(h)
        else:
            value = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected a number of pixels (e.g. 400000000 or 20000x20000), got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected a positive number of pixels, got {text!r}')
    return value


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-image-pixels`` and ``--16bit-scaling``, applied by :func:`apply_image_arguments`."""
    parser.add_argument('--max-image-pixels', type=parse_pixel_count, default=None, metavar='N',
                        help=f'largest image read, in pixels (default {get_max_image_pixels() or 0:,}; a guard '
                             'against decompression bombs); also WxH; 0: no limit')
    parser.add_argument('--16bit-scaling', dest='sixteen_bit_scaling', choices=SCALINGS, default=None,
                        help='16-bit images: high-byte (default, as OpenCV/BasicSR) or significant-bits (stretch '
                             '10/12-bit data stored unscaled in 16 bits)')


def apply_image_arguments(args: argparse.Namespace) -> None:
    if getattr(args, 'max_image_pixels', None) is not None:
        set_max_image_pixels(args.max_image_pixels or None)
    if getattr(args, 'sixteen_bit_scaling', None):
        set_16bit_scaling(args.sixteen_bit_scaling)
