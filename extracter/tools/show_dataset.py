"""Save a dataset's samples as an image grid for eyeballing: one row per sample, columns LR (nearest x4, so pixels
are visible at HR scale), upsampled LR, Ref, down-up-sampled Ref, HR.

    python scripts/show_dataset.py --type CUFED5Dataset --set dataroot=datasets/CUFED/test/CUFED5 --set ref_level=3 \
        -n 4 -o results/cufed5_level3.png
    python scripts/show_dataset.py --yaml options/train_extracter.yml --section datasets.train -n 6 -o grid.png

``--set key=value`` values are parsed as YAML (``--set io_backend={type: lmdb}``, ``--set offsets=[1,16]``). The
output is written atomically and an existing file is kept unless ``--overwrite`` is given.
"""

import os
import random
import sys

from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write, check_writable, refuse_overwrite

COLUMNS = (('lq', 'LR (x4 nearest)'), ('lq_up', 'upsampled LR'), ('ref', 'Ref'), ('ref_downup', 'Ref down-up'),
           ('gt', 'HR'))


def load_options(args) -> dict:
    import yaml

    opt = {}
    if args.yaml:
        from extracter.options.schema import load_yaml

        opt = load_yaml(args.yaml)
        for part in args.section.split('.') if args.section else []:
            if not isinstance(opt, dict) or part not in opt:
                raise ValueError(f'{args.yaml}: no section {args.section!r} (missing {part!r})')
            opt = opt[part]
        if not isinstance(opt, dict):
            raise ValueError(f'{args.yaml}: section {args.section!r} is not a mapping of dataset options')
        opt = dict(opt)
    if args.type:
        opt['type'] = args.type
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'--set needs key=value, got {item!r}')
        try:
            opt[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f'--set {item}: not a YAML value ({str(err).splitlines()[0]})') from None
    if 'type' not in opt:
        raise ValueError('give the dataset type (--type or a "type:" key in the YAML section)')
    opt.setdefault('phase', 'val')
    opt.setdefault('name', opt['type'])
    return opt


def _cell(t, height: int, nearest_x4: bool = False):
    import numpy as np
    from PIL import Image

    if isinstance(t, list):  # several references: show the first
        t = t[0]
    img = Image.fromarray((t.clamp(0, 1).numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8))
    if nearest_x4:
        img = img.resize((img.width * 4, img.height * 4), Image.NEAREST)
    w = max(1, round(img.width * height / img.height))
    return img.resize((w, height), Image.NEAREST if nearest_x4 else Image.BICUBIC)


def make_grid(samples, height: int = 160):
    """A PIL image: a header row of column names, then one row per sample."""
    from PIL import Image, ImageDraw

    rows, widths = [], [0] * len(COLUMNS)
    for s in samples:
        cells = [(_cell(s[k], height, k == 'lq') if k in s else None) for k, _ in COLUMNS]
        rows.append(cells)
        widths = [max(w, c.width if c else height) for w, c in zip(widths, cells)]
    pad, header = 4, 16
    grid = Image.new('RGB', (sum(widths) + pad * (len(COLUMNS) + 1), header + len(rows) * (height + pad) + pad),
                     (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    x = pad
    for (_, title), w in zip(COLUMNS, widths):
        draw.text((x, 2), title, fill=(0, 0, 0))
        x += w + pad
    for r, cells in enumerate(rows):
        x, y = pad, header + r * (height + pad)
        for cell, w in zip(cells, widths):
            if cell is None:
                draw.text((x + 4, y + height // 2), 'absent', fill=(128, 128, 128))
            else:
                grid.paste(cell, (x, y))
            x += w + pad
    return grid


def run(argv) -> int:
    p = ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--yaml', help='options file holding the dataset block')
    p.add_argument('--section', help='dotted path of the dataset block in --yaml, e.g. datasets.val')
    p.add_argument('--type', help='registered dataset type, e.g. RefSRTrainDataset')
    p.add_argument('--set', action='append', default=[], help='dataset option key=value (YAML value); repeatable')
    p.add_argument('-n', '--num', type=int, default=4, help='number of samples (default 4)')
    p.add_argument('--start', type=int, default=0, help='index of the first sample')
    p.add_argument('--seed', type=int, default=0, help='seed of the random augmentations')
    p.add_argument('--height', type=int, default=160, help='row height in pixels')
    p.add_argument('-o', '--output', required=True, help='PNG file to write')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    args = p.parse_args(argv)
    if args.num < 1 or args.start < 0 or args.height < 8:
        raise ValueError(f'-n must be >= 1, --start >= 0 and --height >= 8; got {args.num}, {args.start}, '
                         f'{args.height}')
    refuse_overwrite(args.output, args.overwrite)
    check_writable(os.path.dirname(os.path.abspath(args.output)))
    from extracter.registry import use_basicsr

    use_basicsr()  # BasicSR's builder finds our datasets by name
    from basicsr.data import build_dataset

    opt = load_options(args)
    try:
        ds = build_dataset(opt)
    except KeyError as err:  # the registry's "No object named ... found"
        raise ValueError(f'unknown dataset type {opt["type"]!r} ({err.args[0] if err.args else err})') from None
    random.seed(args.seed)
    idx = range(args.start, min(len(ds), args.start + args.num))
    samples = [ds[i] for i in idx]
    if not samples:
        raise ValueError(f'--start {args.start}: no samples in range (the dataset has {len(ds)})')
    grid = make_grid(samples, args.height)
    atomic_write(args.output, lambda tmp: grid.save(tmp, 'PNG'))
    for i, s in zip(idx, samples):
        ref_path = s['ref_path'] if isinstance(s['ref_path'], str) else ', '.join(s['ref_path'])
        print(f'{i}: lq {tuple(s["lq"].shape[1:])} {s["lq_path"]} | ref {ref_path}')
    print(f'wrote {args.output} ({grid.width}x{grid.height})')
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
