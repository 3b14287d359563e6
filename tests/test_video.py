"""Video clips through infer.py (extracter/inference/video.py): a short clip in and out (frame count, 4x size, frame
rate, lossless frames), references encoded once for the clip, --frames, --skip-existing resuming at frame level,
--overwrite, DRCT frame by frame, and every bad input in one line with nothing written. Skipped without PyAV."""

import os
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from extracter.infer import main, run
from extracter.inference.video import probe_video, read_frames
from tests.data_helpers import SHARED_DATA
from tests.test_drct_infer import DRCT_OPT, build
from tests.test_engine import NET_OPT, tiny_net

av = pytest.importorskip('av', reason='PyAV is not installed (the optional extra: pip install "extracter[video]")')

RATE = Fraction(24000, 1001)
LR_HW = (40, 48)  # the clip's frames (h, w)


def _frames(n: int = 6):
    """n consecutive Vid4 calendar frames downscaled to LR_HW, or seeded noise where ../shared/data is absent."""
    folder = SHARED_DATA / 'video' / 'vid4-calendar'
    if folder.is_dir():
        return [np.asarray(Image.open(folder / f'frame_{i:03d}.png').convert('RGB').resize(LR_HW[::-1], Image.BICUBIC))
                for i in range(1, n + 1)]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, LR_HW + (3,), dtype=np.uint8) for _ in range(n)]


def write_clip(path: Path, frames, fmt: str = 'mp4', codec: str = 'mpeg4', rate=RATE) -> Path:
    with av.open(str(path), 'w', format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, options={'qscale': '2'} if codec == 'mpeg4' else {})
        stream.width, stream.height, stream.pix_fmt = LR_HW[1], LR_HW[0], 'yuv420p'
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format='rgb24')):
                out.mux(packet)
        if not frames:
            out.start_encoding()
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('video')
    frames = _frames()
    clip = write_clip(folder / 'clip.mp4', frames)
    still = folder / 'still.png'  # a still of the scene (here: a frame upscaled x2, small to keep the test fast)
    Image.fromarray(frames[3]).resize((2 * LR_HW[1], 2 * LR_HW[0]), Image.BICUBIC).save(still)
    net = tiny_net()
    torch.save({'params': net.state_dict()}, folder / 'tiny.pth')
    (folder / 'tiny.yml').write_text(yaml.safe_dump({'network_g': {'type': 'Extracter', **NET_OPT}}))
    return {'clip': clip, 'still': still, 'weights': folder / 'tiny.pth', 'folder': folder}


def _args(inputs, out, *extra):
    return ['--weights', str(inputs['weights']), '--lr', str(inputs['clip']), '--ref', str(inputs['still']),
            '-o', str(out), *extra]


def test_a_clip_in_and_out(inputs, tmp_path, capsys, one_thread):
    out = tmp_path / 'out'
    assert main(_args(inputs, out, '--frames')) == 0
    printed = capsys.readouterr().out
    assert 'keys 5 reused / 1 encoded' in printed  # the reference encoded once for the clip
    info = probe_video(out / 'clip_sr.mkv')
    assert (info.frames, info.width, info.height, info.rate) == (6, 4 * LR_HW[1], 4 * LR_HW[0], RATE)
    assert info.codec == 'ffv1'
    pngs = sorted((out / 'clip_sr_frames').glob('*.png'))  # beside them: .run.json, what they were made from
    assert [p.name for p in pngs] == [f'frame_{i:06d}.png' for i in range(1, 7)]
    decoded = list(read_frames(out / 'clip_sr.mkv'))
    for png, frame in zip(pngs, decoded):  # lossless: the video holds the PNG frames bit for bit
        assert np.array_equal(np.asarray(Image.open(png).convert('RGB')), frame)
    # without --frames the work folder goes once the video is written; h264 (where this PyAV has libx264)
    out2 = tmp_path / 'out2'
    codec = 'h264' if _has_encoder('libx264') else 'ffv1'
    run(_args(inputs, out2, '--video-codec', codec))
    name = 'clip_sr.mp4' if codec == 'h264' else 'clip_sr.mkv'
    assert sorted(p.name for p in out2.iterdir()) == [name]
    assert probe_video(out2 / name).frames == 6 and probe_video(out2 / name).rate == RATE


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, 'w')
        return True
    except Exception:  # noqa: BLE001  any failure: not there
        return False


