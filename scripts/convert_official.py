#!/usr/bin/env python
"""Convert an original EXTRACTER (SR.*, FE.*) or TTSR (MainNet.*, LTE.*) checkpoint into a BasicSR checkpoint.

Writes OUTPUT (``{'params': state_dict}``) and, beside it, OUTPUT with suffix ``.yml`` holding the matching
``network_g`` options. Load it with:

    import extracter, yaml
    from basicsr.utils.registry import ARCH_REGISTRY
    opt = yaml.safe_load(open('model.yml'))['network_g']
    net = ARCH_REGISTRY.get(opt.pop('type'))(**opt)
    net.load_state_dict(torch.load('model.pth', weights_only=True)['params'], strict=True)

Example:
  python scripts/convert_official.py extracter_model.pt -o experiments/pretrained_models/extracter_official.pth
"""

import argparse
from pathlib import Path

import yaml

from extracter.archs.convert import ConversionError, convert_state_dict
from extracter.utils.checkpoint import CheckpointError, load_checkpoint
from extracter.utils.file_io import atomic_torch_save, atomic_write_text, refuse_overwrite


def convert(input_path: str, output: str, overwrite: bool = False) -> dict:
    out = Path(output)
    yml = out.with_suffix('.yml')
    refuse_overwrite(out, overwrite)
    refuse_overwrite(yml, overwrite)
    try:
        raw = load_checkpoint(input_path)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    state, options, notes = convert_state_dict(raw, source=input_path)
    atomic_torch_save({'params': state}, out)
    header = (f'# network_g options for {out.name}, converted from {Path(input_path).name}\n'
              '# The search geometry (window/stride/padding) is not stored in the weights: 3/1/1 as released;\n'
              '# the paper evaluates with 6/2/2. Both work with these weights.\n')
    atomic_write_text(yml, header + yaml.safe_dump({'network_g': options}, sort_keys=False))
    return {'output': str(out), 'options': str(yml), 'network_g': options, 'notes': notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input', help='checkpoint saved by the original EXTRACTER or TTSR code')
    parser.add_argument('-o', '--output', required=True, help='output .pth (the .yml is written beside it)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files')
    args = parser.parse_args()
    try:
        result = convert(args.input, args.output, args.overwrite)
    except (ConversionError, FileNotFoundError, FileExistsError) as err:
        raise SystemExit(f'error: {err}') from err
    print(f"wrote {result['output']} and {result['options']}")
    print(yaml.safe_dump({'network_g': result['network_g']}, sort_keys=False).rstrip())
    for note in result['notes']:
        print('note:', note)


if __name__ == '__main__':
    main()
