"""C2-Matching's contrastive and distillation losses (extracter/losses/contrastive_loss.py): against a direct
loop-by-loop evaluation of the equations on a small case, against the original code's values (fixture), and the
training pairs of ContrastiveWarpDataset (the warp map points where each pixel went)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from extracter.losses.contrastive_loss import ContrastiveCorrespondenceLoss, warp_correspondences

FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'c2m_contrastive_loss' / 'values.json'

# fixed projective maps (pixel (x, y, 1) of image 1 -> image 2), one per sample of the fixture batch
HOMOGRAPHIES = (
    ((1.02, 0.03, 2.5), (-0.01, 0.98, -1.5), (1e-4, -5e-5, 1.0)),
    ((0.97, -0.02, -3.0), (0.02, 1.01, 2.0), (-8e-5, 6e-5, 1.0)),
    ((1.0, 0.0, 4.2), (0.0, 1.0, -3.7), (0.0, 0.0, 1.0)),
)


def fixture_inputs():
    """The fixture's batch: features [3, 16, 24, 24] (student, teacher) and the maps of HOMOGRAPHIES [3, 96, 96, 2].
    tests/fixtures/c2m_contrastive_loss/README.md says how the original's values were computed from it."""
    g = torch.Generator().manual_seed(20211011)
    shape = (len(HOMOGRAPHIES), 16, 24, 24)
    student = {'dense_features1': torch.randn(shape, generator=g), 'dense_features2': torch.randn(shape, generator=g)}
    teacher = {'dense_features1': torch.randn(shape, generator=g), 'dense_features2': torch.randn(shape, generator=g)}
    gx, gy = np.meshgrid(np.arange(96), np.arange(96))
    points = np.stack([gx, gy, np.ones_like(gx)]).reshape(3, -1).astype(np.float64)
    maps = []
    for h in HOMOGRAPHIES:
        moved = np.array(h) @ points
        maps.append((moved[:2] / moved[2]).T.reshape(96, 96, 2))
    return student, teacher, torch.from_numpy(np.stack(maps)).float()


def test_values_equal_the_original_code():
    expected = json.loads(FIXTURE.read_text())
    student, teacher, coords = fixture_inputs()
    stage1 = ContrastiveCorrespondenceLoss()(student, coords)
    stage2 = ContrastiveCorrespondenceLoss(distill_weight=15.0, temperature=0.15)(student, coords, teacher)
    for key in ('l_total', 'pos_dist', 'neg_dist'):
        assert float(stage1[key]) == pytest.approx(expected['teacher'][key], rel=1e-5, abs=1e-6), key
    for key in ('l_total', 'pos_dist', 'neg_dist', 'l_kd'):
        assert float(stage2[key]) == pytest.approx(expected['student'][key], rel=1e-5, abs=1e-6), key


def _loop_losses(f1, f2, t1, t2, shift, margin, radius, temperature):
    """The module docstring's equations, one cell at a time (one sample; cells with a match at (r + dr, c + dc))."""
    c, h, w = f1.shape
    dr, dc = shift

    def unit(v):
        return v / v.norm()

    pairs = [((r, col), (r + dr, col + dc)) for r in range(h) for col in range(w)
             if 0 <= r + dr < h and 0 <= col + dc < w]
    hinge, kl = [], []
    for p, q in pairs:
        d1, d2 = unit(f1[:, p[0], p[1]]), unit(f2[:, q[0], q[1]])
        pos = 2 - 2 * float(d1 @ d2)
        neg2 = min(2 - 2 * float(d1 @ unit(f2[:, q2[0], q2[1]])) for _, q2 in pairs
                   if max(abs(q2[0] - q[0]), abs(q2[1] - q[1])) > radius)
        neg1 = min(2 - 2 * float(d2 @ unit(f1[:, r, col])) for r in range(h) for col in range(w)
                   if max(abs(r - p[0]), abs(col - p[1])) > radius)
        hinge.append(max(0.0, margin + pos - min(neg1, neg2)))
        s = [float(unit(f1[:, p[0], p[1]]) @ unit(f2[:, q2[0], q2[1]])) / temperature for _, q2 in pairs]
        t = [float(unit(t1[:, p[0], p[1]]) @ unit(t2[:, q2[0], q2[1]])) / temperature for _, q2 in pairs]
        log_s = [v - math.log(sum(math.exp(x) for x in s)) for v in s]
        log_t = [v - math.log(sum(math.exp(x) for x in t)) for v in t]
        kl.append(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_t, log_s)))
    return sum(hinge) / len(hinge), sum(kl) / len(kl), len(pairs)


