"""Perceptual loss on VGG-19 relu5_1 features (TTSR/EXTRACTER ``per_loss``, weight 1e-2 in both papers)."""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from extracter.archs.vgg import InputNorm, load_canonical_vgg19, vgg19_features
from extracter.registry import LOSS_REGISTRY

RELU5_1_LAYERS = 30  # torchvision vgg19().features[:30] ends with relu5_1


@LOSS_REGISTRY.register()
class PerceptualRelu51Loss(nn.Module):
    """``loss_weight * MSE(phi(SR), phi(HR))`` with ``phi`` the frozen VGG-19 up to relu5_1; images in [0, 1].

    Args:
        loss_weight: the weight (1e-2 in the papers).
        vgg19_path: the canonical local VGG-19 file (see ``scripts/prepare_vgg19.py``); nothing is downloaded.
        init: ``'vgg19'`` loads that file, ``'random'`` keeps a random network (tests only).
    """

    def __init__(self, loss_weight: float = 1e-2, vgg19_path: Optional[str] = None, init: str = 'vgg19') -> None:
        super().__init__()
        if init not in ('vgg19', 'random'):
            raise ValueError(f"PerceptualRelu51Loss init must be 'vgg19' or 'random', got {init!r}")
        self.loss_weight = loss_weight
        self.input_norm = InputNorm()
        self.features = vgg19_features(RELU5_1_LAYERS)
        if init == 'vgg19':
            state = load_canonical_vgg19(vgg19_path)
            with torch.no_grad():
                self.input_norm.weight.copy_(state['input_norm.weight'])
                self.input_norm.bias.copy_(state['input_norm.bias'])
                for i, module in enumerate(self.features):
                    if isinstance(module, nn.Conv2d):
                        module.weight.copy_(state[f'features.{i}.weight'])
                        module.bias.copy_(state[f'features.{i}.bias'])
        for p in self.parameters():
            p.requires_grad = False
        self.eval()

    def train(self, mode: bool = True) -> 'PerceptualRelu51Loss':
        return super().train(False)  # the loss network stays frozen and in eval mode

    def relu5_1(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.input_norm(x))

    def forward(self, sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.relu5_1(gt.detach())
        return self.loss_weight * F.mse_loss(self.relu5_1(sr), target)
