"""What the converters of official checkpoints share: their error and the ``network_g`` options read off converted
weights (:mod:`extracter.convert.official` for the original EXTRACTER/TTSR code, :mod:`extracter.convert.mmagic` for
mmagic's TTSR)."""

import re
from typing import Dict

import torch


class ConversionError(ValueError):
    pass


def _count(state: Dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r'\.(\d+)\.')
    indices = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
    return max(indices) + 1 if indices else 0


def infer_network_options(arch: str, state: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """The ``network_g`` options (type and arguments) that build a network matching ``state`` (our key names)."""
    n_feats = int(state['main.SFE.conv_head.weight'].shape[0])
    res_blocks = [_count(state, p) for p in ('main.SFE.RBs', 'main.RB11', 'main.RB21', 'main.RB31')]
    if arch == 'Extracter':
        grad_blocks = [_count(state, p) for p in ('gde.SFE.RBs', 'gde.grad_12', 'gde.grad_23', 'gde.grad_33')]
        return {
            'type': 'Extracter',
            'num_res_blocks': '+'.join(map(str, res_blocks)),
            'num_grad_blocks': '+'.join(map(str, grad_blocks)),
            'n_feats': n_feats,
            'res_scale': 1.0,
            'top_k': _count(state, 'main.conv11_head'),
            # the search geometry is not stored in the weights: the released code used 3/1/1, the paper 6/2/2;
            # both work with the same weights (Extracter.set_search_geometry).
            'window': 3,
            'stride': 1,
            'padding': 1,
            'dfe_init': 'random',  # the checkpoint holds the DFE weights
        }
    return {
        'type': 'TTSR',
        'num_res_blocks': '+'.join(map(str, res_blocks)),
        'n_feats': n_feats,
        'res_scale': 1.0,
        'lte_init': 'random',
    }
