"""The main job on a bundled real example (`make demo`): x4 super-resolution with a high-resolution reference.

Example 1 (bundled with scikit-image, available offline to anyone): the Middlebury 2014 motorcycle stereo pair. The
left view is the HR target (a crop), downscaled x4 (PIL bicubic, as in training) as the input; the right view, seen
from another position, is the reference. Example 2, where ../shared/data is present: the TTSR demo pair (an LR
image and its reference; no HR exists, so no metrics).

For each example it writes, under results/demo/: the SR, the bicubic upscale, a side-by-side comparison, the
texture-source picture (where each output region's texture came from), and for example 1 also the SR with the
self-reference (the upsampled LR as its own reference, i.e. no real reference) and a PSNR/SSIM table (Y channel,
border 4) against bicubic. An earlier results/demo is kept, renamed with a time stamp (BasicSR's convention).

It uses the CPU-trained demo model in pretrained/demo_cpu/ (see README, "Demo model"). Without that file it runs
with randomly initialised weights and says so: the pictures then show the pipeline, not a result.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from extracter.data import degradations as deg
from extracter.data.image_io import read_image
from extracter.data.inference_dataset import inference_sample
from extracter.inference.folder import batch_of_one, super_resolve
from extracter.inference.network import load_network
from extracter.tools.measure import metrics
from extracter.utils.cli import ArgumentParser, run_main
from extracter.utils.file_io import atomic_write_text, check_writable
from extracter.utils.visualize import save_png, side_by_side

ROOT = Path(__file__).resolve().parents[2]  # the checkout
DEMO_WEIGHTS = ROOT / 'pretrained' / 'demo_cpu' / 'extracter_demo_cpu.pth'
SHARED = ROOT.parent / 'shared' / 'data'


def archive_existing(out: Path) -> None:
    """Rename an existing, non-empty ``out`` with a time stamp (BasicSR's convention)."""
    if out.exists() and any(out.iterdir()):
        archived = out.with_name(f'{out.name}_archived_{time.strftime("%Y%m%d_%H%M%S")}')
        out.rename(archived)
        print(f'kept the previous results as {archived}')


def run(argv) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', default=str(DEMO_WEIGHTS))
    parser.add_argument('-o', '--output', default=str(ROOT / 'results' / 'demo'))
    parser.add_argument('--crop', type=int, default=320, help='side of the HR crop of the left view (multiple of 4)')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    if not 16 <= args.crop <= 400:
        raise ValueError(f'--crop must be between 16 and 400 (an HR crop of the 500 x 741 left view), got {args.crop}')
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise NotADirectoryError(f'-o {args.output} is a file; give the folder to write the pictures into')
    check_writable(args.output)

    if Path(args.weights).is_file():
        net = load_network(args.weights, device=args.device)
        print(f'model: {args.weights}')
    else:
        import yaml

        from extracter.registry import ARCH_REGISTRY

        opt = yaml.safe_load(open(ROOT / 'options' / 'train' / 'demo_cpu.yml'))['network_g']
        opt.pop('type')
        opt.update(dfe_init='random')
        opt.pop('vgg19_path', None)
        torch.manual_seed(0)
        net = ARCH_REGISTRY.get('Extracter')(**opt).eval()
        print(f'WARNING: {args.weights} not found: running with RANDOMLY INITIALISED weights; the pictures show the '
              'pipeline, not a super-resolution result (train the demo model: see README)')
    multiples = net.size_multiples()  # (LR, reference) side multiples: inputs are edge-padded to them
    out = Path(args.output)
    archive_existing(out)
    out.mkdir(parents=True, exist_ok=True)
    run_kwargs = {'max_memory': '4G'}

    from skimage.data import stereo_motorcycle

    left, right, _ = stereo_motorcycle()
    c = args.crop - args.crop % 4
    top, lft = (left.shape[0] - c) // 2, (left.shape[1] - c) // 2
    hr = np.ascontiguousarray(left[top:top + c, lft:lft + c])
    lq = deg.make_lq(hr)
    rows = ['| example | method | PSNR (dB) | SSIM |', '|---|---|---:|---:|']
    t0 = time.time()
    sample = batch_of_one(inference_sample(lq, [right], *multiples))
    result = super_resolve(net, sample, args.device, run_kwargs, texture_map=True)
    self_ref = deg.make_lq_up(lq)
    sample_self = batch_of_one(inference_sample(lq, [self_ref], *multiples))
    result_self = super_resolve(net, sample_self, args.device, run_kwargs)
    print(f'motorcycle: {time.time() - t0:.1f} s')
    for label, img in (('bicubic', result['bicubic']), ('EXTRACTER demo, self-reference', result_self['sr']),
                       ('EXTRACTER demo, right view as reference', result['sr'])):
        p, s = metrics(img, hr)
        rows.append(f'| motorcycle (Middlebury) | {label} | {p:.2f} | {s:.4f} |')
    save_png(hr, out / 'motorcycle_hr.png')
    save_png(lq, out / 'motorcycle_lr.png')
    save_png(result['sr'], out / 'motorcycle_sr.png')
    save_png(result_self['sr'], out / 'motorcycle_sr_selfref.png')
    save_png(result['bicubic'], out / 'motorcycle_bicubic.png')
    save_png(side_by_side([('bicubic x4', result['bicubic']), ('SR, self-reference', result_self['sr']),
                           ('SR x4 with the reference', result['sr']), ('HR (ground truth)', hr),
                           ('reference (right view)', right)], height=c), out / 'motorcycle_compare.png')
    save_png(side_by_side([('SR x4', result['sr'])] + result['texture_panels'], height=c),
             out / 'motorcycle_texture.png')

    demo_pair = SHARED / 'refsr-pairs' / 'ttsr-demo'
    if (demo_pair / 'lr.png').is_file():
        lq2, ref2 = read_image(demo_pair / 'lr.png'), read_image(demo_pair / 'ref.png')
        sample2 = batch_of_one(inference_sample(lq2, [ref2], *multiples))
        r2 = super_resolve(net, sample2, args.device, run_kwargs, texture_map=True)
        save_png(r2['sr'], out / 'ttsr_demo_sr.png')
        save_png(side_by_side([('bicubic x4', r2['bicubic']), ('SR x4', r2['sr']), ('reference', ref2)],
                              height=r2['sr'].shape[0]), out / 'ttsr_demo_compare.png')
        save_png(side_by_side([('SR x4', r2['sr'])] + r2['texture_panels'], height=r2['sr'].shape[0]),
                 out / 'ttsr_demo_texture.png')
    else:
        print(f'skipped the TTSR demo pair: {demo_pair} not found')
    table = '\n'.join(rows) + '\n'
    atomic_write_text(out / 'metrics.md', table)
    print(table)
    print(f'pictures and metrics in {out}')
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
