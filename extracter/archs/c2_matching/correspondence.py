"""C2-Matching's correspondence generation (paper Sec. 3.1-3.2; the original's ``feature_match_index`` and
``CorrespondenceGenerationArch``): the contrastive features of the upsampled LR and of the reference are matched
3x3 patch against 3x3 patch (top-1), and the match becomes a flow that pre-offsets the deformable convolutions.

The arithmetic is the original's, so that the same argmax comes out: each feature pixel L2-normalised over its
channels, reference patches divided by (their norm + 1e-5), the correlation as a convolution, row-major argmax (the
first maximum), the best score divided by (the LR patch's norm + 1e-5). The patch grid has no padding: an h x w map
has (h-2) x (w-2) patches, indexed by their top-left pixel.

Here the result is stated on the whole h x w grid of LR feature pixels (the engine's tiles take windows of it):
``index[y, x]`` is the reference feature pixel ``ry * W + rx`` of the matched patch's top-left corner, and at the
two bottom rows and right columns, which have no patch, the pixel itself (a zero flow: the original pads the flow
with zeros there); their score is 0.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

PATCH = 3  # the matched patches: 3x3 feature pixels
NORM_EPS = 1e-5  # the original's (norm + 1e-5)
SHIFTS = tuple((i, j) for i in range(PATCH) for j in range(PATCH))  # the 9 kernel positions, row-major
LEVEL_FACTORS = {'relu3_1': 1, 'relu2_1': 2, 'relu1_1': 4}


def _patch_block(feat: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The 3x3 patches ``start .. stop - 1`` of ``feat`` [C, H, W] (row-major over its (H-2) x (W-2) grid) as conv
    weights [P, C, 3, 3], copying only the rows they lie in (not all patches, 9x the map, at once)."""
    c, _, width = feat.shape
    gw = width - PATCH + 1
    y0, y1 = start // gw, -(-stop // gw)
    rows = feat[:, y0:y1 + PATCH - 1].unfold(1, PATCH, 1).unfold(2, PATCH, 1)  # [C, y1 - y0, gw, 3, 3]
    rows = rows.reshape(c, -1, PATCH, PATCH).permute(1, 0, 2, 3)
    return rows[start - y0 * gw:stop - y0 * gw]


def match_one(feat_in: torch.Tensor, feat_ref: torch.Tensor, block: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-1 match of one LR feature map [C, h, w] against one reference map [C, H, W] (both unnormalised):
    (index [(h-2), (w-2)] of the reference patch, row-major over its (H-2) x (W-2) grid; its score). ``block``:
    reference patches per correlation (memory: block x h x w floats and the block's patches; the result does not
    depend on it; the original uses 512 Mi / (h w))."""
    c, h, w = feat_in.shape
    feat_in = F.normalize(feat_in.reshape(c, -1), dim=0).view(c, h, w)
    feat_ref = F.normalize(feat_ref.reshape(c, -1), dim=0).view_as(feat_ref)
    n_keys = (feat_ref.size(1) - PATCH + 1) * (feat_ref.size(2) - PATCH + 1)
    best_val = best_idx = None
    for start in range(0, n_keys, block):
        k = _patch_block(feat_ref, start, min(n_keys, start + block))
        k = k / (k.flatten(1).norm(p=2, dim=1).view(-1, 1, 1, 1) + NORM_EPS)
        val, idx = F.conv2d(feat_in.unsqueeze(0), k).squeeze(0).max(dim=0)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + start, best_idx)
    # each LR patch's norm: the 3x3 window sums of the per-pixel squared norms (not the patches themselves)
    squares = feat_in.pow(2).sum(0).view(1, 1, h, w)
    query_norm = F.conv2d(squares, squares.new_ones(1, 1, PATCH, PATCH)).view(h - PATCH + 1, w - PATCH + 1)
    return best_idx, best_val / (query_norm.sqrt() + NORM_EPS)


def correspondence(feat_in: torch.Tensor, feat_ref: torch.Tensor, block: int = 8192
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The batch's matches on the whole LR feature grid: (scores, index) [N, 1, h*w], ``index`` over the reference's
    feature pixels (``ry * W + rx``; see the module docstring); ``block``: see :func:`match_one`."""
    n, _, h, w = feat_in.shape
    ref_w = feat_ref.size(-1)
    if h < PATCH or w < PATCH or feat_ref.size(-2) < PATCH or ref_w < PATCH:
        raise ValueError(f'C2-Matching matches 3x3 feature patches: the LR must be at least {PATCH}x{PATCH} '
                         f'pixels, got {h}x{w}')
    scores = feat_in.new_zeros(n, h, w)
    gy, gx = torch.meshgrid(torch.arange(h, device=feat_in.device), torch.arange(w, device=feat_in.device),
                            indexing='ij')
    index = (gy * ref_w + gx).expand(n, h, w).clone()  # no patch: the pixel itself (zero flow)
    for b in range(n):
        idx, val = match_one(feat_in[b], feat_ref[b], block)
        gw_ref = ref_w - PATCH + 1
        index[b, :h - PATCH + 1, :w - PATCH + 1] = idx // gw_ref * ref_w + idx % gw_ref
        scores[b, :h - PATCH + 1, :w - PATCH + 1] = val
    return scores.view(n, 1, -1), index.view(n, 1, -1)


def index_to_flow(index: torch.Tensor, grid_hw: Tuple[int, int], ref_w: int,
                  origin: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The flow [N, h, w, 2] (x, y) from each LR feature pixel to its match (``index`` [N, 1, h*w] as made by
    :func:`correspondence`; ``origin``: where this grid starts in the whole LR's, for a tile)."""
    n = index.size(0)
    h, w = grid_hw
    idx = index.view(n, h, w)
    gy, gx = torch.meshgrid(torch.arange(h, device=idx.device) + origin[0],
                            torch.arange(w, device=idx.device) + origin[1], indexing='ij')
    return torch.stack((idx % ref_w - gx, idx // ref_w - gy), dim=-1).float()


def _shift(flow: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The original's ``tensor_shift``: ``out[:, y, x] = flow[:, y - dy, x - dx]``, zero where that is outside."""
    out = torch.zeros_like(flow)
    h, w = flow.shape[1:3]
    out[:, dy:, dx:] = flow[:, :h - dy, :w - dx]
    return out


def pre_offsets(flow: torch.Tensor) -> dict:
    """The DCN pre-offsets [N, 9, h*f, w*f, 2] (x, y) at relu3_1, relu2_1 and relu1_1 (f = 1, 2, 4): the flow
    repeated f times along each side and multiplied by f, shifted by f * (i, j) for kernel position (i, j)."""
    out = {}
    for name, f in LEVEL_FACTORS.items():
        up = flow if f == 1 else flow.repeat_interleave(f, 1).repeat_interleave(f, 2) * f
        out[name] = torch.stack([_shift(up, i * f, j * f) for i, j in SHIFTS], dim=1)
    return out
