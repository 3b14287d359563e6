"""WGAN-GP adversarial loss (Gulrajani et al. 2017), as TTSR and EXTRACTER train with it."""

from typing import Tuple

import torch
from torch import nn

from extracter.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class WGANGPLoss(nn.Module):
    """Generator term ``-loss_weight * E[D(SR)]``; critic loss ``E[D(SR)] - E[D(HR)] + gp_weight * GP``, with
    ``GP = E[(||grad D(x_hat)||_2 - 1)^2]`` on random interpolates ``x_hat`` of SR and HR.

    Args:
        loss_weight: weight of the generator term (1e-3 in the papers).
        gp_weight: gradient-penalty weight (10).
    """

    def __init__(self, loss_weight: float = 1e-3, gp_weight: float = 10.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.gp_weight = gp_weight

    def forward(self, d_fake: torch.Tensor) -> torch.Tensor:
        """Weighted generator loss from the critic's scores of SR images."""
        return -self.loss_weight * d_fake.mean()

    def discriminator_loss(self, net_d: nn.Module, real: torch.Tensor,
                           fake: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Critic loss (not weighted by ``loss_weight``) and its parts: (loss, wasserstein term, gp, D(real) mean).

        Real, fake and interpolated images go through ``net_d`` in one batch (the critic has no batch statistics), so
        that a DistributedDataParallel critic sees one forward per backward.
        """
        fake = fake.detach()
        n = real.size(0)
        eps = torch.rand(n, 1, 1, 1, device=real.device, dtype=real.dtype)
        hat = (fake * (1 - eps) + real * eps).requires_grad_(True)
        scores = net_d(torch.cat([fake, real, hat], dim=0))
        d_fake, d_real, d_hat = scores[:n], scores[n:2 * n], scores[2 * n:]
        grad = torch.autograd.grad(outputs=d_hat.sum(), inputs=hat, create_graph=True)[0]
        gp = (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
        wdist = d_fake.mean() - d_real.mean()
        return wdist + self.gp_weight * gp, wdist, gp, d_real.mean()
