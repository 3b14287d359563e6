"""The global descriptor of a gallery image: what the shortlist compares (fast at any gallery size).

The network's own texture extractor (VGG-19 to relu3_1: EXTRACTER's DFE, TTSR's LTE) on the image scaled so that its
long side is :data:`DESCRIBE_SIDE` pixels, pooled over the whole map by its mean and its max (each L2-normalised, so
that both count alike), then L2-normalised: the cosine of two descriptors is their dot product. Stored as float16
(1 KB per image). The recipe (:data:`RECIPE`) and the extractor's weights (:func:`model_identity`) are stored with an
index: another recipe or model makes other descriptors, so such an index is rebuilt.
"""

import hashlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from extracter.archs.refsr_base import RefSRNet, bicubic_resize

RECIPE = 'vgg19-relu3_1 side256 mean+max l2 v1'  # change it with any change below: indexes are then rebuilt
DESCRIBE_SIDE = 256  # the long side the image is scaled to (relu3_1 is then at most 64 x 64)
DESCRIPTOR_DIM = 512  # 256 relu3_1 channels, mean and max


def model_identity(net: RefSRNet) -> str:
    """A digest of the feature extractor's weights (names, shapes, values): the same weights give the same identity
    wherever the checkpoint lies; a fine-tuned extractor gives another."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.feature_extractor().state_dict().items()):
        t = tensor.detach().to('cpu', torch.float32).contiguous()
        digest.update(f'{name}:{tuple(t.shape)};'.encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:32]


def to_unit_tensor(rgb: np.ndarray, device: str = 'cpu') -> torch.Tensor:
    """A uint8 RGB H x W x 3 array as a [1, 3, H, W] float tensor in [0, 1]."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'expected a uint8 RGB image H x W x 3, got {rgb.dtype} {rgb.shape}')
    x = torch.from_numpy(np.require(rgb, requirements=('C', 'W')))  # a writable copy of a read-only array
    return x.to(device).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def scaled(x: torch.Tensor, long_side: int, multiple: int = 4) -> torch.Tensor:
    """``x`` [1, 3, H, W] resized (bicubic, antialiased) so that its long side is ``long_side``, both sides multiples
    of ``multiple`` (VGG-19's pooling grid) and at least ``multiple``."""
    h, w = x.shape[-2:]
    f = long_side / max(h, w)
    size = tuple(max(multiple, int(round(s * f / multiple)) * multiple) for s in (h, w))
    return x if size == (h, w) else bicubic_resize(x, size)


@torch.no_grad()
def describe_tensor(net: RefSRNet, x: torch.Tensor) -> torch.Tensor:
    """The descriptor [D] (float32, unit length) of an image [1, 3, H, W] in [0, 1]."""
    feat = net.feature_extractor()(scaled(x, DESCRIBE_SIDE))[2].float().flatten(2)[0]  # relu3_1 [256, h*w]
    pooled = torch.cat([F.normalize(feat.mean(1), dim=0), F.normalize(feat.amax(1), dim=0)])
    return F.normalize(pooled, dim=0)


def describe_image(net: RefSRNet, rgb: np.ndarray, device: str = 'cpu') -> np.ndarray:
    """The descriptor of a uint8 RGB image, as stored in an index (float16 [D])."""
    return describe_tensor(net, to_unit_tensor(rgb, device)).cpu().numpy().astype(np.float16)


def stack_descriptors(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Descriptors as one float16 matrix [N, D] (an empty one for none)."""
    if not rows:
        return np.zeros((0, DESCRIPTOR_DIM), np.float16)
    return np.stack([np.asarray(r, np.float16) for r in rows])