def test_skip_existing_resumes_at_frame_level(inputs, tmp_path, one_thread):
    out = tmp_path / 'out'
    run(_args(inputs, out, '--frames'))
    frames = out / 'clip_sr_frames'
    before = {p.name: p.stat().st_mtime_ns for p in frames.iterdir()}
    # "interrupted": the video not written yet, frame 4 not done
    (out / 'clip_sr.mkv').unlink()
    (frames / 'frame_000004.png').unlink()
    with pytest.raises(FileExistsError, match='--skip-existing to resume'):
        run(_args(inputs, out, '--frames'))
    run(_args(inputs, out, '--frames', '--skip-existing'))
    after = {p.name: p.stat().st_mtime_ns for p in frames.iterdir()}
    assert sorted(after) == sorted(before)
    assert [n for n in after if after[n] != before.get(n)] == ['frame_000004.png']  # only the missing one made
    assert probe_video(out / 'clip_sr.mkv').frames == 6
    # a finished clip: an existing video is kept, skipped with --skip-existing, replaced only with --overwrite
    video_mtime = (out / 'clip_sr.mkv').stat().st_mtime_ns
    with pytest.raises(FileExistsError, match='--overwrite'):
        run(_args(inputs, out))
    assert run(_args(inputs, out, '--skip-existing')) == [{'video': None}]
    assert (out / 'clip_sr.mkv').stat().st_mtime_ns == video_mtime
    run(_args(inputs, out, '--overwrite'))
    assert (out / 'clip_sr.mkv').stat().st_mtime_ns != video_mtime and not frames.exists()


def test_each_frame_is_what_infer_py_makes_of_it_as_a_picture(inputs, tmp_path, one_thread):
    """The clip's own sampling (multiples, padding) is the image path's: a decoded frame saved as a PNG and given
    to infer.py gives that frame's SR bit for bit, with one and with two references."""
    frames = list(read_frames(inputs['clip']))
    Image.fromarray(frames[2]).save(tmp_path / 'f3.png')
    other = tmp_path / 'other.png'  # a second, larger reference: another padding
    Image.fromarray(frames[0]).resize((3 * LR_HW[1] + 5, 3 * LR_HW[0] + 3), Image.BICUBIC).save(other)
    for refs in ([inputs['still']], [inputs['still'], other]):
        ref_args = [a for r in refs for a in ('--ref', str(r))]
        clip_out, image_out = tmp_path / f'clip{len(refs)}', tmp_path / f'image{len(refs)}'
        run(['--weights', str(inputs['weights']), '--lr', str(inputs['clip']), *ref_args, '-o', str(clip_out),
             '--frames'])
        run(['--weights', str(inputs['weights']), '--lr', str(tmp_path / 'f3.png'), *ref_args, '-o', str(image_out)])
        assert np.array_equal(np.asarray(Image.open(clip_out / 'clip_sr_frames' / 'frame_000003.png')),
                              np.asarray(Image.open(image_out / 'f3_sr.png'))), refs


def test_a_resume_never_mixes_in_frames_made_otherwise(inputs, tmp_path, one_thread):
    """--skip-existing resumes only frames made from this clip with these settings: another reference, another clip
    of the same name or a work folder of unknown origin is refused (one line, nothing touched); a lower
    --max-memory resumes; frames of an earlier, longer clip are not kept with the new ones."""
    out = tmp_path / 'out'
    run(_args(inputs, out, '--frames'))
    frames = out / 'clip_sr_frames'
    (out / 'clip_sr.mkv').unlink()  # "interrupted" before frame 4 and the video
    (frames / 'frame_000004.png').unlink()
    before = {p.name: p.stat().st_mtime_ns for p in frames.iterdir()}
    other_still = tmp_path / 'other_still.png'
    Image.fromarray(_frames()[0]).resize((2 * LR_HW[1], 2 * LR_HW[0]), Image.BICUBIC).save(other_still)
    other_clip = write_clip(tmp_path / 'clip.mp4', _frames()[::-1])  # another clip, the same name
    ours = ['--weights', str(inputs['weights']), '-o', str(out), '--frames', '--skip-existing']
    cases = [(['--lr', str(inputs['clip']), '--ref', str(other_still)], 'made with another depends_on'),
             (['--lr', str(other_clip), '--ref', str(inputs['still'])], 'made with another clip'),
             (['--lr', str(inputs['clip']), '--ref', str(inputs['still']), '--search', 'approximate'],
              'made with another search')]
    for argv, expected in cases:
        with pytest.raises(FileExistsError, match=expected):
            run(ours + argv)
    assert {p.name: p.stat().st_mtime_ns for p in frames.iterdir()} == before  # nothing touched
    (frames / 'frame_000007.png').write_bytes((frames / 'frame_000001.png').read_bytes())  # a longer clip's
    run(_args(inputs, out, '--frames', '--skip-existing', '--max-memory', '300M'))  # memory only: resumed
    after = {p.name: p.stat().st_mtime_ns for p in frames.iterdir()}
    assert [n for n in after if after[n] != before.get(n)] == ['frame_000004.png']
    assert sorted(after) == sorted([*before, 'frame_000004.png'])  # and frame 7 is gone
    assert probe_video(out / 'clip_sr.mkv').frames == 6
    (out / 'clip_sr.mkv').unlink()
    (frames / '.run.json').unlink()  # frames of unknown origin
    with pytest.raises(FileExistsError, match='no record of what they were made from'):
        run(_args(inputs, out, '--frames', '--skip-existing'))
    run(_args(inputs, out, '--ref', str(other_still), '--overwrite'))  # all made again, with the other reference
    assert not frames.exists() and probe_video(out / 'clip_sr.mkv').frames == 6


