"""DRCT: Dense-residual-connected Transformer for single-image super-resolution.

Hsu, Lee, Chou, "DRCT: Saving Image Super-resolution away from Information Bottleneck", CVPR Workshops 2024,
arXiv:2404.00722. Re-implemented from the paper and the authors' code (github.com/ming053l/DRCT,
``drct/archs/DRCT_arch.py``) so that

* the constructor takes the same arguments with the same defaults (an original ``network_g`` YAML block works as is),
* the module tree has the same parameter and buffer names and shapes (an original checkpoint, ``params`` or
  ``params_ema``, loads with ``strict=True``), and
* :meth:`DRCT.forward` computes what the original computes (checked against outputs of the original code by
  ``tests/test_drct.py`` on the fixtures of ``tests/fixtures/parity_drct``).

The network (the paper's method section; component names as there): shallow features by one 3x3 convolution; deep
features by a stack of Residual Deep feature extraction Groups (RDG), each one Swin-Dense-Residual-Connected Block
(SDRCB) of five Swin Transformer layers whose inputs are densely concatenated (growth ``gc`` channels per layer),
then LayerNorm and a 3x3 convolution with a long skip; reconstruction by a pixel-shuffle upsampler. Like the
original, the input is an RGB image in [0, 1] whose height and width are multiples of ``window_size`` (see
:meth:`DRCT.pad_multiple` and :meth:`DRCT.forward_padded`, which reflect-pads as the original test code does).

Facts of the original kept here on purpose:

* ``depths`` only sets the number of groups (``len(depths)``) and the stochastic-depth rates: every group has exactly
  five Swin layers whatever ``depths[i]`` says, and all five use the first rate of the group's slice of
  ``linspace(0, drop_path_rate, sum(depths))``.
* Layer ``j`` (0-based) of a group works on ``embed_dim + j * gc`` channels with ``num_heads[i]`` heads (j = 0) or
  ``num_heads[i] - ((embed_dim + j * gc) % num_heads[i])`` heads (j >= 1); layers 1 and 3 (``swin2``,
  ``swin4``) use shifted windows; layers 3 and 4 (``swin4``, ``swin5``) use an MLP ratio of 1 instead of ``mlp_ratio``.
* ``compress_ratio``, ``squeeze_factor``, ``conv_scale``, ``overlap_ratio`` and ``use_checkpoint`` are accepted and
  unused (leftovers of HAT in the original).
* The relative position index (every layer) and the shifted-window attention mask for an ``img_size`` input (shifted
  layers) are persistent buffers, so they are in the state dict; the mask is recomputed for other input sizes.
* ``patch_size`` only divides ``img_size`` to give the resolution of that stored mask; features are never patched.

One deliberate difference: the original also takes ``**kwargs`` and silently ignores unknown keys; here an unknown key
is a ``TypeError``, so a misspelt ``network_g`` option is reported (every key of the original's option files is a
named argument). Configurations on which the original fails (at construction with an unclear error, or only in
forward) raise a ``ValueError`` that says why. A mask recomputed for another input size takes the input's dtype (the
original keeps it float32, which only matters in half precision).
"""

import math
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from extracter.archs.descriptor import ArchDescriptor, describe
from extracter.registry import ARCH_REGISTRY

_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean used by the original for 3-channel inputs
_UPSAMPLE_FEATS = 64  # channels of the reconstruction branch (fixed in the original)
_GROUP_LAYERS = 5  # Swin layers per SDRCB (fixed in the original)
_DENSE_RESIDUAL_SCALE = 0.2  # SDRCB output: 0.2 * Z_5 + Z (residual scaling of the dense block)


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f'expected an int or a pair, got {value!r}')
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _trunc_normal_(tensor: torch.Tensor, std: float) -> None:
    """Truncated normal in [-2, 2] (absolute bounds, as timm's / BasicSR's ``trunc_normal_`` used by the original)."""
    nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0, b=2.0)


