"""C2-Matching's losses for its contrastive correspondence network (Jiang et al., ICCV 2021, Sec. 3.1; the original's
``mmsr/models/teacher_contras_model.py`` and ``student_contras_distillation_model.py``, ``loss_function``).

Training pairs are an image and a copy warped by a known homography; ``coords[y, x] = (x', y')`` is where pixel
(x, y) of the first image lies in the second (:class:`~extracter.data.contrastive_dataset.ContrastiveWarpDataset`).
The descriptors are the two branches' conv3_1 maps (1/4 of the image size, ``scaling_steps = 2``), L2-normalised
along the channels; ``d(a, b) = 2 - 2 <a, b>`` is their squared distance.

Per sample, with the correspondences (p_i, q_i) of the feature grid whose warped positions lie inside the second image
(more than ``border`` pixels from its sides; samples with fewer than ``min_correspondences`` are left out, as in the
original):
    pos_i  = d(f1(p_i), f2(q_i))
    neg2_i = min_j d(f1(p_i), f2(q_j)) over q_j farther than ``safe_radius`` (Chebyshev, feature cells) from q_i
    neg1_i = min_k d(f2(q_i), f1(k)) over every cell k of image 1 farther than ``safe_radius`` from p_i
    L_con  = mean_i relu(margin + pos_i - min(neg1_i, neg2_i))                        (paper Eq. 1, the triplet form)
Stage 2 distils the teacher's correspondence into the student (paper Eq. 2), with the student seeing the LR upsampled:
    S = softmax_j(<s1(p_i), s2(q_j)> / T),  P = softmax_j(<t1(p_i), t2(q_j)> / T)
    L_kd  = KL(P || S) summed over j, averaged over i (torch's ``kl_div(..., 'batchmean')``)
The loss of a batch is the mean over its valid samples of ``L_con + distill_weight * L_kd``.
"""

from typing import Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from extracter.registry import LOSS_REGISTRY

EXCLUDED = 10.0  # the original's penalty on negatives inside the safe radius (distances lie in [0, 4])


class Correspondences(NamedTuple):
    """The ground-truth matches of one sample: ``ids`` [N] flat cells of image 1's feature grid, ``pos1`` [2, N]
    their (row, column), ``pos2`` [2, N] the matching cells of image 2 (rounded)."""

    ids: torch.Tensor
    pos1: torch.Tensor
    pos2: torch.Tensor


def grid_positions(h: int, w: int, device: torch.device) -> torch.Tensor:
    """[2, h * w] (row, column) of every cell of an h x w grid, row-major, as floats."""
    rows = torch.arange(h, device=device, dtype=torch.float32).view(-1, 1).expand(h, w)
    cols = torch.arange(w, device=device, dtype=torch.float32).view(1, -1).expand(h, w)
    return torch.stack([rows.reshape(-1), cols.reshape(-1)])


def warp_correspondences(coords: torch.Tensor, size1: torch.Size, size2: torch.Size, scaling_steps: int = 2,
                         border: float = 10.0) -> Correspondences:
    """The matches of feature grids ``size1`` (h1, w1) -> ``size2`` (h2, w2) from the pixel map ``coords`` [H, W, 2+]
    (x, y in image 2 of each pixel of image 1; H = h1 * 2**scaling_steps): the pixel of cell (r, c) is
    (r * step, c * step); it is kept when its warped position lies more than ``border`` pixels inside image 2."""
    step = 2 ** scaling_steps
    h1, w1 = size1
    h2, w2 = size2
    sampled = coords[::step, ::step, :2]
    if sampled.shape[:2] != (h1, w1):
        raise ValueError(f'coordinate map of {tuple(coords.shape[:2])} pixels does not fit a {h1}x{w1} feature grid '
                         f'at scale 1/{step}')
    xy = sampled.reshape(-1, 2).t().to(torch.float32)  # [2, h1 * w1]: x, y in image 2's pixels
    valid = (xy[0] > border) & (xy[0] < step * w2 - border) & (xy[1] > border) & (xy[1] < step * h2 - border)
    ids = torch.nonzero(valid, as_tuple=False).squeeze(1)
    pos1 = grid_positions(h1, w1, coords.device)[:, ids]
    pos2 = torch.round(xy[[1, 0]][:, ids] / step).long()  # (row, column) cells of image 2
    return Correspondences(ids, pos1, pos2)


def _outside_radius(a: torch.Tensor, b: torch.Tensor, radius: float) -> torch.Tensor:
    """[Na, Nb] whether cells a_i and b_j are farther apart than ``radius`` (Chebyshev distance)."""
    return (a.float().unsqueeze(2) - b.float().unsqueeze(1)).abs().amax(dim=0) > radius


