"""NoRefTestDataset (Set5/Set14 style), VideoRefDataset (Vid4/Sintel frames) and RefSRInferenceDataset (users'
images), on the real images of ../shared/data."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from extracter.data import degradations as deg
from extracter.data.image_io import ImageReadError, read_image
from extracter.data.inference_dataset import RefSRInferenceDataset
from extracter.data.noref_dataset import NoRefTestDataset
from extracter.data.video_dataset import VideoRefDataset
from tests.data_helpers import shared_data_dir


def _u8(t: torch.Tensor) -> np.ndarray:
    return np.round(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


@pytest.fixture(scope='module')
def srf_folder(tmp_path_factory):
    """A small set in the SelfExSR layout: img_NNN_SRF_4_HR.png with _LR files beside them (to be ignored), cut from
    Set14 (whose img_003 is greyscale), plus a reference folder named without the _HR suffix."""
    src = shared_data_dir('sisr', 'Set14')
    root = tmp_path_factory.mktemp('srf')
    (root / 'hr').mkdir()
    (root / 'ref').mkdir()
    for i in (1, 3, 4, 5):
        img = Image.open(src / f'img_{i:03d}_SRF_4_HR.png')
        img.crop((0, 0, 90 + i, 70 + 2 * i)).save(root / 'hr' / f'img_{i:03d}_SRF_4_HR.png')
        img.crop((0, 0, 22, 17)).save(root / 'hr' / f'img_{i:03d}_SRF_4_LR.png')
        img.crop((30, 40, 130, 110)).save(root / 'ref' / f'img_{i:03d}_SRF_4.png')
    return root


def test_self_reference_protocol_on_set5():
    folder = shared_data_dir('sisr', 'Set5')
    ds = NoRefTestDataset(dataroot=str(folder))
    assert len(ds) == 5
    s = ds[0]
    hr = read_image(folder / 'img_001_SRF_4_HR.png')
    h, w = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
    np.testing.assert_array_equal(_u8(s['gt']), hr[:h, :w])
    np.testing.assert_array_equal(_u8(s['lq']), deg.make_lq(hr[:h, :w]))
    # EXTRACTER's dataset/set14.py: Ref = Ref_sr = LR_sr.
    torch.testing.assert_close(s['ref'], s['lq_up'], rtol=0, atol=0)
    torch.testing.assert_close(s['ref_downup'], s['lq_up'], rtol=0, atol=0)
    assert s['ref_path'] == s['gt_path'] == s['lq_path']


def test_srf_layout_uses_hr_only_and_crops_to_stride_multiple(srf_folder):
    ds = NoRefTestDataset(dataroot=str(srf_folder / 'hr'), stride=2)
    assert ds.keys == [f'img_{i:03d}_SRF_4_HR' for i in (1, 3, 4, 5)]
    s = ds[1]  # greyscale 93x76 (w x h) crop -> 88x72 at multiple 8
    assert s['gt'].shape == (3, 72, 88) and s['lq'].shape == (3, 18, 22) and s['ref'].shape == (3, 72, 88)
    torch.testing.assert_close(s['gt'][0], s['gt'][2])


def test_folder_reference(srf_folder):
    ds = NoRefTestDataset(dataroot=str(srf_folder / 'hr'), ref_mode='folder', dataroot_ref=str(srf_folder / 'ref'))
    s = ds[0]
    assert s['ref_path'].endswith('ref/img_001_SRF_4.png')
    ref = read_image(srf_folder / 'ref' / 'img_001_SRF_4.png')[:68, :100]
    np.testing.assert_array_equal(_u8(s['ref']), ref)
    np.testing.assert_array_equal(_u8(s['ref_downup']), deg.make_ref_downup(ref))
    with pytest.raises(ValueError, match="needs the option dataroot_ref"):
        NoRefTestDataset(dataroot=str(srf_folder / 'hr'), ref_mode='folder')


def test_folder_reference_missing_is_named(srf_folder, tmp_path):
    img = read_image(srf_folder / 'ref' / 'img_001_SRF_4.png')
    Image.fromarray(img).save(tmp_path / 'img_001_SRF_4.png')
    with pytest.raises(FileNotFoundError, match='img_003_SRF_4_HR.png'):
        NoRefTestDataset(dataroot=str(srf_folder / 'hr'), ref_mode='folder', dataroot_ref=str(tmp_path))


def test_random_reference_is_seeded_and_never_itself(srf_folder):
    make = lambda seed: NoRefTestDataset(dataroot=str(srf_folder / 'hr'), ref_mode='random', seed=seed)  # noqa: E731
    a, b = make(3), make(3)
    picks = [a.random_ref_index(i) for i in range(len(a))]
    assert picks == [b.random_ref_index(i) for i in range(len(b))]
    assert all(p != i for i, p in enumerate(picks))
    assert any([make(s).random_ref_index(i) for i in range(4)] != picks for s in range(10))
    s = a[2]
    assert s['ref_path'] == a.source.path(a.keys[picks[2]])
    ref = deg.crop_to_multiple(read_image(s['ref_path']), 4)
    np.testing.assert_array_equal(_u8(s['ref']), ref)


def test_noref_errors(srf_folder, tmp_path):
    with pytest.raises(ValueError, match='ref_mode must be one of'):
        NoRefTestDataset(dataroot=str(srf_folder / 'hr'), ref_mode='other')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='empty: folder has no images'):
        NoRefTestDataset(dataroot=str(tmp_path / 'empty'))


# ---------------------------------------------------------------- video


def test_video_offsets_ladder_on_vid4():
    folder = shared_data_dir('video', 'vid4-calendar')
    ds = VideoRefDataset(dataroot=str(folder), offsets=[1, 16], target_stride=20)
    n = len(list(folder.glob('*.png')))
    targets = list(range(0, n, 20))
    assert len(ds) == 2 * len(targets)
    got = [(s[1], s[2], s[3]) for s in ds.samples]
    assert got[0] == ('frame_001.png', 'frame_002.png', 1)
    # Near the end t + k runs past the last frame: the reference is t - k.
    assert got[-1] == (f'frame_{targets[-1] + 1:03d}.png', f'frame_{targets[-1] + 1 - 16:03d}.png', -16)
    s_near, s_far = ds[0], ds[len(targets)]
    assert s_near['ref_offset'] == 1 and s_far['ref_offset'] == 16
    assert s_near['lq_path'].endswith('vid4-calendar_frame_001_k1.png')
    assert s_far['lq_path'].endswith('vid4-calendar_frame_001_k16.png')
    assert s_near['gt'].shape == (3, 576, 720) and s_near['lq'].shape == (3, 144, 180)
    # A similarity ladder: the nearer frame is more like the target (the camera pans over the calendar).
    mae = lambda s: (s['gt'] - s['ref']).abs().mean().item()  # noqa: E731
    assert mae(s_near) < mae(s_far)


def test_video_root_of_sequences():
    root = shared_data_dir('video')
    ds = VideoRefDataset(dataroot=str(root), offsets=[4], target_stride=9)
    seqs = {s[0].rstrip('/').split('/')[-1] for s in ds.samples}
    assert {'vid4-calendar', 'vid4-city', 'sintel'} <= seqs
    with pytest.raises(ValueError, match='sintel: offset 16 needs more than 10 frames'):
        VideoRefDataset(dataroot=str(root), offsets=[16])
    with pytest.raises(ValueError, match='offsets must be'):
        VideoRefDataset(dataroot=str(root), offsets=[0])


# ---------------------------------------------------------------- users' images


@pytest.fixture(scope='module')
def demo():
    return shared_data_dir('refsr-pairs', 'ttsr-demo')


def test_inference_one_reference_for_all_pads_and_records_size(demo):
    ds = RefSRInferenceDataset(dataroot_lq=str(demo / 'lr.png'), ref_path=str(demo / 'ref.png'), stride=2)
    s = ds[0]
    lr, ref = read_image(demo / 'lr.png'), read_image(demo / 'ref.png')
    assert lr.shape == (125, 88, 3) and ref.shape == (500, 370, 3)
    assert s['lq_size'].tolist() == [125, 88] and 'gt' not in s
    lq = _u8(s['lq'])
    assert lq.shape == (126, 88, 3)  # padded to a multiple of the stride
    np.testing.assert_array_equal(lq[:125], lr)
    np.testing.assert_array_equal(lq[125], lr[124])  # replicated edge
    assert s['lq_up'].shape == (3, 504, 352)
    assert s['ref'].shape == (3, 504, 376)  # multiple of 4 x stride
    np.testing.assert_array_equal(_u8(s['ref'])[:500, :370], ref)
    np.testing.assert_array_equal(_u8(s['ref_downup']), deg.make_ref_downup(_u8(s['ref'])))
    crop = RefSRInferenceDataset(dataroot_lq=str(demo / 'lr.png'), ref_path=str(demo / 'ref.png'), stride=2,
                                 ref_fit='crop')[0]
    assert crop['ref'].shape == (3, 496, 368)


def test_inference_batch_meets_the_network_input_checks(demo):
    """A collated batch passes the archs' own size checks (no forward: that is the archs' tests' job)."""
    from extracter.archs.extracter_arch import Extracter

    net = Extracter(num_res_blocks=(1, 1, 1, 1), num_grad_blocks=(1, 1, 1, 1), n_feats=8, dfe_init='random',
                    window=6, stride=2, padding=2)
    lq_mult, ref_mult = net.required_multiples()
    ds = RefSRInferenceDataset(dataroot_lq=str(demo / 'lr.png'), ref_path=str(demo / 'ref.png'), stride=2)
    assert (ds.lq_multiple, ds.ref_multiple) == (lq_mult, ref_mult)
    b = next(iter(DataLoader(ds, batch_size=1)))
    net.check_inputs(b['lq'], b['ref'], b['lq_up'], b['ref_downup'])
    assert b['lq_size'].tolist() == [[125, 88]]


