"""C2-Matching's contrastive correspondence network (paper Sec. 3.1): two VGG-16 branches cut at conv3_1.

Each branch is VGG-16's ``features`` up to and including ``conv3_1`` (no ReLU after it), with ImageNet mean/std
applied inside to an image in [0, 1]. The two branches have separate weights (the "Sep" of the original's
``ContrasExtractorSep``): the first sees the upsampled LR (PIL bicubic x4 of the PIL bicubic LR), the second the
reference's down-up copy during training (teacher) or the reference itself at inference.

The parameter names equal the original's (``model.conv1_1.weight``, ...), so its checkpoints map one to one; the
mean/std are fixed constants here (non-persistent buffers), not weights, so a state dict holds only the convolutions.
Nothing is downloaded: the weights come from a checkpoint, or from torchvision's VGG-16 ``features`` state dict
given by the caller (:meth:`ContrasExtractorLayer.load_vgg16_features`), as the original initialises its training.
"""

from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VGG-16 ``features`` up to conv3_1: (name, out channels or None for a ReLU / 'pool' for max-pooling)
VGG16_TO_CONV3_1: Tuple[Tuple[str, object], ...] = (
    ('conv1_1', 64), ('relu1_1', None), ('conv1_2', 64), ('relu1_2', None), ('pool1', 'pool'),
    ('conv2_1', 128), ('relu2_1', None), ('conv2_2', 128), ('relu2_2', None), ('pool2', 'pool'),
    ('conv3_1', 256),
)
CONTRAS_CHANNELS = 256  # conv3_1's output channels: the descriptors the correspondence compares


def _vgg16_to_conv3_1() -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = 3
    for name, item in VGG16_TO_CONV3_1:
        if item is None:
            layers[name] = nn.ReLU(inplace=True)
        elif item == 'pool':
            layers[name] = nn.MaxPool2d(kernel_size=2, stride=2)
        else:
            layers[name] = nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1)
            in_ch = int(item)
    return nn.Sequential(layers)


class ContrasExtractorLayer(nn.Module):
    """One branch: (image in [0, 1] - ImageNet mean) / std -> VGG-16 conv1_1 .. conv3_1 (pre-activation)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _vgg16_to_conv3_1()
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model((batch - self.mean) / self.std)

    def load_vgg16_features(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load torchvision's ``vgg16().features`` weights (keys ``<i>.weight`` or ``features.<i>.weight``) into
        this branch: the original's initialisation (``vgg16(pretrained=True)``), from a file the caller read."""
        mapped: Dict[str, torch.Tensor] = {}
        for index, (name, item) in enumerate(VGG16_TO_CONV3_1):
            if isinstance(item, int):
                for kind in ('weight', 'bias'):
                    key = next((k for k in (f'{index}.{kind}', f'features.{index}.{kind}') if k in state), None)
                    if key is None:
                        raise KeyError(f'VGG-16 features state dict: no weights for layer {index} ({name}.{kind})')
                    mapped[f'model.{name}.{kind}'] = state[key]
        self.load_state_dict(mapped, strict=True)


class ContrasExtractorSep(nn.Module):
    """The two branches with separate weights; returns the original's dict of ``dense_features1/2``."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_extraction_image1 = ContrasExtractorLayer()
        self.feature_extraction_image2 = ContrasExtractorLayer()

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {
            'dense_features1': self.feature_extraction_image1(image1),
            'dense_features2': self.feature_extraction_image2(image2),
        }
