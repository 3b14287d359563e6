"""Bad input never ends in a traceback, and no output is ever lost: image reading, atomic writes and interruption,
LMDB packing, scripts/create_lmdb.py and scripts/prepare_vgg19.py.

Every case checks the exception type or exit status, that the message names the culprit, and, for the scripts, that
nothing outside the expected outputs changed. The SIGTERM cases run the real code in a subprocess and kill it midway.
"""

import hashlib
import io
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extracter.data import image_io
from extracter.data.image_arguments import parse_pixel_count
from extracter.data.image_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageInputWarning,
    ImageReadError,
    ImageTooLargeError,
    decode_image_bytes,
    read_image,
    set_16bit_scaling,
    set_max_image_pixels,
)
from extracter.utils import file_io
from extracter.utils.cli import EXIT_ERROR, run_main
from extracter.utils.file_io import (
    Terminated,
    atomic_write,
    atomic_write_text,
    clean_stale_temp_files,
    host_tag,
    interruptible,
    parse_temp_name,
    signals_deferred,
)
from tests.data_helpers import REPO_ROOT


@pytest.fixture(autouse=True)
def _restore_image_settings():
    """The image limits are process-wide: put them back after each test."""
    saved = (image_io.get_max_image_pixels(), image_io.get_16bit_scaling(), Image.MAX_IMAGE_PIXELS,
             {k: os.environ.get(k) for k in (image_io.MAX_PIXELS_ENV, image_io.SCALING_ENV)})
    yield
    image_io._max_pixels, image_io._scaling, Image.MAX_IMAGE_PIXELS, env = saved
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims ``width x height`` RGB pixels (a decompression bomb's shape)."""
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr) + _chunk(b'IDAT', zlib.compress(b'\0' * 64)) + \
        _chunk(b'IEND', b'')


def _with_sbit(png: bytes, bits: int, channels: int) -> bytes:
    """Insert an sBIT chunk (significant bits per channel) right after IHDR."""
    return png[:33] + _chunk(b'sBIT', bytes([bits] * channels)) + png[33:]


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)]).astype(np.uint8)


def _png_bytes(arr: np.ndarray, mode: str = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, 'PNG')
    return buf.getvalue()


