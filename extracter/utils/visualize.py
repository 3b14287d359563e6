"""Pictures people look at: labelled side-by-side comparisons and where the transferred textures came from."""

import struct
import zlib
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from extracter.utils.file_io import atomic_write

Panel = Tuple[str, np.ndarray]


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3,H,W] or [1,3,H,W] in [0, 1] -> uint8 HxWx3 (rounded, as BasicSR's tensor2img)."""
    if x.dim() == 4:
        x = x[0]
    return (x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)


def save_png(img: np.ndarray, path, compress_level: int = 1) -> None:
    """Write ``img`` (uint8 H x W x 3) as a PNG, atomically. zlib level 1 (PIL's default is 6): on 1024 x 768 photos
    about 3x faster to encode for files about 8% larger; the pixels are the same (PNG is lossless)."""
    atomic_write(path, png_writer(lambda: img, compress_level))


def png_writer(make: Callable[[], np.ndarray], compress_level: int = 1) -> Callable[[str], None]:
    """A ``write(path)`` for :func:`~extracter.utils.file_io.atomic_write_all`: ``make()`` (the picture, made only
    when it is written, so that pictures are not all held at once) saved as :func:`save_png` does."""
    return lambda tmp: Image.fromarray(make()).save(tmp, format='PNG', compress_level=compress_level)


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_BLOCK = 1 << 20


class _PngCheck:
    """The running state of :func:`png_problem`: the image data inflated block by block, their bytes counted."""

    def __init__(self) -> None:
        self.inflate = zlib.decompressobj()
        self.size = 0
        self.expected: Optional[int] = None

    def header(self, data: bytes) -> None:
        if len(data) != 13:
            raise zlib.error(f'its header chunk (IHDR) has {len(data)} bytes, not 13')
        width, height, depth, colour, _, _, interlace = struct.unpack('>IIBBBBB', data)
        if not interlace and colour in _PNG_CHANNELS:
            self.expected = height * (1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8)

    def feed(self, data: bytes) -> None:
        self.size += len(self.inflate.decompress(data, _BLOCK))
        while self.inflate.unconsumed_tail:
            self.size += len(self.inflate.decompress(self.inflate.unconsumed_tail, _BLOCK))

    def end(self) -> Optional[str]:
        if not self.inflate.eof:
            return 'its image data end early (truncated)'
        if self.expected is not None and self.size != self.expected:
            return f'its image data are {self.size} bytes, not the {self.expected} its size needs'
        return None


def _png_chunk(f, check: _PngCheck) -> Tuple[Optional[bytes], Optional[str]]:
    """Read one chunk (checking its CRC, feeding image data to ``check``): (its type, None) or (None, the problem)."""
    head = f.read(8)
    if len(head) < 8:
        return None, 'truncated (it ends before the end chunk)'
    length, kind = struct.unpack('>I4s', head)
    crc = zlib.crc32(kind)
    data = b''
    while length:
        piece = f.read(min(length, _BLOCK))
        if not piece:
            return None, f'truncated (inside a {kind.decode("latin-1")} chunk)'
        crc = zlib.crc32(piece, crc)
        length -= len(piece)
        if kind == b'IDAT':
            check.feed(piece)
        elif kind == b'IHDR':
            data += piece
    tail = f.read(4)
    if len(tail) < 4 or struct.unpack('>I', tail)[0] != crc:
        return None, f'corrupt or truncated (a {kind.decode("latin-1")} chunk fails its checksum)'
    if kind == b'IHDR':
        check.header(data)
    return kind, None


def png_problem(path) -> Optional[str]:
    """None if ``path`` is a whole PNG: the signature, every chunk complete with its checksum, the image data one
    complete zlib stream of the size the header implies, and the end chunk; else what is wrong, in words. Reads the
    file once and inflates the image data block by block without keeping them (no pixel limit, little memory): a
    file cut short by a kill or a full disk, or damaged since, is found."""
    try:
        with open(path, 'rb') as f:
            if f.read(8) != PNG_SIGNATURE:
                return 'not a PNG file'
            check = _PngCheck()
            kind = None
            while kind != b'IEND':
                kind, problem = _png_chunk(f, check)
                if problem:
                    return problem
            return check.end()
    except zlib.error as err:
        return f'its image data are corrupt ({err})'
    except OSError as err:
        return f'cannot be read ({err.strerror or err})'


def _fit_height(img: np.ndarray, height: int) -> np.ndarray:
    if img.shape[0] == height:
        return img
    width = max(1, round(img.shape[1] * height / img.shape[0]))
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC))


