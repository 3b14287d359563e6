"""The committed CPU-trained TTSR demo model (the EXTRACTER demo's data, stages and iterations; options/train/
ttsr_demo_cpu*.yml): it loads strictly through the normal loader and beats bicubic on a real pair, the Middlebury
motorcycle stereo pair of scikit-image (left view the target, right view the reference), as the demo
(extracter/tools/demo.py) runs it."""

from pathlib import Path

import numpy as np
import pytest

from extracter.data import degradations as deg
from extracter.data.inference_dataset import inference_sample
from extracter.inference.folder import batch_of_one, super_resolve
from extracter.inference.network import load_network
from extracter.tools.measure import metrics

WEIGHTS = Path(__file__).resolve().parents[1] / 'pretrained' / 'ttsr_demo_cpu' / 'ttsr_demo_cpu.pth'


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f'TTSR demo checkpoint {WEIGHTS} not present (trained with '
                                                  'options/train/ttsr_demo_cpu*.yml, see README)')
def test_ttsr_demo_model_loads_and_beats_bicubic_on_the_motorcycle_pair():
    from skimage.data import stereo_motorcycle

    net = load_network(str(WEIGHTS))
    assert type(net).__name__ == 'TTSR'
    left, right, _ = stereo_motorcycle()
    c = 320  # the demo's crop
    top, lft = (left.shape[0] - c) // 2, (left.shape[1] - c) // 2
    hr = np.ascontiguousarray(left[top:top + c, lft:lft + c])
    lq = deg.make_lq(hr)
    sample = batch_of_one(inference_sample(lq, [right], *net.size_multiples()))
    result = super_resolve(net, sample, 'cpu', {'max_memory': '4G'})
    psnr_sr, _ = metrics(result['sr'], hr)
    psnr_bicubic, _ = metrics(result['bicubic'], hr)
    assert psnr_sr > psnr_bicubic + 0.2, (psnr_sr, psnr_bicubic)