def group_heads(dim: int, gc: int, num_heads: int) -> List[int]:
    """Attention heads of the five Swin layers of one group, as the original chooses them.

    Layer ``j`` sees ``dim + j * gc`` channels; the original reduces the head count by that width modulo
    ``num_heads`` (layer 0 keeps ``num_heads``). The result must divide the width, else the original fails in forward.
    """
    heads = []
    for j in range(_GROUP_LAYERS):
        width = dim + j * gc
        h = num_heads if j == 0 else num_heads - (width % num_heads)
        if h <= 0 or width % h:
            raise ValueError(f'DRCT layer {j} of a group has {width} channels (embed_dim {dim} + {j} x gc {gc}) and '
                             f'{h} heads (num_heads {num_heads}), which do not divide them; the original code would '
                             'fail in forward for this configuration')
        heads.append(h)
    return heads


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class Mlp(nn.Module):
    """Two-layer feed-forward network of a Swin layer (``fc1`` -> GELU -> ``fc2``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/window * W/window, window, window, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window, window, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) index into the (2 * window - 1)^2 relative position bias table (Swin Transformer)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # shift to start from 0
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def shifted_window_mask(size: Tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(nW, window^2, window^2) additive mask (0 or -100) of shifted-window attention for an H x W feature map.

    After the cyclic shift, tokens of a window that came from different image regions must not attend to each other.
    """
    h, w = size
    region = torch.zeros(1, h, w, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[:, hs, ws, :] = label
            label += 1
    regions = window_partition(region, window).view(-1, window * window)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a learned relative position bias (Swin Transformer)."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        _trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B * nW, N, C) tokens of each window; mask: (nW, N, N) additive mask or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, window={self.window}, num_heads={self.num_heads}'


class SwinLayer(nn.Module):
    """Swin Transformer layer: (shifted) window attention and MLP, each pre-normed with a residual.

    ``input_resolution`` is the feature size for which the shifted-window mask is stored as the ``attn_mask`` buffer;
    as in Swin, a window not smaller than that resolution is shrunk to it and not shifted.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window: int, shift: int,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: Optional[float], drop: float, attn_drop: float,
                 drop_path: float, norm_layer: Type[nn.Module]) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        if min(input_resolution) <= window:
            window, shift = min(input_resolution), 0
        if not 0 <= shift < window:
            raise ValueError(f'shift {shift} must lie in [0, window {window})')
        self.window, self.shift = window, shift
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = shifted_window_mask(input_resolution, window, shift) if shift > 0 else None
        self.register_buffer('attn_mask', mask)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """x: (B, H * W, C) tokens of an H x W map, H and W multiples of the window."""
        h, w = size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window).view(-1, self.window * self.window, c)
        if self.shift == 0:
            mask = None
        elif tuple(size) == tuple(self.input_resolution):
            mask = self.attn_mask
        else:
            mask = shifted_window_mask(size, self.window, self.shift).to(device=x.device, dtype=x.dtype)
        windows = self.attn(windows, mask=mask).view(-1, self.window, self.window, c)
        x = window_reverse(windows, self.window, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, input_resolution={self.input_resolution}, window={self.window}, shift={self.shift}'


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H * W, C)."""
    return x.flatten(2).transpose(1, 2)


def _image(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(B, H * W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).view(x.shape[0], -1, size[0], size[1])


class RDG(nn.Module):
    """Residual Deep feature extraction Group: one Swin-Dense-Residual-Connected Block (SDRCB).

    Layer ``j`` is a Swin layer on the concatenation ``[Z, Z_1, ..., Z_{j-1}]`` followed by a 1x1 convolution to
    ``gc`` channels and LeakyReLU (the last one back to ``dim`` channels, no activation); the group returns
    ``0.2 * Z_5 + Z``.
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window: int, mlp_ratio: float,
                 qkv_bias: bool, qk_scale: Optional[float], drop: float, attn_drop: float, drop_path: float,
                 norm_layer: Type[nn.Module], gc: int) -> None:
        super().__init__()
        heads = group_heads(dim, gc, num_heads)
        for j in range(_GROUP_LAYERS):
            width = dim + j * gc
            layer = SwinLayer(width, input_resolution, heads[j], window, shift=window // 2 if j % 2 else 0,
                              mlp_ratio=mlp_ratio if j < 3 else 1.0, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                              attn_drop=attn_drop, drop_path=drop_path, norm_layer=norm_layer)
            setattr(self, f'swin{j + 1}', layer)
            setattr(self, f'adjust{j + 1}', nn.Conv2d(width, dim if j == _GROUP_LAYERS - 1 else gc, 1))
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """x: (B, H * W, dim) tokens."""
        feats = [x]
        for j in range(1, _GROUP_LAYERS + 1):
            z = getattr(self, f'swin{j}')(torch.cat(feats, -1) if len(feats) > 1 else x, size)
            z = getattr(self, f'adjust{j}')(_image(z, size))
            if j < _GROUP_LAYERS:
                z = self.lrelu(z)
            feats.append(_tokens(z))
        return feats[-1] * _DENSE_RESIDUAL_SCALE + x


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H * W, C) tokens, optionally LayerNorm-ed (the original's patch embedding, patch size 1)."""

    def __init__(self, embed_dim: int, norm_layer: Optional[Type[nn.Module]]) -> None:
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _tokens(x)
        return self.norm(x) if self.norm is not None else x


class Upsample(nn.Sequential):
    """Sub-pixel upsampler: (3x3 conv to 4C, PixelShuffle 2) per factor 2 for scales 2^n, or (9C, PixelShuffle 3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        layers: List[nn.Module] = []
        if scale >= 1 and scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f'upscale {scale} is not supported; supported scales: 2^n and 3')
        super().__init__(*layers)


def read_drct_options(state: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """The ``network_g`` options of the DRCT a plain state dict belongs to, as far as its tensors determine them
    (``DRCT.descriptor.detect`` unwraps checkpoints and checks the result). Read off the tensors:
    ``in_chans`` and ``embed_dim`` (``conv_first``), the number of groups (``layers.<i>``), ``num_heads`` (last
    dimension of each group's first relative position bias table), ``window_size`` (that table has
    ``(2 * window - 1)^2`` rows), ``img_size`` (number of windows of the stored shifted-window mask, checked
    against the mask's values), ``gc`` (``adjust1``), ``mlp_ratio`` (``mlp.fc1``), ``qkv_bias``, ``patch_norm``,
    ``ape``, ``resi_connection``, ``upsampler`` and ``upscale`` (shapes of the upsampler's convolutions). See
    ``DRCT.descriptor.not_detected`` for the rest.
    """
    if 'conv_first.weight' not in state:
        raise ValueError('not a DRCT state dict: no conv_first.weight')
    embed_dim, in_chans = state['conv_first.weight'].shape[:2]
    groups = sorted({int(k.split('.')[1]) for k in state if k.startswith('layers.')})
    if not groups or groups != list(range(len(groups))):
        raise ValueError(f'not a DRCT state dict: group indices {groups}')
    table = state['layers.0.swin1.attn.relative_position_bias_table']
    window = (math.isqrt(table.shape[0]) + 1) // 2
    if (2 * window - 1) ** 2 != table.shape[0]:
        raise ValueError(f'relative position bias table of {table.shape[0]} rows is not (2 * window - 1)^2')
    num_heads = [int(state[f'layers.{i}.swin1.attn.relative_position_bias_table'].shape[1]) for i in groups]
    hidden = state['layers.0.swin1.mlp.fc1.weight'].shape[0]
    mlp_ratio = hidden / embed_dim

    # img_size: the stored mask holds (H / window) * (W / window) windows; find the layout that reproduces it.
    # Without stored masks the layers had shrunk their window to img_size (then img_size == window).
    img_size: Union[int, List[int]] = window
    mask = state.get('layers.0.swin2.attn_mask')
    if mask is not None:
        n_windows = mask.shape[0]
        candidates = [(a, n_windows // a) for a in range(1, n_windows + 1) if n_windows % a == 0]
        candidates.sort(key=lambda hw: (abs(hw[0] - hw[1]), -hw[0]))  # squarest first
        for a, b in candidates:
            size = (a * window, b * window)
            if torch.equal(shifted_window_mask(size, window, window // 2), mask.float().cpu()):
                img_size = size[0] if size[0] == size[1] else list(size)
                break
        else:
            raise ValueError(f'the stored attention mask ({tuple(mask.shape)}) matches no image size')

    convs = sorted(int(k.split('.')[1]) for k in state if k.startswith('upsample.') and k.endswith('.weight'))
    upsampler = 'pixelshuffle' if 'conv_last.weight' in state else ''
    upscale = 2 ** len(convs)  # one (4C, PixelShuffle 2) stage per factor 2 ...
    if convs:
        first = state[f'upsample.{convs[0]}.weight']
        if first.shape[0] == 9 * first.shape[1]:  # ... or a single (9C, PixelShuffle 3) stage
            upscale = 3
    return {
        'type': 'DRCT',
        'upscale': upscale,
        'in_chans': int(in_chans),
        'img_size': img_size,
        'patch_size': 1,
        'window_size': window,
        'img_range': 1.0,
        'depths': [6] * len(groups),
        'embed_dim': int(embed_dim),
        'num_heads': num_heads,
        'mlp_ratio': int(mlp_ratio) if mlp_ratio == int(mlp_ratio) else mlp_ratio,
        'qkv_bias': 'layers.0.swin1.attn.qkv.bias' in state,
        'ape': 'absolute_pos_embed' in state,
        'patch_norm': 'patch_embed.norm.weight' in state,
        'gc': int(state['layers.0.adjust1.weight'].shape[0]),
        'upsampler': upsampler,
        'resi_connection': '1conv' if 'conv_after_body.weight' in state else 'identity',
    }


def drct_multiples(options: Mapping[str, Any]) -> Tuple[int, int]:
    """(LR side multiple, the same) of a DRCT built from complete options: :meth:`DRCT.pad_multiple` (the window, or
    its least common multiple with the window the Swin layers shrink to when ``img_size`` is not larger)."""
    window = int(options['window_size'])
    img_hw, patch_hw = _pair(options['img_size']), _pair(options['patch_size'])
    resolution = min(img_hw[0] // patch_hw[0], img_hw[1] // patch_hw[1])
    effective = resolution if options['depths'] and resolution <= window else window
    m = math.lcm(window, effective)
    return m, m


@ARCH_REGISTRY.register()
@describe(
    uses_reference=False, scale='upscale', multiples=drct_multiples, min_tile_pad=16, read_options=read_drct_options,
    not_detected=(
        ('depths', 'per-group values only set stochastic-depth rates: reported as 6 per group (as every released '
                   'model)'),
        ('patch_size', 'only img_size // patch_size is stored (mask resolution): reported as patch_size 1'),
        ('img_range', 'not stored: reported as 1.0 (all released models)'),
        ('qk_scale', 'not stored: reported as None (head_dim ** -0.5, all released models)'),
        ('norm_layer', 'assumed nn.LayerNorm (weight and bias of the token dimension)'),
        ('drop_rate, attn_drop_rate, drop_path_rate', 'training only, not stored: original defaults apply'),
        ('compress_ratio, squeeze_factor, conv_scale, overlap_ratio, use_checkpoint', 'unused by the architecture'),
    ),
)
class DRCT(nn.Module):
    """DRCT (Hsu et al., 2024) with the original's constructor, defaults and state-dict layout.

    The released models (``options/test/*.yml`` of the original) use ``img_size=64, window_size=16, embed_dim=180,
    depths=[6] * 6, num_heads=[6] * 6, mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv'`` (DRCT) or
    12 groups instead of 6 (DRCT-L), ``gc=32`` (the default) and ``upscale`` 2, 3 or 4. The bare defaults
    (``window_size=7`` with ``img_size=64``, ``upsampler=''``) do not give a working network, in the original either.

    Args:
        img_size: training patch size (int or (h, w)); sets the resolution of the stored shifted-window masks.
        patch_size: divides ``img_size`` for that resolution only (features are not patched).
        in_chans: image channels (input and output).
        embed_dim: channels of the deep features.
        depths: one entry per group; only ``len(depths)`` and the stochastic-depth schedule depend on it.
        num_heads: attention heads of the first Swin layer of each group.
        window_size: attention window (the input's height and width must be multiples of it).
        compress_ratio, squeeze_factor, conv_scale, overlap_ratio: unused, as in the original.
        mlp_ratio: MLP expansion of the first three Swin layers of each group (the last two use 1).
        qkv_bias: learnable bias of the query/key/value projection.
        qk_scale: attention scale; ``None`` for ``head_dim ** -0.5``.
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout and stochastic depth (training only).
        norm_layer: normalisation of the tokens (LayerNorm).
        ape: learnable absolute position embedding (then inputs must be exactly ``img_size``).
        patch_norm: LayerNorm after the patch embedding.
        use_checkpoint: unused, as in the original.
        upscale: 2^n or 3.
        img_range: images are ``(x - mean) * img_range`` inside the network.
        upsampler: ``'pixelshuffle'`` (the only reconstruction the original implements).
        resi_connection: ``'1conv'`` (3x3 convolution after the body) or ``'identity'``.
        gc: growth channels of the dense connections.
    """

    descriptor: ClassVar[ArchDescriptor]

    def __init__(self,
                 img_size: Union[int, Sequence[int]] = 64,
                 patch_size: Union[int, Sequence[int]] = 1,
                 in_chans: int = 3,
                 embed_dim: int = 96,
                 depths: Sequence[int] = (6, 6, 6, 6),
                 num_heads: Sequence[int] = (6, 6, 6, 6),
                 window_size: int = 7,
                 compress_ratio: int = 3,
                 squeeze_factor: int = 30,
                 conv_scale: float = 0.01,
                 overlap_ratio: float = 0.5,
                 mlp_ratio: float = 4.0,
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1,
                 norm_layer: Type[nn.Module] = nn.LayerNorm,
                 ape: bool = False,
                 patch_norm: bool = True,
                 use_checkpoint: bool = False,
                 upscale: int = 2,
                 img_range: float = 1.0,
                 upsampler: str = '',
                 resi_connection: str = '1conv',
                 gc: int = 32) -> None:
        super().__init__()
        if upsampler != 'pixelshuffle':
            raise ValueError(f"upsampler {upsampler!r} is not supported: the original only implements 'pixelshuffle' "
                             '(with any other value its forward returns the input unchanged)')
        if resi_connection not in ('1conv', 'identity'):
            raise ValueError(f"resi_connection must be '1conv' or 'identity', got {resi_connection!r}")
        if len(num_heads) < len(depths):
            raise ValueError(f'num_heads needs one entry per group: {len(depths)} groups, {len(num_heads)} entries')
        if any(d < 1 for d in depths):
            raise ValueError(f'every entry of depths must be >= 1 (the original indexes its drop-path slice), '
                             f'got {list(depths)}')
        img_hw, patch_hw = _pair(img_size), _pair(patch_size)
        resolution = (img_hw[0] // patch_hw[0], img_hw[1] // patch_hw[1])
        if min(resolution) > window_size and (resolution[0] % window_size or resolution[1] % window_size):
            raise ValueError(f'img_size {img_size} (patch_size {patch_size}) must be a multiple of window_size '
                             f'{window_size}; the original fails on this configuration too')

        self.window_size = window_size
        self.shift_size = window_size // 2
        self.overlap_ratio = overlap_ratio
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.num_layers = len(depths)
        self.ape = ape
        self.patch_norm = patch_norm
        self.mlp_ratio = mlp_ratio
        self.patches_resolution = list(resolution)
        mean = torch.tensor(_RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer('mean', mean, persistent=False)  # a plain attribute in the original: not in the state dict

        # shallow feature extraction: one 3x3 convolution
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)

        # deep feature extraction: RDGs on tokens, LayerNorm, convolution, long skip
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, resolution[0] * resolution[1], embed_dim))
            _trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(RDG(embed_dim, resolution, num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale,
                                   drop_rate, attn_drop_rate, rates[sum(depths[:i])], norm_layer, gc))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1) if resi_connection == '1conv' else nn.Identity()

        # reconstruction: convolution + LeakyReLU, sub-pixel upsampling, convolution to the image
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, _UPSAMPLE_FEATS, 3, 1, 1),
                                                  nn.LeakyReLU(inplace=True))
        self.upsample = Upsample(upscale, _UPSAMPLE_FEATS)
        self.conv_last = nn.Conv2d(_UPSAMPLE_FEATS, in_chans, 3, 1, 1)

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            _trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'absolute_pos_embed'}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        return {'relative_position_bias_table'}

    # ------------------------------------------------------------------ sizes of this network (the class': descriptor)
    def scale_of(self) -> int:
        return self.upscale

    def size_multiples(self) -> Tuple[int, int]:
        """(LR side multiple, -): the inference engine pads the input to it (the window)."""
        return self.pad_multiple(), self.pad_multiple()

    def pad_multiple(self) -> int:
        """The input's height and width must be multiples of this (the window size, as the original test pads to).

        When ``img_size`` is not larger than the window the Swin layers shrink their window to ``img_size``; the
        multiple is then the least common multiple of both.
        """
        effective = self.layers[0].swin1.window if len(self.layers) else self.window_size
        return math.lcm(self.window_size, effective)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, size)
        return _image(self.norm(x), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) in [0, 1], H and W multiples of :meth:`pad_multiple`; returns the x``upscale`` image.

        The output is not clamped (as in the original).
        """
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + mean

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for any input size, as the original's test code does it: reflect-pad the bottom and right
        to a multiple of :meth:`pad_multiple`, run, and crop the output back to ``upscale`` times the input size."""
        h, w = x.shape[-2:]
        m = self.pad_multiple()
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode='reflect')
        return self(x)[..., :h * self.upscale, :w * self.upscale]
