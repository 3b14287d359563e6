"""Robust image reading: modes, bit depths, EXIF orientation, formats and the error messages."""

import io

import numpy as np
import pytest
from PIL import Image

from extracter.data.image_io import (
    ImageInputWarning,
    ImageReadError,
    decode_image_bytes,
    encode_png,
    list_images,
    read_image,
)
from tests.data_helpers import shared_data_dir


@pytest.fixture(scope='module')
def photo() -> np.ndarray:
    img = read_image(shared_data_dir('sisr', 'Set5') / 'img_001_SRF_4_HR.png')
    return np.ascontiguousarray(img[:48, :64])


def test_rgb_png_roundtrip(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / 'a.png')
    out = read_image(tmp_path / 'a.png')
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, photo)


def test_greyscale_becomes_three_equal_channels(tmp_path, photo):
    grey = np.asarray(Image.fromarray(photo).convert('L'))
    Image.fromarray(grey).save(tmp_path / 'g.png')
    out = read_image(tmp_path / 'g.png')
    assert out.shape == (48, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_real_greyscale_set14_image():
    path = shared_data_dir('sisr', 'Set14') / 'img_003_SRF_4_HR.png'
    assert Image.open(path).mode == 'L'
    out = read_image(path)
    assert out.shape == (512, 512, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_alpha_is_dropped(tmp_path, photo):
    """The colour under the alpha channel is kept (a warning says so, see tests/test_bad_inputs_io.py)."""
    alpha = np.full(photo.shape[:2], 7, np.uint8)
    Image.fromarray(np.dstack([photo, alpha]), 'RGBA').save(tmp_path / 'a.png')
    with pytest.warns(ImageInputWarning, match='a.png: the alpha channel is dropped'):
        np.testing.assert_array_equal(read_image(tmp_path / 'a.png'), photo)
    Image.fromarray(np.dstack([photo[..., 0], alpha]), 'LA').save(tmp_path / 'la.png')
    with pytest.warns(ImageInputWarning, match='la.png: the alpha channel is dropped'):
        np.testing.assert_array_equal(read_image(tmp_path / 'la.png')[..., 1], photo[..., 0])


def test_16bit_grey_and_rgb_keep_high_byte(tmp_path, photo):
    import cv2

    rng = np.random.default_rng(0)
    low = rng.integers(0, 256, photo.shape, dtype=np.uint16)
    rgb16 = (photo.astype(np.uint16) << 8) | low
    cv2.imwrite(str(tmp_path / 'rgb16.png'), rgb16[..., ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / 'rgb16.png'), photo)
    cv2.imwrite(str(tmp_path / 'g16.png'), rgb16[..., 1])
    assert Image.open(tmp_path / 'g16.png').mode.startswith('I')
    out = read_image(tmp_path / 'g16.png')
    np.testing.assert_array_equal(out[..., 0], photo[..., 1])
    np.testing.assert_array_equal(out[..., 2], photo[..., 1])


def test_palette_image(tmp_path, photo):
    pal = Image.fromarray(photo).quantize(colors=16)
    pal.save(tmp_path / 'p.png')
    assert Image.open(tmp_path / 'p.png').mode == 'P'
    np.testing.assert_array_equal(read_image(tmp_path / 'p.png'), np.asarray(pal.convert('RGB')))


def test_exif_orientation_small_jpeg(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    Image.fromarray(photo).save(tmp_path / 'o.jpg', quality=95, exif=exif)
    raw = np.asarray(Image.open(tmp_path / 'o.jpg').convert('RGB'))
    out = read_image(tmp_path / 'o.jpg')
    assert out.shape == (64, 48, 3)
    np.testing.assert_array_equal(out, np.rot90(raw, -1))
    assert np.abs(out.astype(int) - np.rot90(photo, -1).astype(int)).mean() < 4  # JPEG loss only


def test_exif_orientation_real_camera_pair():
    """The DCSR CameraFusion telephoto image is stored upside down with EXIF orientation 3."""
    path = shared_data_dir('refsr-pairs', 'dcsr-camerafusion') / 'tele.jpg'
    with Image.open(path) as im:
        assert im.getexif().get(0x0112) == 3
        im.draft('RGB', (im.width // 8, im.height // 8))  # keep the check fast: decode at 1/8
        raw = np.asarray(im.convert('RGB'))
    with Image.open(path) as im:
        im.draft('RGB', (im.width // 8, im.height // 8))
        buf = io.BytesIO()
        im.save(buf, 'JPEG', quality=95, exif=im.getexif())
    out = decode_image_bytes(buf.getvalue(), 'tele.jpg (1/8)')
    assert out.shape == raw.shape
    assert np.abs(out.astype(int) - raw[::-1, ::-1].astype(int)).mean() < 4
    assert np.abs(out.astype(int) - raw.astype(int)).mean() > 20  # upside down really differs


def test_lmdb_bytes_decode_equals_file(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / 'a.png')
    np.testing.assert_array_equal(decode_image_bytes(encode_png(read_image(tmp_path / 'a.png')), 'k'), photo)


def test_errors_name_the_path(tmp_path):
    with pytest.raises(ImageReadError, match='nope.png: no such image file'):
        read_image(tmp_path / 'nope.png')
    (tmp_path / 'bad.png').write_bytes(b'not an image at all')
    with pytest.raises(ImageReadError, match='bad.png'):
        read_image(tmp_path / 'bad.png')
    good = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(good, 'PNG')
    (tmp_path / 'trunc.png').write_bytes(good.getvalue()[:60])
    with pytest.raises(ImageReadError, match='trunc.png'):
        read_image(tmp_path / 'trunc.png')
    with pytest.raises(ImageReadError, match='rec7'):
        decode_image_bytes(b'', 'rec7')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('x')
    with pytest.raises(FileNotFoundError, match='empty: folder has no images'):
        list_images(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='missing: no such folder'):
        list_images(tmp_path / 'missing')