def test_inference_folder_matching_and_several_references(demo, tmp_path):
    lr, ref = read_image(demo / 'lr.png'), read_image(demo / 'ref.png')
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'refs' / 'b').mkdir(parents=True)
    Image.fromarray(lr).save(tmp_path / 'lq' / 'a.png')
    Image.fromarray(lr[:60, :50]).save(tmp_path / 'lq' / 'b.jpg', quality=95)
    Image.fromarray(ref[:200, :180]).save(tmp_path / 'refs' / 'a.jpg', quality=95)
    Image.fromarray(ref[100:300, :200]).save(tmp_path / 'refs' / 'b' / 'r1.png')
    Image.fromarray(ref[250:, 100:]).save(tmp_path / 'refs' / 'b' / 'r2.png')
    ds = RefSRInferenceDataset(dataroot_lq=str(tmp_path / 'lq'), dataroot_ref=str(tmp_path / 'refs'))
    a, b = ds[0], ds[1]
    assert a['ref_path'].endswith('refs/a.jpg') and a['ref'].shape == (3, 200, 180)
    assert isinstance(b['ref'], list) and len(b['ref']) == len(b['ref_downup']) == 2
    assert [p.split('/')[-1] for p in b['ref_path']] == ['r1.png', 'r2.png']
    assert b['ref'][1].shape == (3, 252, 272)  # 250x270 padded to multiples of 4
    refs = {'a.png': [str(tmp_path / 'refs' / 'b' / 'r2.png')],
            'b': [str(tmp_path / 'refs' / 'a.jpg'), str(tmp_path / 'refs' / 'b' / 'r1.png')]}
    mapped = RefSRInferenceDataset(dataroot_lq=str(tmp_path / 'lq'), refs=refs)
    assert mapped[0]['ref_path'].endswith('r2.png') and len(mapped[1]['ref']) == 2
    batch = next(iter(DataLoader(ds, batch_size=1, shuffle=False)))
    assert batch['lq'].shape == (1, 3, 125, 88)