def _tree(root: Path) -> dict:
    """Relative path -> sha256 (or 'dir') of everything under ``root``."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(d, n), root)] = 'dir'
        for n in files:
            p = os.path.join(d, n)
            with open(p, 'rb') as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _dead_pid() -> int:
    p = subprocess.Popen(['true'])
    p.wait()
    return p.pid


def _ours(folder: Path) -> list:
    return sorted(n for n in os.listdir(folder) if parse_temp_name(n))


# --- image reading: refused files -------------------------------------------------------------------------------------


def test_bad_image_files_raise_image_read_error_naming_the_file(tmp_path):
    good = _png_bytes(_gradient(64, 64))
    jpg = io.BytesIO()
    Image.fromarray(_gradient(64, 64)).save(jpg, 'JPEG')
    cases = {
        'empty.png': (b'', 'empty file (0 bytes)'),
        'notes.png': (b'these are my notes, not a picture\n', 'not an image, or a format that cannot be read '
                                                               "(it looks like text: 'these are my notes, '"),
        'noise.jpg': (bytes(range(256)) * 4, 'not an image, or a format that cannot be read'),
        'cut.png': (good[:70], 'corrupt or truncated image data'),
        'cut.jpg': (jpg.getvalue()[:len(jpg.getvalue()) // 2], 'corrupt or truncated image data'),
        'phone.png': (b'\0\0\0\x18ftypheic' + b'\0' * 40, 'HEIC/HEIF is not supported, convert it to PNG or JPEG'),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError) as err:
            read_image(tmp_path / name)
        assert str(err.value).startswith(f'{tmp_path / name}: ') and expected in str(err.value), str(err.value)
    (tmp_path / 'folder.png').mkdir()
    with pytest.raises(ImageReadError, match='folder.png: is a folder, not an image file'):
        read_image(tmp_path / 'folder.png')
    with pytest.raises(ImageReadError, match='gone.png: no such image file'):
        read_image(tmp_path / 'gone.png')
    assert issubclass(ImageReadError, ValueError)


def test_unreadable_file_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / 'secret.png'
    path.write_bytes(_png_bytes(_gradient()))
    if os.geteuid() == 0:  # root reads any file: make the open fail as it does for other users
        real_open = open

        def deny(file, *args, **kw):
            if os.fspath(file) == str(path):
                raise PermissionError(13, 'Permission denied', str(path))
            return real_open(file, *args, **kw)

        monkeypatch.setattr('builtins.open', deny)
    else:
        path.chmod(0)
    with pytest.raises(ImageReadError, match='secret.png: permission denied'):
        read_image(path)


def test_decompression_bomb_is_refused_with_size_limit_and_flag(tmp_path):
    (tmp_path / 'bomb.png').write_bytes(_png_header_only(20000, 20000))
    # above twice Pillow's threshold, Pillow itself refuses in Image.open: the message still says it all
    with pytest.raises(ImageTooLargeError) as err:
        read_image(tmp_path / 'bomb.png')
    msg = str(err.value)
    assert msg.startswith(f'{tmp_path / "bomb.png"}: the image is 400,000,000 pixels')
    assert f'limit of {DEFAULT_MAX_IMAGE_PIXELS:,} pixels' in msg and '--max-image-pixels 400000000' in msg
    # between the limit and Pillow's error threshold our own check refuses it, with the dimensions; warnings turned
    # into errors (python -W error) change nothing
    (tmp_path / 'big.png').write_bytes(_png_header_only(11000, 10000))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(ImageTooLargeError, match=r'big.png: the image is 11000 x 10000 = 110,000,000 pixels.*'
                                                     r'--max-image-pixels 110000000'):
            read_image(tmp_path / 'big.png')
    with pytest.raises(ImageTooLargeError, match='record-7: the image is 11000 x 10000'):
        decode_image_bytes((tmp_path / 'big.png').read_bytes(), 'record-7')
    # raising the limit lets the header through (this file then turns out to hold no pixel data)
    set_max_image_pixels(400_000_000)
    assert os.environ[image_io.MAX_PIXELS_ENV] == '400000000'
    with pytest.raises(ImageReadError, match='bomb.png: corrupt or truncated image data') as err:
        read_image(tmp_path / 'bomb.png')
    assert not isinstance(err.value, ImageTooLargeError)
    # a real image above a lowered limit
    (tmp_path / 'photo.png').write_bytes(_png_bytes(_gradient(40, 50)))
    set_max_image_pixels(1999)
    with pytest.raises(ImageTooLargeError, match='photo.png: the image is 50 x 40 = 2,000 pixels'):
        read_image(tmp_path / 'photo.png')
    set_max_image_pixels(None)
    assert read_image(tmp_path / 'photo.png').shape == (40, 50, 3)
    with pytest.raises(ValueError, match='positive whole number'):
        set_max_image_pixels(-5)


def test_pixel_count_flag_values():
    assert parse_pixel_count('400_000_000') == 400_000_000
    assert parse_pixel_count('20000x20000') == 400_000_000
    assert parse_pixel_count('none') == 0
    with pytest.raises(Exception, match='expected a number of pixels'):
        parse_pixel_count('lots')


# --- image reading: warnings ------------------------------------------------------------------------------------------


def _read_with_warnings(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        arr = read_image(path)
    return arr, [str(w.message) for w in caught if issubclass(w.category, ImageInputWarning)]


def test_transparent_alpha_warns_opaque_alpha_does_not(tmp_path):
    rgb = _gradient()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), 'RGBA').save(tmp_path / 'opaque.png')
    arr, msgs = _read_with_warnings(tmp_path / 'opaque.png')
    assert msgs == [] and np.array_equal(arr, rgb)
    alpha[:6, :8] = 0  # 48 of 768 pixels transparent
    Image.fromarray(np.dstack([rgb, alpha]), 'RGBA').save(tmp_path / 'logo.png')
    arr, msgs = _read_with_warnings(tmp_path / 'logo.png')
    assert np.array_equal(arr, rgb)  # the colour under the transparent pixels is what comes out
    assert len(msgs) == 1 and msgs[0].startswith(f'{tmp_path / "logo.png"}: the alpha channel is dropped')
    assert '6.2% of the pixels' in msgs[0] and 'colours stored under the transparent pixels will show' in msgs[0]
    assert 'Flatten the image onto a background' in msgs[0]
    # a palette image with a transparent index warns the same way
    pal = Image.fromarray(rgb).quantize(colors=8)
    pal.info['transparency'] = int(np.asarray(pal)[0, 0])
    pal.save(tmp_path / 'pal.png', transparency=pal.info['transparency'])
    _, msgs = _read_with_warnings(tmp_path / 'pal.png')
    assert len(msgs) == 1 and 'pal.png: the alpha channel is dropped' in msgs[0]


def _12bit_photo() -> np.ndarray:
    """uint16 RGB data with 12 significant bits, stored unscaled (as some camera and medical tools write it)."""
    rng = np.random.default_rng(1)
    return (_gradient().astype(np.uint16) * 16 + rng.integers(0, 16, (24, 32, 3), dtype=np.uint16))


def test_low_range_16bit_warns_and_significant_bits_rescales(tmp_path):
    import cv2

    data = _12bit_photo()
    peak = int(data.max())
    assert 3840 <= peak < 4096
    cv2.imwrite(str(tmp_path / 'rgb12.png'), data[..., ::-1])
    cv2.imwrite(str(tmp_path / 'grey12.png'), data[..., 1])
    for name, channel in (('rgb12.png', None), ('grey12.png', 1)):
        expected_hi = (data >> 8).astype(np.uint8) if channel is None else np.repeat(
            (data[..., 1:2] >> 8).astype(np.uint8), 3, axis=2)
        arr, msgs = _read_with_warnings(tmp_path / name)
        np.testing.assert_array_equal(arr, expected_hi)  # default: unchanged behaviour (high byte)
        assert int(arr.max()) == 15
        gpeak = peak if channel is None else int(data[..., 1].max())
        assert len(msgs) == 1 and msgs[0].startswith(f'{tmp_path / name}: 16-bit image whose maximum sample is {gpeak}')
        assert '12-bit data' in msgs[0] and '--16bit-scaling significant-bits' in msgs[0]
    set_16bit_scaling('significant-bits')
    arr, msgs = _read_with_warnings(tmp_path / 'rgb12.png')
    assert msgs == []
    np.testing.assert_array_equal(arr, np.rint(data.astype(np.float64) * 255 / 4095).astype(np.uint8))
    # the PNG sBIT chunk, when the data fits in it, decides the bit depth: 14 bits declared, 12 bits of data
    (tmp_path / 'sbit14.png').write_bytes(_with_sbit((tmp_path / 'rgb12.png').read_bytes(), 14, 3))
    arr, _ = _read_with_warnings(tmp_path / 'sbit14.png')
    np.testing.assert_array_equal(arr, np.rint(data.astype(np.float64) * 255 / 16383).astype(np.uint8))
    # 14-bit data (no warning in the default mode: not nearly black) is stretched by 2**14 - 1
    cv2.imwrite(str(tmp_path / 'rgb14.png'), (data * 4)[..., ::-1])
    arr, _ = _read_with_warnings(tmp_path / 'rgb14.png')
    np.testing.assert_array_equal(arr, np.rint((data * 4).astype(np.float64) * 255 / 16383).astype(np.uint8))
    # full-range 16-bit data is read the same in both modes, without a warning
    full = data * 16
    cv2.imwrite(str(tmp_path / 'full.png'), full[..., ::-1])
    arr, msgs = _read_with_warnings(tmp_path / 'full.png')
    assert msgs == []
    np.testing.assert_array_equal(arr, (full >> 8).astype(np.uint8))
    with pytest.raises(ValueError, match='high-byte, significant-bits'):
        set_16bit_scaling('auto')


def test_image_tensors_never_come_from_read_only_arrays(tmp_path, monkeypatch):
    """read_image's arrays are Pillow's read-only buffers; torch warns (once per process) when given one."""
    from extracter.data.degradations import to_tensor

    writable = []
    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, 'from_numpy', lambda a: writable.append(a.flags.writeable) or from_numpy(a))
    for h, w in ((1, 1), (5, 7)):
        Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(tmp_path / 'x.png')
        arr = read_image(tmp_path / 'x.png')
        with open(tmp_path / 'x.png', 'rb') as f:
            record = decode_image_bytes(f.read(), '<lmdb>:x')  # an LMDB record is decoded the same way
        for img in (arr, record):
            t = to_tensor(img)
            assert t.shape == (3, h, w) and torch.allclose(t, torch.full_like(t, 200 / 255))
    assert writable == [True] * 4


# --- atomic writes and interruption -----------------------------------------------------------------------------------


def test_atomic_write_failure_and_ctrl_c_leave_no_temp_and_keep_the_old_file(tmp_path):
    target = tmp_path / 'result.txt'
    target.write_text('old')
    names = []

    def fail(exc):
        def write(tmp):
            names.append(os.path.basename(tmp))
            Path(tmp).write_text('half')
            raise exc
        return write

    for exc in (OSError(28, 'No space left on device'), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            atomic_write(target, fail(exc))
        assert sorted(os.listdir(tmp_path)) == ['result.txt'] and target.read_text() == 'old'
    parsed = parse_temp_name(names[0])
    assert parsed == ('result.txt', 'tmp', host_tag(), os.getpid())
    assert names[0].startswith(f'.result.txt.extracter-tmp-{host_tag()}-{os.getpid()}.') and names[0].endswith('.tmp')
    with pytest.raises(IsADirectoryError, match='is a folder'):
        atomic_write_text(tmp_path, 'x')
    with pytest.raises(NotADirectoryError, match=f'cannot write into {target / "sub"}: {target} is a file'):
        atomic_write_text(target / 'sub' / 'x.txt', 'x')
    assert sorted(os.listdir(tmp_path)) == ['result.txt'] and target.read_text() == 'old'


def test_interruptible_installs_chains_and_restores_handlers(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    calls = []

    def theirs(signum, frame):
        calls.append(signum)

    signal.signal(signal.SIGTERM, theirs)
    try:
        # a real SIGTERM during a write: their handler runs, the process survives, the write completes
        def write(tmp):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            Path(tmp).write_text('done')

        atomic_write(tmp_path / 'out.txt', write)
        assert calls == [signal.SIGTERM] and (tmp_path / 'out.txt').read_text() == 'done'
        assert signal.getsignal(signal.SIGTERM) is theirs  # restored
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with interruptible():
            ours = signal.getsignal(signal.SIGTERM)
            assert isinstance(ours, file_io._Handler)
            with interruptible():
                assert signal.getsignal(signal.SIGTERM) is ours  # nested: not installed twice
            # what the interpreter calls on SIGTERM: it raises (exit status 143), and waits inside a rename sequence
            with pytest.raises(Terminated) as err:
                ours(signal.SIGTERM, None)
            assert err.value.code == 143 and str(err.value) == 'terminated by SIGTERM'
            with pytest.raises(Terminated):
                with signals_deferred():
                    ours(signal.SIGTERM, None)
                    calls.append('renames done')
            assert calls[-1] == 'renames done'
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with interruptible():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # ignored stays ignored
    finally:
        signal.signal(signal.SIGTERM, before)


def test_clean_stale_temp_files(tmp_path):
    dead, host = _dead_pid(), host_tag()
    (tmp_path / 'keep.png').write_bytes(b'mine')
    (tmp_path / '.hidden.png.tmp').write_bytes(b'not ours')
    (tmp_path / f'.a.png.extracter-tmp-{host}-{dead}.x1y2.tmp').write_bytes(b'stale')
    (tmp_path / f'.b.lmdb.extracter-tmp-{host}-{dead}.k3').mkdir()
    (tmp_path / f'.b.lmdb.extracter-tmp-{host}-{dead}.k3' / 'data.mdb').write_bytes(b'stale')
    (tmp_path / f'.c.png.extracter-tmp-{host}-{os.getpid()}.z').write_bytes(b'live')
    (tmp_path / f'.d.png.extracter-tmp-otherhost-{dead}.z').write_bytes(b'foreign')
    (tmp_path / f'.old.lmdb.extracter-old-{host}-{dead}').mkdir()  # a replacement killed between its renames
    (tmp_path / f'.old.lmdb.extracter-old-{host}-{dead}' / 'data.mdb').write_bytes(b'previous lmdb')
    (tmp_path / 'e.lmdb').mkdir()
    (tmp_path / f'.e.lmdb.extracter-old-{host}-{dead}').mkdir()  # ... after the second rename: superseded
    dry = clean_stale_temp_files(tmp_path, remove=False)
    assert dry.removed == [] and len(dry.kept) == 6
    logged = []
    report = clean_stale_temp_files(tmp_path, log=logged.append)
    assert sorted(os.path.basename(p) for p in report.removed) == [
        f'.a.png.extracter-tmp-{host}-{dead}.x1y2.tmp', f'.b.lmdb.extracter-tmp-{host}-{dead}.k3',
        f'.e.lmdb.extracter-old-{host}-{dead}']
    assert report.restored == [str(tmp_path / 'old.lmdb')]
    assert (tmp_path / 'old.lmdb' / 'data.mdb').read_bytes() == b'previous lmdb'
    kept = {os.path.basename(p): why for p, why in report.kept}
    assert 'still running' in kept[f'.c.png.extracter-tmp-{host}-{os.getpid()}.z']
    assert 'host otherhost' in kept[f'.d.png.extracter-tmp-otherhost-{dead}.z']
    assert sorted(os.listdir(tmp_path)) == sorted(['keep.png', '.hidden.png.tmp', 'old.lmdb', 'e.lmdb', *kept])
    assert any(line.startswith('removed stale temporary') for line in logged)
    assert clean_stale_temp_files(tmp_path / 'missing').removed == []


_SLOW_WRITE = '''
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location('file_io_standalone', {module!r})
m = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = m
spec.loader.exec_module(m)

def write(tmp):
    with open(tmp, 'wb') as f:
        f.write(b'x' * (1 << 20))
        f.flush()
        open({ready!r}, 'w').close()
        for _ in range(1200):
            f.write(b'y' * (1 << 16))
            time.sleep(0.05)

m.atomic_write({target!r}, write)
'''


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f'the subprocess ended early ({proc.returncode}): {err}')
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f'{path} did not appear within {timeout} s')
        time.sleep(0.05)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=['TERM', 'HUP', 'KILL'])
def test_signal_during_atomic_write(tmp_path, sig):
    """A slow write of a large file in another process, killed midway: SIGTERM/SIGHUP remove the temporary file; after
    SIGKILL (nothing can run) it is left, recognisable, and the next run's clean_stale_temp_files removes it."""
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'big.bin').write_bytes(b'previous version')
    ready = tmp_path / 'ready'
    code = _SLOW_WRITE.format(module=str(REPO_ROOT / 'extracter' / 'utils' / 'file_io.py'), ready=str(ready),
                              target=str(out / 'big.bin'))
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(ready, proc)
    assert len(_ours(out)) == 1  # the temporary file exists while writing
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        (left,) = _ours(out)
        assert parse_temp_name(left)[3] == proc.pid and (out / left).stat().st_size >= 1 << 20
        report = clean_stale_temp_files(out)
        assert [os.path.basename(p) for p in report.removed] == [left]
    else:
        assert proc.returncode == 128 + sig, err
    assert sorted(os.listdir(out)) == ['big.bin'] and (out / 'big.bin').read_bytes() == b'previous version'


