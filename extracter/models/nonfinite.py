"""Non-finite values in training: the checks that keep inf/NaN out of the weights, the EMA and the checkpoints.

A generator or critic step whose loss terms or gradients are not all finite is skipped (its gradients dropped, the
optimiser untouched) and recorded as a :class:`SkippedStep`; the training loop (:mod:`extracter.pipeline.training`)
counts consecutive iterations with skipped steps and stops after ``train.nonfinite_patience`` of them
(:data:`NONFINITE_PATIENCE` by default). A step with finite gradients that still leaves non-finite weights (an
overflowing update) cannot be undone: the loop stops at once. Before a checkpoint is written every network's weights
are checked (:func:`nonfinite_tensors`); a network with non-finite weights is never saved.

Every check costs one transfer to the CPU per step; under distributed training the loss terms are summed over the
processes first (the gradients and weights are equal on every process already), so every process decides alike.
"""

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Tuple

import torch

NONFINITE_PATIENCE = 5  # consecutive iterations with skipped steps tolerated (train.nonfinite_patience)


class NonFiniteError(ValueError):
    """Training stopped on non-finite values, or a network with non-finite weights was not saved (a known error:
    one ``error:`` line, exit status 2)."""


@dataclass
class SkippedStep:
    """One optimiser step skipped (or, with ``weights``, taken but leaving non-finite weights)."""

    network: str  # 'generator' or 'critic'
    terms: List[str] = field(default_factory=list)  # the loss terms that were not finite
    gradient: bool = False  # the terms were finite, the gradient was not
    weights: bool = False  # the step was taken and left non-finite weights (nothing can undo it)

    def describe(self) -> str:
        if self.weights:
            return f'the {self.network} step left non-finite weights'
        what = ', '.join(self.terms) if self.terms else 'gradient'
        return f'non-finite {what} ({self.network})'


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Whether every element of ``tensors`` is finite, as a boolean tensor on their device (no transfer)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)


def check_step(terms: Mapping[str, torch.Tensor], grads: Iterable[torch.Tensor],
               dist: bool = False) -> Tuple[List[str], bool]:
    """(names of the loss terms that are not finite, whether all ``grads`` are finite), with one transfer to the
    CPU. ``dist``: the terms are summed over the processes first (inf or NaN anywhere stays non-finite)."""
    names = list(terms)
    grads_ok = all_finite(grads)
    if not names:
        return [], bool(grads_ok)
    values = torch.stack([terms[k].detach().float().mean() for k in names])
    if dist:
        torch.distributed.all_reduce(values)
    flags = torch.cat([torch.isfinite(values), grads_ok.reshape(1).to(values.device)]).cpu().tolist()
    return [k for k, ok in zip(names, flags) if not ok], bool(flags[-1])


def nonfinite_tensors(state: Dict[str, torch.Tensor]) -> List[str]:
    """The keys of the floating-point tensors of a state dict that hold inf or NaN."""
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