def test_inference_errors_name_the_path(demo, tmp_path):
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'refs').mkdir()
    Image.fromarray(read_image(demo / 'lr.png')).save(tmp_path / 'lq' / 'x.png')
    with pytest.raises(FileNotFoundError, match=r'lq/x.png: no reference named x\.\*'):
        RefSRInferenceDataset(dataroot_lq=str(tmp_path / 'lq'), dataroot_ref=str(tmp_path / 'refs'))
    with pytest.raises(FileNotFoundError, match='missing.png: reference of .*x.png does not exist'):
        RefSRInferenceDataset(dataroot_lq=str(tmp_path / 'lq'), ref_path=str(tmp_path / 'missing.png'))
    with pytest.raises(ValueError, match='exactly one of ref_path, dataroot_ref, refs'):
        RefSRInferenceDataset(dataroot_lq=str(tmp_path / 'lq'), ref_path=str(demo / 'ref.png'),
                              dataroot_ref=str(tmp_path / 'refs'))
    with pytest.raises(FileNotFoundError, match='refs: folder has no images'):
        RefSRInferenceDataset(dataroot_lq=str(tmp_path / 'refs'), ref_path=str(demo / 'ref.png'))
    (tmp_path / 'refs' / 'x.png').write_bytes(b'broken')
    ds = RefSRInferenceDataset(dataroot_lq=str(tmp_path / 'lq'), dataroot_ref=str(tmp_path / 'refs'))
    with pytest.raises(ImageReadError, match='refs/x.png'):
        ds[0]


def test_noref_from_lmdb_equals_folder(srf_folder, tmp_path):
    from extracter.data.lmdb_pack import PackJob, folder_files, pack

    pack([PackJob(str(tmp_path / 'hr.lmdb'), folder_files(str(srf_folder / 'hr'))),
          PackJob(str(tmp_path / 'ref.lmdb'), folder_files(str(srf_folder / 'ref')))],
         show_progress=False, log=lambda m: None)
    disk = NoRefTestDataset(dataroot=str(srf_folder / 'hr'), ref_mode='folder', dataroot_ref=str(srf_folder / 'ref'))
    db = NoRefTestDataset(dataroot=str(tmp_path / 'hr.lmdb'), ref_mode='folder',
                          dataroot_ref=str(tmp_path / 'ref.lmdb'), io_backend={'type': 'lmdb'})
    assert db.keys == disk.keys  # the _LR files are in the LMDB too, and skipped the same way
    for i in range(len(disk)):
        a, b = disk[i], db[i]
        for k in ('gt', 'lq', 'lq_up', 'ref', 'ref_downup'):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
