"""RefSRTrainDataset and CUFED5Dataset on CUFED-layout folders cut from real photographs."""

import random

import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from PIL import Image
from torch.utils.data import DataLoader

from extracter.data import degradations as deg
from extracter.data.cufed5_dataset import CUFED5Dataset
from extracter.data.image_io import read_image
from extracter.data.refsr_train_dataset import RefSRTrainDataset
from tests.data_helpers import CUFED5_HR_SIZES, CUFED5_REF_SIZES, TRAIN_REF_SIZES

KEYS = ('gt', 'lq', 'lq_up', 'ref', 'ref_downup')


def _u8(t: torch.Tensor) -> np.ndarray:
    return np.round(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


def _pil(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def _train(cufed_root, **kw):
    opts = dict(dataroot_gt=str(cufed_root / 'train' / 'input'), dataroot_ref=str(cufed_root / 'train' / 'ref'))
    opts.update(kw)
    return RefSRTrainDataset(**opts)


def test_degradations_are_pil_bicubic_in_the_original_order(cufed_root):
    """Every image of a plain sample equals the original code's PIL calls on the files."""
    ds = _train(cufed_root, use_hflip=False, use_vflip=False, use_rot=False, ref_size_mode='none')
    s = ds[1]
    hr = read_image(cufed_root / 'train' / 'input' / '000001.png')
    ref = read_image(cufed_root / 'train' / 'ref' / '000001.png')
    lr = _pil(hr, 40, 40)
    np.testing.assert_array_equal(_u8(s['gt']), hr)
    np.testing.assert_array_equal(_u8(s['lq']), lr)
    np.testing.assert_array_equal(_u8(s['lq_up']), _pil(lr, 160, 160))
    np.testing.assert_array_equal(_u8(s['ref']), ref)  # 160x120 is already a multiple of 4
    np.testing.assert_array_equal(_u8(s['ref_downup']), _pil(_pil(ref, 30, 40), 120, 160))
    for k in KEYS:
        assert s[k].dtype == torch.float32 and s[k].dim() == 3 and s[k].shape[0] == 3
        assert 0.0 <= s[k].min() and s[k].max() <= 1.0
    assert s['gt_path'].endswith('train/input/000001.png') and s['lq_path'] == s['gt_path']
    assert s['ref_path'].endswith('train/ref/000001.png')


def test_ttsr_zero_pad_reference_and_collate_batch(cufed_root):
    """TTSR pads Ref and its down-up version with zeros to 160x160 after degrading: mixed sizes collate."""
    ds = _train(cufed_root, use_hflip=False, use_vflip=False, use_rot=False)  # default ref_size_mode zero_pad
    s = ds[4]  # reference 100x112
    ref = read_image(cufed_root / 'train' / 'ref' / '000004.png')
    got = _u8(s['ref'])
    assert got.shape == (160, 160, 3)
    np.testing.assert_array_equal(got[:100, :112], ref)
    assert got[100:].max() == 0 and got[:, 112:].max() == 0
    np.testing.assert_array_equal(_u8(s['ref_downup'])[:100, :112], _pil(_pil(ref, 28, 25), 112, 100))
    batch = next(iter(DataLoader(_train(cufed_root), batch_size=len(TRAIN_REF_SIZES), shuffle=False)))
    assert batch['ref'].shape == (6, 3, 160, 160) and batch['lq'].shape == (6, 3, 40, 40)
    assert len(batch['ref_path']) == 6


@pytest.mark.parametrize('mode', ['replicate_pad', 'random_crop'])
def test_replicate_ref_modes_collate(cufed_root, mode):
    ds = _train(cufed_root, ref_size_mode=mode, ref_size=128)
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert batch['ref'].shape == (6, 3, 128, 128) and batch['ref_downup'].shape == (6, 3, 128, 128)


def test_mixed_reference_sizes_do_not_collate_without_the_option(cufed_root):
    ds = _train(cufed_root, ref_size_mode='none', use_rot=False)
    with pytest.raises(RuntimeError, match='stack expects each tensor to be equal size'):
        next(iter(DataLoader(ds, batch_size=6)))


def test_augmentations_keep_lr_group_and_ref_group_aligned(cufed_root):
    """Flips/rotations move gt, lq and lq_up by one and the same transform, and ref and ref_downup by another one,
    drawn independently; the augmented images are exactly transformed copies of the unaugmented sample."""
    ds = _train(cufed_root, ref_size_mode='none', pad_multiple=16)
    plain = _train(cufed_root, ref_size_mode='none', pad_multiple=16, use_hflip=False, use_vflip=False,
                   use_rot=False)[0]
    plain = {k: _u8(plain[k]) for k in KEYS}
    random.seed(0)
    seen_lr, seen_ref, independent = set(), set(), False
    for _ in range(12):
        s = ds[0]
        lr_t = _which_transform(plain['gt'], _u8(s['gt']))
        ref_t = _which_transform(plain['ref'], _u8(s['ref']))
        assert lr_t is not None and ref_t is not None
        for key, t in (('lq', lr_t), ('lq_up', lr_t), ('ref_downup', ref_t)):
            np.testing.assert_array_equal(_u8(s[key]), deg.apply_augment(plain[key], t[0], False, t[1]))
        seen_lr.add(lr_t)
        seen_ref.add(ref_t)
        independent |= lr_t != ref_t
    assert len(seen_lr) > 3 and len(seen_ref) > 3 and independent


def test_joint_augment_mode_moves_reference_with_target(cufed_root):
    """augment_mode='joint': the Ref group takes the LR group's transform, and the random stream is the original's
    (same LR-group transforms as 'independent' for the same seed)."""
    kw = dict(ref_size_mode='none', pad_multiple=16)
    plain = _train(cufed_root, use_hflip=False, use_vflip=False, use_rot=False, **kw)[0]
    plain = {k: _u8(plain[k]) for k in KEYS}
    joint, independent = _train(cufed_root, augment_mode='joint', **kw), _train(cufed_root, **kw)
    seen = set()
    for seed in range(10):
        random.seed(seed)
        s = joint[0]
        random.seed(seed)
        t = independent[0]
        lr_t = _which_transform(plain['gt'], _u8(s['gt']))
        assert lr_t is not None and lr_t == _which_transform(plain['ref'], _u8(s['ref']))
        assert lr_t == _which_transform(plain['gt'], _u8(t['gt']))
        np.testing.assert_array_equal(_u8(s['ref_downup']), deg.apply_augment(plain['ref_downup'], lr_t[0], False,
                                                                               lr_t[1]))
        seen.add(lr_t)
    assert len(seen) > 3
    with pytest.raises(ValueError, match='augment_mode'):
        _train(cufed_root, augment_mode='same')


def _which_transform(orig: np.ndarray, got: np.ndarray):
    """The (hflip, vflip, k) image of ``orig`` that ``got`` equals, canonically (the 8 dihedral elements)."""
    for hf in (False, True):
        for k in range(4):
            cand = deg.apply_augment(orig, hf, False, k)
            if cand.shape == got.shape and np.array_equal(cand, got):
                return hf, k
    return None


def test_gt_size_random_crop_and_pad_multiple(cufed_root):
    ds = _train(cufed_root, gt_size=96, use_hflip=False, use_vflip=False, use_rot=False, ref_size_mode='none',
                pad_multiple=16)
    hr = read_image(cufed_root / 'train' / 'input' / '000003.png')
    random.seed(1)
    crops = set()
    for _ in range(5):
        s = ds[3]
        gt = _u8(s['gt'])
        assert gt.shape == (96, 96, 3) and s['lq'].shape == (3, 24, 24)
        starts = zip(*np.nonzero((hr[:65, :65] == gt[0, 0]).all(axis=2)))
        found = [(t, left) for t, left in starts if np.array_equal(hr[t:t + 96, left:left + 96], gt)]
        assert found, 'the crop must be a window of the HR image'
        crops.add(found[0])
        ref = _u8(s['ref'])  # 150x144 replicate-padded to 160x144
        assert ref.shape == (160, 144, 3)
        np.testing.assert_array_equal(ref[150:], np.repeat(ref[149:150], 10, axis=0))
    assert len(crops) > 1


def test_swap_prob_exchanges_hr_and_ref(cufed_root):
    ds = _train(cufed_root, swap_prob=1.0, gt_size=160, use_hflip=False, use_vflip=False, use_rot=False)
    s = ds[1]
    assert s['gt_path'].endswith('train/ref/000001.png') and s['ref_path'].endswith('train/input/000001.png')
    ref_img = read_image(cufed_root / 'train' / 'ref' / '000001.png')  # 160x120 -> gt padded to 160x160
    np.testing.assert_array_equal(_u8(s['gt'])[:, :120], ref_img)
    np.testing.assert_array_equal(_u8(s['ref']), read_image(cufed_root / 'train' / 'input' / '000001.png'))


def test_train_dataset_from_basicsr_options(cufed_root):
    opt = {'name': 'CUFED', 'type': 'RefSRTrainDataset', 'phase': 'train', 'scale': 4,
           'dataroot_gt': str(cufed_root / 'train' / 'input'), 'dataroot_ref': str(cufed_root / 'train' / 'ref'),
           'io_backend': {'type': 'disk'}, 'gt_size': 160, 'use_hflip': True, 'use_rot': True, 'swap_prob': 0.5,
           'ref_size_mode': 'zero_pad', 'ref_size': 160, 'batch_size_per_gpu': 9, 'num_worker_per_gpu': 0}
    ds = build_dataset(opt)
    assert isinstance(ds, RefSRTrainDataset) and len(ds) == 6


def test_train_option_errors(cufed_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['use_flip'\]"):
        _train(cufed_root, use_flip=True)
    with pytest.raises(ValueError, match='only scale 4'):
        _train(cufed_root, scale=2)
    with pytest.raises(ValueError, match='pad_multiple must be a positive multiple of 4'):
        _train(cufed_root, pad_multiple=6)
    with pytest.raises(ValueError, match='ref_size_mode must be one of'):
        _train(cufed_root, ref_size_mode='stretch')
    with pytest.raises(ValueError, match='use_rot needs a square ref_size'):
        _train(cufed_root, ref_size=[160, 120])
    with pytest.raises(ValueError, match=r"missing required option\(s\) \['dataroot_ref'\]"):
        RefSRTrainDataset(dataroot_gt=str(cufed_root / 'train' / 'input'))
    # An HR image without a reference of the same name is named in the error.
    (tmp_path / 'input').mkdir()
    (tmp_path / 'ref').mkdir()
    img = read_image(cufed_root / 'train' / 'input' / '000000.png')
    for name in ('a.png', 'b.png'):
        Image.fromarray(img).save(tmp_path / 'input' / name)
    Image.fromarray(img).save(tmp_path / 'ref' / 'a.png')
    with pytest.raises(FileNotFoundError, match='input/b.png'):
        RefSRTrainDataset(dataroot_gt=str(tmp_path / 'input'), dataroot_ref=str(tmp_path / 'ref'))
    with pytest.raises(FileNotFoundError, match='nowhere: no such folder'):
        RefSRTrainDataset(dataroot_gt=str(tmp_path / 'nowhere'), dataroot_ref=str(tmp_path / 'ref'))


# ---------------------------------------------------------------- CUFED5


@pytest.mark.parametrize('stride', [1, 2])
def test_cufed5_crop_and_protocol(cufed_root, stride):
    root = cufed_root / 'test' / 'CUFED5'
    ds = CUFED5Dataset(dataroot=str(root), ref_level=3, stride=stride)
    m = 4 * stride
    assert len(ds) == len(CUFED5_HR_SIZES) and ds.crop_multiple == m
    for i, (h, w) in enumerate(CUFED5_HR_SIZES):
        s = ds[i]
        h, w = h // m * m, w // m * m
        hr = read_image(root / f'{i:03d}_0.png')[:h, :w]
        np.testing.assert_array_equal(_u8(s['gt']), hr)
        lr = _pil(hr, w // 4, h // 4)
        np.testing.assert_array_equal(_u8(s['lq']), lr)
        np.testing.assert_array_equal(_u8(s['lq_up']), _pil(lr, w, h))
        rh, rw = CUFED5_REF_SIZES[2]
        rh, rw = rh // m * m, rw // m * m
        ref = read_image(root / f'{i:03d}_3.png')[:rh, :rw]
        np.testing.assert_array_equal(_u8(s['ref']), ref)
        np.testing.assert_array_equal(_u8(s['ref_downup']), _pil(_pil(ref, rw // 4, rh // 4), rw, rh))
        assert s['ref_path'].endswith(f'{i:03d}_3.png') and s['gt_path'].endswith(f'{i:03d}_0.png')


def test_cufed5_levels_pick_their_files_and_errors(cufed_root, tmp_path):
    root = cufed_root / 'test' / 'CUFED5'
    for level in range(1, 6):
        assert CUFED5Dataset(dataroot=str(root), ref_level=level)[0]['ref_path'].endswith(f'000_{level}.png')
    with pytest.raises(ValueError, match='ref_level must be 1..5'):
        CUFED5Dataset(dataroot=str(root), ref_level=6)
    with pytest.raises(ValueError, match='crop_multiple must be a positive multiple of 4'):
        CUFED5Dataset(dataroot=str(root), crop_multiple=6)
    img = read_image(root / '000_0.png')
    Image.fromarray(img).save(tmp_path / '007_0.png')
    Image.fromarray(img).save(tmp_path / '007_1.png')
    with pytest.raises(FileNotFoundError, match='missing level-2 reference'):
        CUFED5Dataset(dataroot=str(tmp_path), ref_level=2)
    with pytest.raises(FileNotFoundError, match='no CUFED5 HR images'):
        CUFED5Dataset(dataroot=str(root.parent.parent / 'train' / 'input'))