def contrastive_terms(features1: torch.Tensor, features2: torch.Tensor, corr: Correspondences, margin: float,
                      safe_radius: float):
    """L_con, mean positive and mean hardest-negative distance of one sample (module docstring); features [C, h, w]."""
    c = features1.shape[0]
    all_d1 = F.normalize(features1.reshape(c, -1), dim=0)
    d1 = all_d1[:, corr.ids]
    d2 = F.normalize(features2[:, corr.pos2[0], corr.pos2[1]], dim=0)
    positive = 2 - 2 * (d1 * d2).sum(dim=0)
    penalty2 = (~_outside_radius(corr.pos2, corr.pos2, safe_radius)).float() * EXCLUDED
    negative2 = (2 - 2 * d1.t() @ d2 + penalty2).amin(dim=1)
    all_pos1 = grid_positions(*features1.shape[1:], features1.device)
    penalty1 = (~_outside_radius(corr.pos1, all_pos1, safe_radius)).float() * EXCLUDED
    negative1 = (2 - 2 * d2.t() @ all_d1 + penalty1).amin(dim=1)
    negative = torch.minimum(negative1, negative2)
    return F.relu(margin + positive - negative).mean(), positive.mean(), negative.mean()


def distillation_kl(student1: torch.Tensor, student2: torch.Tensor, teacher1: torch.Tensor, teacher2: torch.Tensor,
                    corr: Correspondences, temperature: float) -> torch.Tensor:
    """L_kd of one sample (module docstring): the teacher's matching distribution over the correspondences' cells of
    image 2 against the student's; features [C, h, w]."""

    def logits(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        d1 = F.normalize(f1.reshape(f1.shape[0], -1), dim=0)[:, corr.ids]
        d2 = F.normalize(f2[:, corr.pos2[0], corr.pos2[1]], dim=0)
        return d1.t() @ d2 / temperature

    student = F.log_softmax(logits(student1, student2), dim=1)
    teacher = F.softmax(logits(teacher1, teacher2), dim=1)
    return F.kl_div(student, teacher, reduction='batchmean')


@LOSS_REGISTRY.register()
class ContrastiveCorrespondenceLoss(nn.Module):
    """C2-Matching's stage-1 loss (``distill_weight: 0``) and stage-2 loss (teacher features given, ``distill_weight``
    > 0): see the module docstring. The original's values: margin 1, safe_radius 4, scaling_steps 2, and for stage 2
    distill_weight 15, temperature 0.15; border 10 and min_correspondences 128 are its constants."""

    def __init__(self, margin: float = 1.0, safe_radius: int = 4, scaling_steps: int = 2, distill_weight: float = 0.0,
                 temperature: float = 0.15, border: float = 10.0, min_correspondences: int = 128) -> None:
        super().__init__()
        if margin < 0 or safe_radius < 0 or scaling_steps < 0 or distill_weight < 0 or border < 0:
            raise ValueError('margin, safe_radius, scaling_steps, distill_weight and border must be >= 0, got '
                             f'{margin}, {safe_radius}, {scaling_steps}, {distill_weight}, {border}')
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        if min_correspondences < 1:
            raise ValueError(f'min_correspondences must be >= 1, got {min_correspondences}')
        self.margin, self.safe_radius, self.scaling_steps = float(margin), float(safe_radius), int(scaling_steps)
        self.distill_weight, self.temperature = float(distill_weight), float(temperature)
        self.border, self.min_correspondences = float(border), int(min_correspondences)

    def forward(self, features: Dict[str, torch.Tensor], coords: torch.Tensor,
                teacher: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """``features``/``teacher``: the network's ``{'dense_features1', 'dense_features2'}`` [B, C, h, w];
        ``coords`` [B, H, W, 2+]. Returns ``l_con``, ``l_kd`` (stage 2, unweighted), ``l_total`` (with gradients)
        and the mean ``pos_dist``/``neg_dist``, each averaged over the valid samples."""
        if self.distill_weight > 0 and teacher is None:
            raise ValueError('distill_weight > 0 needs the teacher features')
        f1, f2 = features['dense_features1'], features['dense_features2']
        sums: Dict[str, list] = {'l_con': [], 'pos_dist': [], 'neg_dist': [], 'l_kd': []}
        for b in range(f1.shape[0]):
            corr = warp_correspondences(coords[b], f1.shape[2:], f2.shape[2:], self.scaling_steps, self.border)
            if corr.ids.numel() < self.min_correspondences:
                continue
            l_con, pos, neg = contrastive_terms(f1[b], f2[b], corr, self.margin, self.safe_radius)
            sums['l_con'].append(l_con)
            sums['pos_dist'].append(pos)
            sums['neg_dist'].append(neg)
            if self.distill_weight > 0:
                sums['l_kd'].append(distillation_kl(f1[b], f2[b], teacher['dense_features1'][b],
                                                    teacher['dense_features2'][b], corr, self.temperature))
        if not sums['l_con']:
            raise ValueError(f'no sample of the batch has {self.min_correspondences} correspondences inside the warped '
                             f'image (border {self.border:g} px): the crops are too small for the warps (raise '
                             'gt_size) or the warps too strong')
        out = {k: torch.stack(v).mean() for k, v in sums.items() if v}
        out['l_total'] = out['l_con'] + self.distill_weight * out['l_kd'] if 'l_kd' in out else out['l_con']
        return out
