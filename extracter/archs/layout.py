"""Memory layout of activations at inference: one rule for the VGG-19 extractor and the main network."""

import torch


def main_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of the main network's activations for an input like ``x``: channels-last (NHWC) for CPU inference,
    where oneDNN runs the 3x3 convolutions straight on it, about 1.8x faster than on NCHW, which it reorders to a
    blocked layout and back around every convolution (measured with ``benchmarks/benchmark_conv.py``; see
    docs/benchmarks/large_images_notes.md, "Where the time goes at 2048"); NCHW otherwise (training, whose backward
    pass was not measured, and CUDA)."""
    if x.device.type == 'cpu' and not torch.is_grad_enabled():
        return torch.channels_last
    return torch.contiguous_format