def test_equations_cell_by_cell():
    """A 6x6 grid, image 2 = image 1 shifted by one cell down-left: every term against the loop evaluation."""
    g = torch.Generator().manual_seed(1)
    f1, f2, t1, t2 = (torch.randn(1, 5, 6, 6, generator=g) for _ in range(4))
    # pixel (x, y) of image 1 lies at (x - 3.5, y + 4.5) in image 2: cell (r, c) -> (r + 1, c - 1), inside for c >= 1
    # and r <= 4 (border 0: strictly inside)
    gx, gy = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing='xy')
    coords = torch.stack([gx - 3.5, gy + 4.5], dim=-1)[None]
    loss = ContrastiveCorrespondenceLoss(margin=1.0, safe_radius=1, distill_weight=2.0, temperature=0.5, border=0,
                                         min_correspondences=1)
    out = loss({'dense_features1': f1, 'dense_features2': f2}, coords,
               {'dense_features1': t1, 'dense_features2': t2})
    hinge, kl, n = _loop_losses(f1[0], f2[0], t1[0], t2[0], (1, -1), 1.0, 1, 0.5)
    corr = warp_correspondences(coords[0], (6, 6), (6, 6), border=0)
    assert corr.ids.numel() == n == 25
    assert float(out['l_con']) == pytest.approx(hinge, rel=1e-5)
    assert float(out['l_kd']) == pytest.approx(kl, rel=1e-5)
    assert float(out['l_total']) == pytest.approx(hinge + 2.0 * kl, rel=1e-5)


def test_gradients_reach_both_branches_and_not_the_teacher():
    student, teacher, coords = fixture_inputs()
    student = {k: v.clone().requires_grad_(True) for k, v in student.items()}
    out = ContrastiveCorrespondenceLoss(distill_weight=15.0)(student, coords, teacher)
    out['l_total'].backward()
    for v in student.values():
        assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(v.grad is None for v in teacher.values())


def test_bad_batches_and_settings_are_named():
    student, teacher, coords = fixture_inputs()
    with pytest.raises(ValueError, match='no sample of the batch has 100000 correspondences'):
        ContrastiveCorrespondenceLoss(min_correspondences=100000)(student, coords)
    with pytest.raises(ValueError, match='needs the teacher features'):
        ContrastiveCorrespondenceLoss(distill_weight=1.0)(student, coords)
    with pytest.raises(ValueError, match='does not fit a 24x24 feature grid'):
        ContrastiveCorrespondenceLoss()(student, coords[:, :64])
    with pytest.raises(ValueError, match='temperature must be > 0'):
        ContrastiveCorrespondenceLoss(temperature=0)


def test_warp_pairs_map_each_pixel_to_where_it_went(shared_data):
    """Sampling the warped image at ``warp_coords`` gives the image back (inside), unlike the identity map."""
    from extracter.data.contrastive_dataset import ContrastiveWarpDataset

    ds = ContrastiveWarpDataset(dataroot_gt=str(shared_data / 'train' / 'bsd200'), gt_size=160, fit='random_crop',
                                max_shift=10, warp_window=160)
    for index in range(3):
        sample = ds[index]
        gt, ref, coords = sample['gt'], sample['ref'], sample['warp_coords']
        assert gt.shape == ref.shape == sample['lq_up'].shape == (3, 160, 160)
        assert sample['lq'].shape == (3, 40, 40) and coords.shape == (160, 160, 2)
        grid = coords / 159 * 2 - 1  # align_corners=True: pixel centres at -1 .. 1
        inside = ((coords > 12) & (coords < 147)).all(dim=-1)
        back = F.grid_sample(ref[None], grid[None], mode='bilinear', align_corners=True)[0]
        identity = ref
        err = (back - gt).abs().mean(0)[inside].mean()
        err_identity = (identity - gt).abs().mean(0)[inside].mean()
        assert inside.float().mean() > 0.5
        assert err < 0.03 and err < 0.5 * err_identity, (float(err), float(err_identity))


def test_validation_warps_are_fixed_per_image(shared_data):
    from extracter.data.contrastive_dataset import ContrastiveWarpDataset

    opts = dict(dataroot_gt=str(shared_data / 'sisr' / 'Set5'), gt_size=64, fit='random_crop', warp_window=64,
                fixed_warps=True)
    a, b = ContrastiveWarpDataset(**opts), ContrastiveWarpDataset(**opts)
    assert torch.equal(a[1]['warp_coords'], b[1]['warp_coords']) and torch.equal(a[1]['ref'], b[1]['ref'])
    assert not torch.equal(a[0]['warp_coords'], a[1]['warp_coords'])
    with pytest.raises(ValueError, match="no image matches filename_filter '\\*_0'"):
        ContrastiveWarpDataset(dataroot_gt=str(shared_data / 'sisr' / 'Set5'), filename_filter='*_0')
