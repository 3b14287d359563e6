"""Build the CPU demo model's training pairs, in CUFED's layout, from real photographs and video frames.

A reference that differs from its target only by a shift teaches a RefSR network to copy blindly, so every pair
here has real differences (the kinds below, drawn with a fixed seed):
- ``overlap`` (still photographs, BSD200 and Yang91): the reference is another crop of the same photograph that only
  partly overlaps the target, at another scale (x0.7 to x1.4), with changed exposure, contrast and gamma, and
  sometimes blurred, sharpened or mirrored.
- ``video`` (MPI Sintel): the reference comes from a neighbouring frame (1 to 4 frames away) near the same place:
  real motion, occlusion and lighting changes.
- ``unrelated``: the reference is a crop of another photograph, so the single-image path keeps learning.
- ``self``: the reference is the target's own bicubic x4 down-up (what the self-reference protocol gives the
  network at test time): a perfect match without any detail, so the network learns not to over-trust a match
  (off by default; the last stage of the demo model uses it).
Vid4, Set5 and Set14 are not used: they are held aside for ``benchmarks/benchmark_quality.py``.

Output: ``OUT/train/input/NNNNN.png`` (HR) and ``OUT/train/ref/NNNNN.png`` (reference, same name), plus
``OUT/pairs.csv`` recording how each pair was made. Use it with ``options/train/demo_cpu.yml`` (stages 1-2) and,
with the options given in ``options/train/demo_cpu_ref.yml``, for stage 3.

Example:
  python scripts/make_demo_trainset.py --shared ../shared/data -o datasets/demo_train --num 4000
"""

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from tqdm import tqdm

from extracter.data import degradations as deg
from extracter.data.image_io import list_images, read_image
from extracter.utils.cli import ArgumentParser, run_main

KINDS = ('overlap', 'video', 'unrelated', 'self')
DEFAULT_MIX = (0.6, 0.25, 0.15, 0.0)


def photometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.25))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
    gamma = rng.uniform(0.85, 1.18)
    arr = np.asarray(img).astype(np.float32) / 255.0
    img = Image.fromarray(np.clip(255.0 * arr ** gamma + 0.5, 0, 255).astype(np.uint8))
    blur = rng.random()
    if blur < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.4, 1.0)))
    elif blur < 0.35:
        img = img.filter(ImageFilter.UnsharpMask(radius=1.5, percent=int(rng.integers(40, 120)), threshold=2))
    return img


