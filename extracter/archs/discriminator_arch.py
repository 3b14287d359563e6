"""The WGAN-GP discriminator of TTSR and EXTRACTER: 10 convolutions (stride 2 every second one), two linear layers."""

import torch
from torch import nn

from extracter.archs.modules import conv3x3
from extracter.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class RefSRDiscriminator(nn.Module):
    """Takes images in [0, 1] (converted to the original's [-1, 1] inside) of size ``in_size`` x ``in_size``
    (160 in both papers; must be a multiple of 32). Returns one unbounded critic score per image."""

    channels = (32, 32, 64, 64, 128, 128, 256, 256, 512, 512)

    def __init__(self, in_size: int = 160, in_channels: int = 3) -> None:
        super().__init__()
        if in_size % 32:
            raise ValueError(f'discriminator in_size must be a multiple of 32, got {in_size}')
        self.in_size = in_size
        prev = in_channels
        for i, ch in enumerate(self.channels, start=1):
            setattr(self, f'conv{i}', conv3x3(prev, ch, stride=2 if i % 2 == 0 else 1))
            prev = ch
        self.act = nn.LeakyReLU(0.2)
        self.fc1 = nn.Linear((in_size // 32) ** 2 * 512, 1024)
        self.fc2 = nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.in_size, self.in_size):
            raise ValueError(f'discriminator expects {self.in_size}x{self.in_size} inputs, got {tuple(x.shape[-2:])}')
        x = x * 2 - 1
        for i in range(1, len(self.channels) + 1):
            x = self.act(getattr(self, f'conv{i}')(x))
        return self.fc2(self.act(self.fc1(x.flatten(1))))
