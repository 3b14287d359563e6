"""The weights of the C2-Matching parity fixture (tests/fixtures/parity_c2matching/README.md): random, in the
original code's key layout, made from a seed by torch's CPU generator, so the fixture stays small (the network has
10 M parameters). The fixture stores a checksum of every tensor, so a change of the generator shows as such."""

from typing import Dict, Iterable, Tuple

import torch


def parity_weights(shapes: Iterable[Tuple[str, Tuple[int, ...]]], seed: int) -> Dict[str, torch.Tensor]:
    """Uniform weights, +-1/sqrt(fan_in) (PyTorch's default bound) for weights, +-0.1 for biases, rounded to
    float16 values (exactly representable in float32), generated key by key in the given order."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        bound = fan_in ** -0.5 if len(shape) > 1 else 0.1
        out[key] = ((torch.rand(shape, generator=gen) * 2 - 1) * bound).half().float()
    return out


def checksums(state: Dict[str, torch.Tensor]) -> Dict[str, Tuple[float, float]]:
    """(sum, sum of squares) of every tensor, in float64."""
    return {k: (float(v.double().sum()), float(v.double().pow(2).sum())) for k, v in state.items()}