def crop(arr: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    return arr[y:y + h, x:x + w]


def random_window(img: np.ndarray, size: int, rng: np.random.Generator):
    """Top-left corner of a uniformly drawn ``size`` x ``size`` window of ``img``."""
    return int(rng.integers(0, img.shape[0] - size + 1)), int(rng.integers(0, img.shape[1] - size + 1))


def pair_overlap(img: np.ndarray, size: int, rng: np.random.Generator, shift=(0.2, 0.7)):
    h, w = img.shape[:2]
    scale = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    src = int(round(size * scale))  # the reference covers src x src source pixels, resampled to size x size
    if min(h, w) < max(size, src) + 8:
        return None
    y, x = random_window(img, size, rng)
    hr = crop(img, y, x, size, size)
    # partial overlap: shift the reference window by shift[0]-shift[1] of the patch (20-70% by default) in a random
    # direction
    for _ in range(20):
        frac = rng.uniform(shift[0], shift[1], size=2) * rng.choice([-1, 1], size=2)
        ry, rx = int(y + frac[0] * size), int(x + frac[1] * size)
        if 0 <= ry <= h - src and 0 <= rx <= w - src:
            break
    else:
        return None
    ref = Image.fromarray(crop(img, ry, rx, src, src)).resize((size, size), Image.BICUBIC)
    ref = photometric(ref, rng)
    if rng.random() < 0.25:
        ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
    return hr, np.asarray(ref), f'scale={scale:.2f};shift=({ry - y},{rx - x})'


def pair_video(frames, size: int, rng: np.random.Generator, max_step: int = 4, max_shift: float = 1 / 3):
    t = int(rng.integers(0, len(frames)))
    step = int(rng.integers(1, max_step + 1)) * int(rng.choice([-1, 1]))
    u = min(max(t + step, 0), len(frames) - 1)
    if u == t:
        u = t + 1 if t + 1 < len(frames) else t - 1
    a, b = frames[t], frames[u]
    h, w = a.shape[:2]
    y, x = random_window(a, size, rng)
    # shifts in [floor(-size * max_shift), floor(size * max_shift)], as (-size // 3, size // 3) for the default;
    # 1e-9: size * (1 / 3) may fall just short of size / 3
    low, high = int(np.floor(-size * max_shift + 1e-9)), int(np.floor(size * max_shift + 1e-9))
    dy, dx = (int(v) for v in rng.integers(low, high + 1, size=2))
    ry, rx = min(max(y + dy, 0), h - size), min(max(x + dx, 0), w - size)
    ref = photometric(Image.fromarray(crop(b, ry, rx, size, size)), rng)
    return crop(a, y, x, size, size), np.asarray(ref), f'frames=({t},{u});shift=({ry - y},{rx - x})'


def pair_unrelated(images, size: int, rng: np.random.Generator):
    i, j = rng.choice(len(images), size=2, replace=False)
    out = []
    for img in (images[i], images[j]):
        out.append(crop(img, *random_window(img, size, rng), size, size))
    return out[0], out[1], f'images=({i},{j})'


def pair_self(img: np.ndarray, size: int, rng: np.random.Generator):
    hr = np.ascontiguousarray(crop(img, *random_window(img, size, rng), size, size))
    return hr, deg.make_lq_up(deg.make_lq(hr)), 'self-reference (bicubic x4 down-up)'


def check_settings(num: int, size: int, seed: int, mix, overlap_shift, video_steps: int, video_shift: float):
    """:func:`build`'s settings, each refused naming its flag (before anything is read or written); the four
    proportions of ``mix``."""
    if size < 16 or size % 16:
        raise ValueError(f'--size must be a positive multiple of 16, got {size}')
    if num < 1:
        raise ValueError(f'--num must be >= 1 (pairs to write), got {num}')
    if seed < 0:
        raise ValueError(f'--seed must be >= 0 (a NumPy seed), got {seed}')
    if len(mix) == len(KINDS) - 1:
        mix = tuple(mix) + (0.0,)  # three proportions: no 'self' pairs
    if len(mix) != len(KINDS) or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError(f'--mix takes 3 or 4 non-negative proportions {KINDS}, got {mix}')
    if not 0 <= overlap_shift[0] <= overlap_shift[1] < 1:
        raise ValueError(f'--overlap-shift must satisfy 0 <= LO <= HI < 1, got {tuple(overlap_shift)}')
    if video_steps < 1 or not 0 <= video_shift < 1:
        raise ValueError(f'--video-steps must be >= 1 and --video-shift in [0, 1), got {video_steps}, {video_shift}')
    return mix


def build(shared: Path, out: Path, num: int, size: int, seed: int, mix=DEFAULT_MIX, overwrite: bool = False,
          overlap_shift=(0.2, 0.7), video_steps: int = 4, video_shift: float = 1 / 3) -> Path:
    """Write ``num`` pairs of ``size`` x ``size`` to ``out`` (atomically). ``overlap_shift``: range of the reference
    window's shift for ``overlap`` pairs, as a fraction of ``size`` per axis; ``video_steps``: the largest frame
    distance for ``video`` pairs; ``video_shift``: their largest window shift, as a fraction of ``size``."""
    mix = check_settings(num, size, seed, mix, overlap_shift, video_steps, video_shift)
    still_dirs = (shared / 'train' / 'bsd200', shared / 'train' / 'yang91')
    stills = [read_image(d / n) for d in still_dirs for n in list_images(d)]
    stills = [s for s in stills if min(s.shape[:2]) >= size + 8]
    frames = [read_image(shared / 'video' / 'sintel' / n) for n in list_images(shared / 'video' / 'sintel')]
    if len(stills) < 2 or len(frames) < 2:
        raise FileNotFoundError(f'too few source images under {shared} (train/bsd200, train/yang91, video/sintel)')
    if out.exists():
        if not overwrite:
            raise FileExistsError(f'{out} already exists; pass --overwrite to replace it')
        shutil.rmtree(out)
    tmp = out.with_name(out.name + '.partial')
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / 'train' / 'input').mkdir(parents=True)
    (tmp / 'train' / 'ref').mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    with tqdm(total=num, desc='pairs', unit='pair') as bar:
        while len(rows) < num:
            kind = KINDS[int(rng.choice(len(KINDS), p=np.asarray(mix) / sum(mix)))]
            if kind == 'overlap':
                made = pair_overlap(stills[int(rng.integers(len(stills)))], size, rng, overlap_shift)
            elif kind == 'video':
                made = pair_video(frames, size, rng, video_steps, video_shift)
            elif kind == 'unrelated':
                made = pair_unrelated(stills, size, rng)
            else:
                made = pair_self(stills[int(rng.integers(len(stills)))], size, rng)
            if made is None:
                continue
            hr, ref, how = made
            name = f'{len(rows):05d}.png'
            Image.fromarray(np.ascontiguousarray(hr)).save(tmp / 'train' / 'input' / name, compress_level=1)
            Image.fromarray(np.ascontiguousarray(ref)).save(tmp / 'train' / 'ref' / name, compress_level=1)
            rows.append((name, kind, how))
            bar.update(1)
    with open(tmp / 'pairs.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['name', 'kind', 'how'])
        writer.writerows(rows)
    os.replace(tmp, out)  # the folder appears complete or not at all
    return out


def run(argv) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shared', default='../shared/data', help='the real-data folder (see its README)')
    parser.add_argument('-o', '--output', default='datasets/demo_train')
    parser.add_argument('--num', type=int, default=4000, help='number of pairs')
    parser.add_argument('--size', type=int, default=96, help='HR and reference patch side (multiple of 16)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--mix', type=float, nargs='+', default=DEFAULT_MIX, metavar='P',
                        help=f'proportions of the pair kinds {KINDS} (3 or 4 numbers; default {DEFAULT_MIX})')
    parser.add_argument('--overlap-shift', type=float, nargs=2, default=(0.2, 0.7), metavar=('LO', 'HI'),
                        help='overlap pairs: shift of the reference window per axis, as a fraction of --size')
    parser.add_argument('--video-steps', type=int, default=4, help='video pairs: largest frame distance')
    parser.add_argument('--video-shift', type=float, default=1 / 3,
                        help='video pairs: largest window shift, as a fraction of --size')
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    out = build(Path(args.shared), Path(args.output), args.num, args.size, args.seed, args.mix, args.overwrite,
                tuple(args.overlap_shift), args.video_steps, args.video_shift)
    print(f'wrote {args.num} pairs to {out}')
    return 0


def main(argv=None) -> int:
    return run_main(run, argv)


if __name__ == '__main__':
    sys.exit(main())
