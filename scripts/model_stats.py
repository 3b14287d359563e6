#!/usr/bin/env python
"""Print parameters and multiply-adds of each architecture for a given input size.

Multiply-adds are counted by PyTorch's FlopCounterMode (convolutions, the search's matrix products, linear layers;
element-wise operations, interpolation and fold/unfold are not counted), reported as GMACs = FLOPs / 2.

Example:
  python scripts/model_stats.py --lr-size 40 40 --ref-size 160 160
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from extracter.registry import ARCH_REGISTRY

CONFIGS = {
    'TTSR (released)': ('TTSR', dict(lte_init='random')),
    'EXTRACTER notebook, w3/s1': ('Extracter', dict(num_res_blocks='2+8+8+4', num_grad_blocks='2+9+9+9', top_k=3)),
    'EXTRACTER notebook, w6/s2': ('Extracter', dict(num_res_blocks='2+8+8+4', num_grad_blocks='2+9+9+9', top_k=3,
                                                     window=6, stride=2, padding=2)),
    'EXTRACTER train.py, w3/s1': ('Extracter', dict(num_res_blocks='8+16+8+4', num_grad_blocks='8+9+9+9', top_k=2)),
    'EXTRACTER train.py, w6/s2': ('Extracter', dict(num_res_blocks='8+16+8+4', num_grad_blocks='8+9+9+9', top_k=2,
                                                     window=6, stride=2, padding=2)),
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lr-size', type=int, nargs=2, default=(40, 40), metavar=('H', 'W'))
    parser.add_argument('--ref-size', type=int, nargs=2, default=(160, 160), metavar=('H', 'W'))
    args = parser.parse_args()
    print(f'LR {args.lr_size[0]}x{args.lr_size[1]} -> SR {4 * args.lr_size[0]}x{4 * args.lr_size[1]}, '
          f'reference {args.ref_size[0]}x{args.ref_size[1]}\n')
    print('| configuration | parameters | frozen | GMACs | extractor | search | main net | GDE |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|')
    for label, (arch, kwargs) in CONFIGS.items():
        s = stats(arch, kwargs, tuple(args.lr_size), tuple(args.ref_size))
        p = s['parts']
        extractor = p.get('dfe', p.get('lte', 0.0))
        print(f"| {label} | {s['params']:,} | {s['frozen']} | {s['gmacs']:.2f} | {extractor:.2f} | "
              f"{p['search']:.2f} | {p.get('main', 0.0):.2f} | {p.get('gde', 0.0):.2f} |")


if __name__ == '__main__':
    main()
