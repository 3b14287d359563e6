"""Convert an original EXTRACTER (SR.*, FE.*) or TTSR (MainNet.*, LTE.*) checkpoint, or an mmagic/mmediting TTSR
checkpoint (generator.*, extractor.*), or an original C2-Matching restoration net with its contrastive extractor
(``--extractor``) and the canonical VGG-19 file (``--vgg19``), into a BasicSR checkpoint. A C2-Matching contrastive
extractor file alone (feature_extraction.pth, a stage-1 teacher or stage-2 student) becomes a ContrasExtractorSep
checkpoint (no YAML: start stage 3 from it with network_g.contras_path).

Writes OUTPUT (``{'params': state_dict}``) and, beside it, OUTPUT with suffix ``.yml`` holding the matching
``network_g`` options. An mmagic TTSR-GAN checkpoint's discriminator goes to OUTPUT_net_d.pth (``network_d`` in the
YAML). Checkpoints whose metadata holds objects other than tensors and plain containers (mmengine's) are read with
:func:`extracter.utils.restricted_unpickle.restricted_load`, which replaces those objects by inert placeholders; a
checkpoint whose pickle would call code (``os.system``, ``eval``) is refused as hostile, and one already in this
toolkit's format is refused with the command that uses it as it is. Load the result with:

    import yaml
    from extracter.registry import ARCH_REGISTRY  # (BasicSR's after extracter.registry.use_basicsr())
    opt = yaml.safe_load(open('model.yml'))['network_g']
    net = ARCH_REGISTRY.get(opt.pop('type'))(**opt)
    net.load_state_dict(torch.load('model.pth', weights_only=True)['params'], strict=True)

Example:
  python scripts/convert_official.py extracter_model.pt -o experiments/pretrained_models/extracter_official.pth
  python scripts/convert_official.py c2_matching_restoration.pth --extractor feature_extraction.pth \
      --vgg19 experiments/pretrained_models/vgg19_canonical.pth -o experiments/pretrained_models/c2matching.pth
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import yaml

from extracter.convert.c2matching import EXTRACTOR, c2_part, convert_c2matching_files, convert_contras_extractor
from extracter.convert.common import ConversionError
from extracter.convert.mmagic import convert_mmagic_discriminator
from extracter.convert.official import convert_state_dict, unwrap_state_dict, verify_strict_load
from extracter.utils.checkpoint import CheckpointError
from extracter.utils.checkpoint import load_checkpoint as read_checkpoint
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_torch_save, atomic_write_text, refuse_overwrite
from extracter.utils.restricted_unpickle import find_placeholders


def load_checkpoint(path: str):
    """(object, notes): ``weights_only`` loading, or the restricted loader when the file holds other objects (they
    come back as inert placeholders, listed in the notes); a pickle that calls code is refused."""
    try:
        raw = read_checkpoint(path, placeholders=True)
    except CheckpointError as err:
        raise ConversionError(str(err)) from None
    found = find_placeholders(raw)
    names = sorted(set(found.values()))
    return raw, [f'not loaded (replaced by placeholders): {len(found)} object(s) of {names[:6]}'
                 f'{" ..." if len(names) > 6 else ""}'] if found else []


def _convert_c2(input_path: str, raw, extractor: Optional[str], vgg19: Optional[str]):
    """C2-Matching: the input and ``--extractor`` (any order), with the canonical VGG-19 file."""
    states = [(unwrap_state_dict(raw, input_path), input_path)]
    notes: List[str] = []
    if extractor is not None:
        raw_e, notes = load_checkpoint(extractor)
        states.append((unwrap_state_dict(raw_e, extractor), extractor))
    state, options, more = convert_c2matching_files(states, vgg19)
    verify_strict_load(state, options, input_path)
    return state, options, notes + more


def convert(input_path: str, output: str, overwrite: bool = False, extractor: Optional[str] = None,
            vgg19: Optional[str] = None) -> dict:
    out = Path(output)
    yml = out.with_suffix('.yml')
    out_d = out.with_name(f'{out.stem}_net_d{out.suffix}')
    if out.suffix.lower() in ('.yml', '.yaml') or not out.suffix:
        raise ConversionError(f'-o {output}: give the weights file to write (e.g. {out.with_suffix(".pth").name}); '
                              f'its options go beside it as {yml.name}')
    if Path(input_path).resolve() in (out.resolve(), yml.resolve(), out_d.resolve()):
        raise ConversionError(f'-o {output} would replace the input {input_path}; write the conversion elsewhere')
    refuse_overwrite(out, overwrite)
    refuse_overwrite(yml, overwrite)
    raw, load_notes = load_checkpoint(input_path)
    part = c2_part(unwrap_state_dict(raw, input_path))
    if extractor is None and vgg19 is None and part == EXTRACTOR:  # alone: a ContrasExtractorSep checkpoint
        state, notes = convert_contras_extractor(unwrap_state_dict(raw, input_path), input_path)
        atomic_torch_save({'params': state}, out)
        return {'output': str(out), 'options': None, 'network_g': None, 'notes': load_notes + notes}
    if extractor is not None or part is not None:
        state, options, notes = _convert_c2(input_path, raw, extractor, vgg19)
        disc = None
    else:
        if vgg19 is not None:
            raise ConversionError(f'--vgg19 is for C2-Matching checkpoints; {input_path} is not one (its VGG-19 is '
                                  'in the checkpoint)')
        state, options, notes = convert_state_dict(raw, source=input_path)
        disc = convert_mmagic_discriminator(unwrap_state_dict(raw, input_path), input_path)
    if disc is not None:
        refuse_overwrite(out_d, overwrite)
    atomic_torch_save({'params': state}, out)
    header = f'# network_g options for {out.name}, converted from {Path(input_path).name}\n'
    if options['type'] == 'Extracter':  # TTSR's search geometry is fixed (3/1/1)
        header += ('# The search geometry (window/stride/padding) is not stored in the weights: 3/1/1 as released;\n'
                   '# the paper evaluates with 6/2/2. Both work with these weights.\n')
    doc = {'network_g': options}
    result = {'output': str(out), 'options': str(yml), 'network_g': options, 'notes': load_notes + notes}
    if disc is not None:
        atomic_torch_save({'params': disc[0]}, out_d)
        doc['network_d'] = disc[1]
        result.update(output_d=str(out_d), network_d=disc[1])
    atomic_write_text(yml, header + yaml.safe_dump(doc, sort_keys=False))
    return result


def run(argv) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input', help='checkpoint saved by the original EXTRACTER or TTSR code, or by mmagic')
    parser.add_argument('-o', '--output', required=True, help='output .pth (the .yml is written beside it)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing output files')
    parser.add_argument('--extractor', help='C2-Matching: the contrastive extractor file (feature_extraction.pth, '
                        'or a stage-2 student net_student_*.pth) to convert with the restoration net')
    parser.add_argument('--vgg19', help='C2-Matching: the canonical VGG-19 file (python scripts/prepare_vgg19.py); '
                        'default experiments/pretrained_models/vgg19_canonical.pth')
    args = parser.parse_args(argv)
    result = convert(args.input, args.output, args.overwrite, args.extractor, args.vgg19)
    if result['options'] is None:  # a C2-Matching contrastive extractor alone: no network_g of its own
        print(f"wrote {result['output']}")
    else:
        print(f"wrote {result['output']}{' and ' + result['output_d'] if 'output_d' in result else ''} "
              f"and {result['options']}")
        print(yaml.safe_dump({'network_g': result['network_g']}, sort_keys=False).rstrip())
    for note in result['notes']:
        print('note:', note)
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
