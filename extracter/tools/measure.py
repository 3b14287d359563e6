"""Measurements shared by the demo, the developer benchmarks (``benchmarks/``) and the tests.

- :func:`metrics`: PSNR / SSIM on Y with a 4-pixel border (BasicSR's), as ``make demo`` and ``test.py`` report them;
- :func:`conv_flops`: FLOPs of one convolution call, as PyTorch's ``FlopCounterMode`` counts them.
"""

import numpy as np
import torch
from torch import nn


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