# --- the command-line boundary ----------------------------------------------------------------------------------------


def _run(fn, argv, capsys):
    code = run_main(fn, argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_run_main_known_unexpected_debug_and_signals(tmp_path, capsys):
    def raiser(exc):
        def main(argv):
            raise exc
        return main

    def opener(argv):
        open(tmp_path / 'nope.txt')

    cases = [
        (raiser(ImageReadError('x.png: empty file (0 bytes), not an image')), 2,
         'error: x.png: empty file (0 bytes), not an image\n'),
        (raiser(FileExistsError(17, 'out.pth already exists; pass --overwrite to replace it')), 2,
         'error: out.pth already exists; pass --overwrite to replace it\n'),
        (opener, 2, f'error: {tmp_path / "nope.txt"}: No such file or directory\n'),
        (raiser(OSError(28, 'No space left on device', '/data/out.png')), 2,
         'error: /data/out.png: No space left on device (free some space and run again)\n'),
        (raiser(MemoryError()), 2,
         'error: out of memory (use smaller images or tiles, or a machine with more memory)\n'),
        (raiser(KeyboardInterrupt()), 130, 'error: interrupted (Ctrl-C); temporary files were removed'),
        (raiser(Terminated(signal.SIGTERM)), 143, 'error: terminated by SIGTERM; temporary files were removed'),
        (raiser(RuntimeError('boom')), 1, 'error: unexpected RuntimeError: boom; rerun with --debug for the '
                                          'traceback (please report it)\n'),
    ]
    for fn, status, start in cases:
        code, _, err = _run(fn, [], capsys)
        assert code == status and err.startswith(start) and 'Traceback' not in err, err
    seen = []

    def main(argv):
        seen.append(argv)
        raise ValueError('bad value')

    code, _, err = _run(main, ['--debug', '-x'], capsys)
    assert code == 2 and seen == [['-x']]
    assert err.startswith('Traceback') and err.endswith('error: bad value\n')

    def warns(argv):
        warnings.warn('a.png: the alpha channel is dropped', ImageInputWarning, stacklevel=1)

    code, _, err = _run(warns, [], capsys)
    assert code == 0 and err == 'warning: a.png: the alpha channel is dropped\n'
    assert run_main(raiser(SystemExit(2)), []) == 2  # argparse's usage errors: their exit status, returned
    assert run_main(raiser(SystemExit(None)), []) == 0  # --help
    for message in ('error: --model expects LABEL=WEIGHTS', '--model expects LABEL=WEIGHTS'):
        # sys.exit('message'): a usage error the script states itself; Python alone would exit 1, as for a bug
        code, _, err = _run(raiser(SystemExit(message)), [], capsys)
        assert code == 2 and err == 'error: --model expects LABEL=WEIGHTS\n', err


def test_run_main_leaves_torch_global_modes_as_it_found_them():
    """A script's main() called in-process (as the tests do) may switch autograd off and set the thread count for
    its own run; the caller (e.g. a training test after it) gets them back, also when the script fails."""
    threads = torch.get_num_threads()

    def script(fail):
        def main(argv):
            torch.set_grad_enabled(False)
            torch.set_num_threads(1 if threads > 1 else 2)
            if fail:
                raise ValueError('bad option')
        return main

    for fail in (False, True):
        assert run_main(script(fail), []) == (EXIT_ERROR if fail else 0)
        assert torch.is_grad_enabled() and torch.get_num_threads() == threads


# --- scripts/create_lmdb.py -------------------------------------------------------------------------------------------


def _image_folder(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    base = _gradient(48, 40)
    for i in range(n):
        Image.fromarray(np.roll(base, 5 * i, axis=1)).save(folder / f'{i:03d}.png')
    return folder


def test_create_lmdb_bad_images_exit_2_naming_each_and_change_nothing(tmp_path, capsys):
    from extracter.tools.create_lmdb import main

    src = _image_folder(tmp_path / 'src')
    (src / '100.png').write_bytes(b'')
    (src / '101.png').write_bytes(_png_header_only(20000, 20000))
    (src / '102.png').write_bytes(_png_bytes(_gradient())[:80])
    (src / '103.png').mkdir()  # a folder named like an image is not listed as one
    before = _tree(tmp_path)
    code = main(['--no-progress', '--folder', str(src), '--lmdb', str(tmp_path / 'out' / 'x.lmdb')])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: unreadable image(s); no LMDB was written') and 'Traceback' not in err
    assert f'{src / "100.png"}: empty file' in err and f'{src / "102.png"}: corrupt or truncated' in err
    assert f'{src / "101.png"}: the image is 400,000,000 pixels' in err and '--max-image-pixels' in err
    after = _tree(tmp_path)
    assert after.pop('out') == 'dir' and after == before  # only the (empty) output folder was created


def test_create_lmdb_pixel_flag_warnings_and_path_errors(tmp_path, capsys):
    from extracter.tools.create_lmdb import main

    src = _image_folder(tmp_path / 'src', 2)
    rgba = np.dstack([_gradient(48, 40), np.full((48, 40), 255, np.uint8)])
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba, 'RGBA').save(src / '002.png')
    dst = tmp_path / 'out' / 'x.lmdb'
    args = ['--no-progress', '--folder', str(src), '--lmdb', str(dst)]
    before = _tree(tmp_path)
    assert main(args + ['--max-image-pixels', '1000']) == 2
    err = capsys.readouterr().err
    assert 'the image is 40 x 48 = 1,920 pixels, more than the limit of 1,000' in err and not dst.exists()
    assert {k: v for k, v in _tree(tmp_path).items() if k != 'out'} == before
    assert main(args + ['--max-image-pixels', '40x48']) == 0
    cap = capsys.readouterr()
    assert f'warning: {src / "002.png"}: the alpha channel is dropped' in cap.err
    assert f'wrote {dst}: 3 records, verified' in cap.out
    for bad_args, expected in [
        (['--folder', str(src / '000.png'), '--lmdb', str(tmp_path / 'y.lmdb')], 'is a file, expected a folder'),
        (['--folder', str(tmp_path / 'nowhere'), '--lmdb', str(tmp_path / 'y.lmdb')], 'nowhere: no such folder'),
        (['--folder', str(src), '--lmdb', str(src / '000.png' / 'y.lmdb')],
         f'{src / "000.png"} is a file, not a folder'),
        (['--folder', str(src), '--lmdb', str(dst)], 'refusing to touch existing LMDB'),
    ]:
        before = _tree(tmp_path)
        assert main(['--no-progress', *bad_args]) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and expected in err and 'Traceback' not in err, err
        assert _tree(tmp_path) == before


def test_create_lmdb_next_run_removes_stale_staging_folder(tmp_path, capsys):
    """A staging folder of a run killed outright (planted, from a process that is gone) is removed by the next run;
    one of a running process is left alone."""
    from extracter.tools.create_lmdb import main

    src = _image_folder(tmp_path / 'src', 2)
    out = tmp_path / 'out'
    stale = out / f'.x.lmdb.extracter-tmp-{host_tag()}-{_dead_pid()}.ab12'
    live = out / f'.y.lmdb.extracter-tmp-{host_tag()}-{os.getpid()}.cd34'
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / 'data.mdb').write_bytes(b'\0' * 4096)
    assert main(['--no-progress', '--folder', str(src), '--lmdb', str(out / 'x.lmdb')]) == 0
    assert f'removed stale temporary {stale}' in capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted([live.name, 'x.lmdb'])


