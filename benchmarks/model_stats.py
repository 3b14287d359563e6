"""Print parameters and multiply-adds of each architecture for a given input size.

Multiply-adds are counted by PyTorch's FlopCounterMode (convolutions, the search's matrix products, linear layers;
element-wise operations, interpolation and fold/unfold are not counted), reported as GMACs = FLOPs / 2.

The single-image DRCT rows (released x4 configurations of the original's options/test YAMLs) count parameters like
the original README (``sum(p.numel() for p in model.parameters())``: DRCT 14,139,579 = "14.13M", DRCT-L 27,580,719 =
"27.58M"); the persistent buffers that are in their state dict besides (relative position indices and the
shifted-window masks for img_size 64) are listed separately. Their GMACs are for an LR input of --sisr-size.

Example (from the repository root):
  python -m benchmarks.model_stats --lr-size 40 40 --ref-size 160 160 --sisr-size 64 64
"""

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import markdown_table
from extracter.registry import ARCH_REGISTRY
from extracter.utils.cli import ArgumentParser, run_main

CONFIGS = {
    'TTSR (released)': ('TTSR', dict(lte_init='random')),
    'EXTRACTER notebook, w3/s1': ('Extracter', dict(num_res_blocks='2+8+8+4', num_grad_blocks='2+9+9+9', top_k=3)),
    'EXTRACTER notebook, w6/s2': ('Extracter', dict(num_res_blocks='2+8+8+4', num_grad_blocks='2+9+9+9', top_k=3,
                                                     window=6, stride=2, padding=2)),
    'EXTRACTER train.py, w3/s1': ('Extracter', dict(num_res_blocks='8+16+8+4', num_grad_blocks='8+9+9+9', top_k=2)),
    'EXTRACTER train.py, w6/s2': ('Extracter', dict(num_res_blocks='8+16+8+4', num_grad_blocks='8+9+9+9', top_k=2,
                                                     window=6, stride=2, padding=2)),
}

_DRCT_RELEASED = dict(upscale=4, in_chans=3, img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30,
                      conv_scale=0.01, overlap_ratio=0.5, img_range=1.0, embed_dim=180, mlp_ratio=2,
                      upsampler='pixelshuffle', resi_connection='1conv')
SISR_CONFIGS = {
    'DRCT x4 (options/test/DRCT_SRx4.yml)': ('DRCT', dict(_DRCT_RELEASED, depths=[6] * 6, num_heads=[6] * 6)),
    'DRCT-L x4 (options/test/DRCT-L_SRx4_ImageNet-pretrain.yml)': (
        'DRCT', dict(_DRCT_RELEASED, depths=[6] * 12, num_heads=[6] * 12)),
}


def sisr_stats(arch: str, kwargs: dict, lr_hw) -> dict:
    net = ARCH_REGISTRY.get(arch)(**kwargs).eval()
    params = sum(p.numel() for p in net.parameters())
    persistent = net.state_dict()
    index = sum(v.numel() for k, v in persistent.items() if k.endswith('relative_position_index'))
    mask = sum(v.numel() for k, v in persistent.items() if k.endswith('attn_mask'))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net.forward_padded(torch.rand(1, 3, *lr_hw))
    return {'params': params, 'index': index, 'mask': mask, 'gmacs': counter.get_total_flops() / 2e9}


def stats(arch: str, kwargs: dict, lr_hw, ref_hw) -> dict:
    if arch == 'Extracter':
        kwargs = {'dfe_init': 'random', **kwargs}
    net = ARCH_REGISTRY.get(arch)(**kwargs).eval()
    params = sum(p.numel() for p in net.parameters())
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    lr, ref = torch.rand(1, 3, *lr_hw), torch.rand(1, 3, *ref_hw)
    counter = FlopCounterMode(display=False, depth=2)
    with torch.no_grad(), counter:
        net(lr, ref)
    per_module = counter.get_flop_counts()
    parts = {}
    for name in ('dfe', 'lte', 'main', 'gde'):
        key = f'{type(net).__name__}.{name}'
        if key in per_module:
            parts[name] = sum(per_module[key].values()) / 2e9
    total = counter.get_total_flops() / 2e9
    parts['search'] = total - sum(parts.values())
    return {'params': params, 'frozen': frozen, 'gmacs': total, 'parts': parts}


def run(argv) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lr-size', type=int, nargs=2, default=(40, 40), metavar=('H', 'W'))
    parser.add_argument('--ref-size', type=int, nargs=2, default=(160, 160), metavar=('H', 'W'))
    parser.add_argument('--sisr-size', type=int, nargs=2, default=(64, 64), metavar=('H', 'W'),
                        help='LR input of the single-image rows (DRCT); padded to its window multiple')
    parser.add_argument('--only', choices=('refsr', 'sisr'), help='print one table only')
    args = parser.parse_args(argv)
    if min([*args.lr_size, *args.ref_size, *args.sisr_size]) < 1:
        raise ValueError(f'sizes must be positive, got --lr-size {args.lr_size} --ref-size {args.ref_size} '
                         f'--sisr-size {args.sisr_size}')
    if args.only != 'sisr':
        refsr_table(args)
    if args.only != 'refsr':
        sisr_table(args)
    return 0


def sisr_table(args: argparse.Namespace) -> None:
    h, w = args.sisr_size
    print(f'\nSingle-image SR: LR {h}x{w} -> SR x4\n')
    rows = []
    for label, (arch, kwargs) in SISR_CONFIGS.items():
        s = sisr_stats(arch, kwargs, (h, w))
        rows.append([label, f"{s['params']:,}", f"{s['index']:,}", f"{s['mask']:,}", f"{s['gmacs']:.2f}"])
    print(markdown_table(['configuration', 'parameters', '+ relative position index (buffer)',
                          '+ attention masks (buffer)', 'GMACs'], rows, 'lrrrr'))


def refsr_table(args: argparse.Namespace) -> None:
    print(f'LR {args.lr_size[0]}x{args.lr_size[1]} -> SR {4 * args.lr_size[0]}x{4 * args.lr_size[1]}, '
          f'reference {args.ref_size[0]}x{args.ref_size[1]}\n')
    rows = []
    for label, (arch, kwargs) in CONFIGS.items():
        s = stats(arch, kwargs, tuple(args.lr_size), tuple(args.ref_size))
        p = s['parts']
        extractor = p.get('dfe', p.get('lte', 0.0))
        rows.append([label, f"{s['params']:,}", str(s['frozen']), f"{s['gmacs']:.2f}", f'{extractor:.2f}',
                     f"{p['search']:.2f}", f"{p.get('main', 0.0):.2f}", f"{p.get('gde', 0.0):.2f}"])
    print(markdown_table(['configuration', 'parameters', 'frozen', 'GMACs', 'extractor', 'search', 'main net', 'GDE'],
                         rows, 'lrrrrrrr'))


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
