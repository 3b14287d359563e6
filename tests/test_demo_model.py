"""The committed CPU demo model: it loads strictly, beats bicubic on a real pair, and the reference is what makes
the difference (it beats the same model given the self-reference). A small, fast check."""

from pathlib import Path

import numpy as np
import pytest

from extracter.data import degradations as deg
from extracter.data.image_io import read_image
from extracter.data.inference_dataset import inference_sample
from extracter.inference.folder import batch_of_one, super_resolve
from extracter.inference.network import load_network
from extracter.tools.measure import metrics

WEIGHTS = Path(__file__).resolve().parents[1] / 'pretrained' / 'demo_cpu' / 'extracter_demo_cpu.pth'


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f'demo checkpoint {WEIGHTS} not present')
def test_demo_model_beats_bicubic_and_uses_the_reference(shared_data):
    net = load_network(str(WEIGHTS))
    frames = shared_data / 'video' / 'vid4-calendar'
    hr_full, ref_full = read_image(frames / 'frame_010.png'), read_image(frames / 'frame_011.png')
    hr = np.ascontiguousarray(hr_full[200:328, 300:428])  # 128 x 128 target
    ref = np.ascontiguousarray(ref_full[184:344, 284:444])  # the same region of the next frame, with a margin
    lq = deg.make_lq(hr)
    multiples = net.size_multiples()
    result = super_resolve(net, batch_of_one(inference_sample(lq, [ref], *multiples)), 'cpu', {})
    self_ref = super_resolve(net, batch_of_one(inference_sample(lq, [deg.make_lq_up(lq)], *multiples)), 'cpu', {})
    psnr_sr, _ = metrics(result['sr'], hr)
    psnr_self, _ = metrics(self_ref['sr'], hr)
    psnr_bicubic, _ = metrics(result['bicubic'], hr)
    # measured when committed: 23.38 dB with the next frame, 21.77 with the self-reference, 21.42 bicubic
    assert psnr_sr > psnr_bicubic + 1.0, (psnr_sr, psnr_bicubic)
    assert psnr_sr > psnr_self + 0.5, (psnr_sr, psnr_self)
    assert psnr_self > psnr_bicubic, (psnr_self, psnr_bicubic)