_SLOW_PACK = '''
import runpy, sys, time
sys.path.insert(0, {repo!r})
import extracter.data.lmdb_pack as lp
real_read = lp.read_image

def slow_read(path):
    open({ready!r}, 'a').close()
    time.sleep(0.2)
    return real_read(path)

lp.read_image = slow_read
sys.argv = ['create_lmdb.py'] + {args!r}
runpy.run_path({script!r}, run_name='__main__')
'''


def test_create_lmdb_sigterm_midway_leaves_no_staging_folder(tmp_path):
    src = _image_folder(tmp_path / 'src', 30)
    out = tmp_path / 'out'
    ready = tmp_path / 'ready'
    before = _tree(src)
    script = str(REPO_ROOT / 'scripts' / 'create_lmdb.py')
    code = _SLOW_PACK.format(repo=str(REPO_ROOT), ready=str(ready), script=script,
                             args=['--no-progress', '--folder', str(src), '--lmdb', str(out / 'x.lmdb')])
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(ready, proc)
    assert len(_ours(out)) == 1  # staging folder present
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert 'error: terminated by SIGTERM; temporary files were removed' in err and 'Traceback' not in err
    assert os.listdir(out) == [] and _tree(src) == before


# --- scripts/prepare_vgg19.py -----------------------------------------------------------------------------------------


