"""Measurements shared by the demo, the developer benchmarks (``benchmarks/``) and the tests.

- :func:`metrics`: PSNR / SSIM on Y with a 4-pixel border (BasicSR's), as ``make demo`` and ``test.py`` report them;
- :func:`conv_flops`: FLOPs of one convolution call, as PyTorch's ``FlopCounterMode`` counts them;
- :func:`load_inputs`: the benchmarks' real input pair (DCSR CameraFusion wide/tele centre crops from
  ``../shared/data``, seeded noise where that folder is absent) at a given output size.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
DCSR_PAIR = ROOT.parent / 'shared' / 'data' / 'refsr-pairs' / 'dcsr-camerafusion'


def metrics(img: np.ndarray, gt: np.ndarray) -> tuple:
    """(PSNR, SSIM) of an RGB uint8 image against its HR, on Y with a 4-pixel border (BasicSR)."""
    from extracter.registry import use_basicsr

    use_basicsr()  # basicsr importable (the compat shim)
    from basicsr.metrics import calculate_psnr, calculate_ssim

    bgr = [np.ascontiguousarray(a[..., ::-1]) for a in (img, gt)]
    return (calculate_psnr(*bgr, crop_border=4, test_y_channel=True),
            calculate_ssim(*bgr, crop_border=4, test_y_channel=True))


def conv_flops(conv: nn.Conv2d, out: torch.Tensor) -> int:
    """FLOPs of one convolution (a multiply and an add per weight and output pixel): 2 Cin/groups Cout kh kw H W."""
    kh, kw = conv.kernel_size
    return 2 * conv.in_channels // conv.groups * conv.out_channels * kh * kw * out.shape[0] * out.shape[-2] * \
        out.shape[-1]


def load_inputs(size: int, seed: int, folder: Path = DCSR_PAIR):
    """LR (size/4) and reference (size) in [0, 1], [1, 3, h, w], and where they come from: centre crops of the wide
    (HR, downscaled) and telephoto (reference) views of ``folder`` when present, else seeded noise."""
    from PIL import Image, ImageOps

    if (folder / 'wide.jpg').is_file() and (folder / 'tele.jpg').is_file():
        def crop(name):
            img = ImageOps.exif_transpose(Image.open(folder / name)).convert('RGB')
            w, h = img.size
            side = min(w, h, 3 * size)  # a centre crop, scaled to the wanted size
            box = ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)
            return img.crop(box).resize((size, size), Image.BICUBIC)

        def to_t(im):
            return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255

        hr, ref = crop('wide.jpg'), crop('tele.jpg')
        lr = hr.resize((size // 4, size // 4), Image.BICUBIC)
        return to_t(lr), to_t(ref), 'dcsr-camerafusion wide/tele centre crops'
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size // 4, size // 4, generator=g), torch.rand(1, 3, size, size, generator=g), 'noise'