def side_by_side(panels: Sequence[Panel], height: int = None, gap: int = 6, label_h: int = 16) -> np.ndarray:
    """Panels scaled to one height, separated by white gaps, each with its label above."""
    height = height or max(p.shape[0] for _, p in panels)
    scaled = [(label, _fit_height(p, height)) for label, p in panels]
    width = sum(p.shape[1] for _, p in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new('RGB', (width, height + label_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, p in scaled:
        canvas.paste(Image.fromarray(p), (x, label_h))
        draw.text((x + 2, 2), label, fill=(0, 0, 0))
        x += p.shape[1] + gap
    return np.asarray(canvas)


def coordinate_colours(h: int, w: int) -> np.ndarray:
    """A 2-D colour code of positions: red grows to the right, green downwards, blue on the anti-diagonal."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing='ij')
    rgb = np.stack([xx, yy, 1 - (xx + yy) / 2], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def heatmap(values: np.ndarray, vmin: float = None, vmax: float = None) -> np.ndarray:
    from matplotlib import colormaps

    vmin = float(values.min()) if vmin is None else vmin
    vmax = float(values.max()) if vmax is None else vmax
    norm = (values - vmin) / max(vmax - vmin, 1e-8)
    return (colormaps['viridis'](np.clip(norm, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def texture_source_panels(scores: torch.Tensor, ref_id: torch.Tensor, index: torch.Tensor,
                          lr_grid: Tuple[int, int], ref_grids: Sequence[Tuple[int, int]],
                          refs: Sequence[np.ndarray], out_hw: Tuple[int, int]) -> List[Panel]:
    """Panels for the top-1 match: the relevance map, the source position map (each output region coloured by the
    position of the reference patch it copied, in the colour code of the reference panels), and the references
    overlaid with that colour code. ``scores``/``ref_id``/``index``: [L] for one image, rank 0."""
    gh, gw = lr_grid
    score_values = scores.reshape(gh, gw).cpu().numpy()
    lo, hi = float(score_values.min()), float(score_values.max())
    score_map = heatmap(score_values, lo, hi)
    src = np.zeros((gh * gw, 3), np.uint8)
    ids, idx = ref_id.cpu().numpy(), index.cpu().numpy()
    codes = [coordinate_colours(*g).reshape(-1, 3) for g in ref_grids]
    for r, code in enumerate(codes):
        sel = ids == r
        src[sel] = code[idx[sel]]
    src_map = src.reshape(gh, gw, 3)
    up = (out_hw[1], out_hw[0])
    panels = [(f'relevance of the top-1 match ({lo:.2f} dark .. {hi:.2f} bright)',
               np.asarray(Image.fromarray(score_map).resize(up, Image.NEAREST))),
              ('source position of the copied texture', np.asarray(Image.fromarray(src_map).resize(up, Image.NEAREST)))]
    for r, (ref, grid) in enumerate(zip(refs, ref_grids)):
        code = np.asarray(Image.fromarray(coordinate_colours(*grid)).resize((ref.shape[1], ref.shape[0]),
                                                                            Image.NEAREST))
        used = np.zeros(grid[0] * grid[1], bool)
        used[idx[ids == r]] = True
        used = np.asarray(Image.fromarray(used.reshape(grid).astype(np.uint8) * 255).resize(
            (ref.shape[1], ref.shape[0]), Image.NEAREST)) > 0
        overlay = (0.45 * ref + 0.55 * code).astype(np.uint8)
        overlay[~used] = (0.35 * ref[~used]).astype(np.uint8)  # regions never copied from are dimmed
        panels.append((f'reference {r + 1}: colour code (dim = unused)', overlay))
    return panels