def test_prepare_vgg19_junk_inputs_one_line_naming_the_file(tmp_path, capsys):
    import torch
    from torch import nn

    from extracter.tools.prepare_vgg19 import main

    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'notes.pth').write_text('weights are on the other disk\n')
    (junk / 'noise.pth').write_bytes(bytes(range(256)) * 8)
    (junk / 'empty.pth').write_bytes(b'')
    torch.save({'conv.weight': torch.zeros(4, 3, 3, 3)}, junk / 'other_net.pth')
    torch.save({f'features.{i}.{p}': torch.zeros(2) for i in (0, 2) for p in ('weight', 'bias')}, junk / 'shape.pth')
    torch.save(torch.zeros(3), junk / 'tensor.pth')
    torch.save(nn.Linear(2, 2), junk / 'pickled_model.pth')
    buf = io.BytesIO()
    torch.save({'features.0.weight': torch.zeros(64, 3, 3, 3)}, buf)
    (junk / 'cut.pth').write_bytes(buf.getvalue()[:400])
    (junk / 'folder.pth').mkdir()
    expected = {
        'notes.pth': 'a text file, not PyTorch weights',
        'noise.pth': 'not a PyTorch weights file',
        'empty.pth': 'empty file (0 bytes)',
        'other_net.pth': "but 'features.0.weight' is missing (found keys: conv.weight",
        'shape.pth': "but 'features.0.weight' is [2], not a tensor of shape [64, 3, 3, 3]",
        'tensor.pth': 'holds a Tensor',
        'pickled_model.pth': 'holding objects other than tensors (a pickled model?)',
        'cut.pth': 'a truncated or corrupt PyTorch file',
        'folder.pth': 'is a folder',
        'missing.pth': 'no such file',
    }
    out = tmp_path / 'out'
    before = _tree(tmp_path)
    for name, what in expected.items():
        code = main(['--source', 'torchvision', '--input', str(junk / name), '-o', str(out / 'vgg.pth')])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.startswith(f'error: {junk / name}') and what in err and "VGG-19" in err, err
        assert err.count('\n') == 1 and 'Traceback' not in err
        assert _tree(tmp_path) == before
    # the output: an existing file is not replaced, a folder is refused, without --input torchvision says what it needs
    out.mkdir()
    (out / 'vgg.pth').write_bytes(b'keep')
    before = _tree(tmp_path)
    for args, what in [(['-o', str(out / 'vgg.pth')], 'already exists; pass --overwrite'),
                       (['-o', str(out)], 'is a folder; give the path of a file'),
                       (['-o', str(out / 'new.pth')], '--source torchvision needs --input')]:
        assert main(['--source', 'torchvision', *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and what in err, err
        assert _tree(tmp_path) == before


# --- checkpoints: code, pickle protocols (extracter/utils/checkpoint.py, restricted_unpickle.py) ---------------------


def test_which_calls_run_code():
    from extracter.utils.restricted_unpickle import runs_code

    for name in ('posix.system', 'builtins.eval', 'builtins.exec', 'builtins.getattr', 'subprocess.Popen',
                 'subprocess.check_output', 'importlib.import_module', 'torch.load', 'pathlib.Path.unlink',
                 'mmengine.logging.history_buffer.HistoryBuffer.min', 'webbrowser.open', 'timeit.timeit'):
        assert runs_code(name), name
    for name in ('numpy._core.multiarray.scalar', 'numpy.core.multiarray._reconstruct', 'numpy.dtype',
                 'copyreg._reconstructor', 'collections.defaultdict', 'datetime.datetime', 'torch.device',
                 'pathlib.PosixPath', 'mmengine.config.config.ConfigDict', 'lightning.AttributeDict', 'my.Stage'):
        assert not runs_code(name), name


def test_checkpoint_reading_refuses_code_names_objects_and_reads_protocol_4_quietly(tmp_path):
    from torch import nn

    from extracter.utils.checkpoint import CheckpointError, HostileCheckpointError, load_checkpoint

    weights = {'conv.weight': torch.randn(2, 3, 3, 3)}
    torch.save({'params': weights}, tmp_path / 'p4.pth', pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # torch's "Detected pickle protocol 4" would fail here
        loaded = load_checkpoint(tmp_path / 'p4.pth')
    assert torch.equal(loaded['params']['conv.weight'], weights['conv.weight'])
    # a BasicSR training state (Adam, MultiStepLR: its milestones are a collections.Counter) in protocols 4 and 5
    net = nn.Conv2d(3, 2, 3)
    adam = torch.optim.Adam(net.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(adam, [10, 20])
    state = {'epoch': 1, 'iter': 5, 'optimizers': [adam.state_dict()], 'schedulers': [sched.state_dict()]}
    for protocol in (4, 5):
        torch.save(state, tmp_path / f'state{protocol}.state', pickle_protocol=protocol)
        loaded = load_checkpoint(tmp_path / f'state{protocol}.state')
        assert loaded['schedulers'][0]['milestones'] == sched.state_dict()['milestones']
    marker = tmp_path / 'pwned'
    (tmp_path / 'raw.pth').write_bytes(b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.")  # INST os.system
    with pytest.raises(HostileCheckpointError, match=r'raw.pth: refused: the pickle calls os.system \(a checkpoint '
                                                     r'never needs to run code\); nothing was run'):
        load_checkpoint(tmp_path / 'raw.pth')
    assert not marker.exists()
    torch.save(nn.Linear(2, 2), tmp_path / 'model.pth')  # objects, not code: refused as before, naming the class
    with pytest.raises(CheckpointError, match=r'objects other than tensors \(a pickled model\?\).*'
                                              r'torch.nn.modules.linear.Linear') as caught:
        load_checkpoint(tmp_path / 'model.pth')
    assert not isinstance(caught.value, HostileCheckpointError)
    assert isinstance(load_checkpoint(tmp_path / 'model.pth', placeholders=True), object)  # the converter's reading