def test_drct_runs_frame_by_frame(inputs, tmp_path, one_thread):
    torch.save({'params': build(DRCT_OPT).state_dict()}, tmp_path / 'drct.pth')
    out = tmp_path / 'out'
    run(['--weights', str(tmp_path / 'drct.pth'), '--lr', str(inputs['clip']), '-o', str(out)])
    info = probe_video(out / 'clip_sr.mkv')
    assert (info.frames, info.width, info.height, info.rate) == (6, 4 * LR_HW[1], 4 * LR_HW[0], RATE)


def _bad_inputs(folder: Path):
    """(name, file, the message expected) of every bad clip."""
    empty = write_clip(folder / 'empty.avi', [], fmt='avi')
    mkv = write_clip(folder / 'x.mkv', _frames(2), fmt='matroska')
    data = mkv.read_bytes()
    assert data.count(b'V_MPEG4/ISO/ASP') == 1
    unknown = folder / 'unknown_codec.mkv'  # a codec id no decoder knows
    unknown.write_bytes(data.replace(b'V_MPEG4/ISO/ASP', b'V_QWERT/ISO/ASP'))
    text = folder / 'notes.mp4'
    text.write_text('not a video\n')
    import wave

    audio = folder / 'sound.mkv'  # a WAV file: audio only
    with wave.open(str(audio), 'wb') as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b'\0' * 1600)
    return [('no frames', empty, 'has no frames'),
            ('unknown codec', unknown, 'cannot be decoded by this PyAV build'),
            ('not a video', text, 'not a video PyAV can read'),
            ('no video stream', audio, 'no video stream')]


def test_bad_clips_are_one_line_and_write_nothing(inputs, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    for name, clip, expected in _bad_inputs(folder):
        out = tmp_path / f'out_{name.replace(" ", "_")}'
        status = main(['--weights', str(inputs['weights']), '--lr', str(clip), '--ref', str(inputs['still']),
                       '-o', str(out)])
        err = capsys.readouterr().err.strip()
        assert status == 2, (name, err)
        assert err.count('\n') == 0 and err.startswith('error: ') and str(clip) in err and expected in err, (name, err)
        assert not out.exists() or not any(out.iterdir()), name
    assert sorted(p.name for p in folder.iterdir()) == ['empty.avi', 'notes.mp4', 'sound.mkv', 'unknown_codec.mkv',
                                                         'x.mkv']


def test_usage_errors_of_a_clip(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'out'
    cases = [
        (['--weights', str(inputs['weights']), '--lr', str(inputs['clip']), '-o', str(out)],
         'give a reference with --ref'),
        (_args(inputs, out, '--texture-map'), '--texture-map do not apply'),
        (['--weights', str(inputs['weights']), '--lr', str(inputs['still']), '--ref', str(inputs['still']),
          '-o', str(out), '--frames'], '--frames and --video-codec are for a video'),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count('\n') == 0 and expected in err, err
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.setitem(sys.modules, 'av', None)  # PyAV absent: the import fails
    assert main(_args(inputs, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and "pip install 'extracter[video]'" in err and str(inputs['clip']) in err, err
    assert not out.exists() or not any(out.iterdir())
    assert os.listdir(inputs['folder']) and sorted(os.listdir(inputs['folder'])) == [
        'clip.mp4', 'still.png', 'tiny.pth', 'tiny.yml']
