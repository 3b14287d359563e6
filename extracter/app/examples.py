"""The page's clickable examples, made at its first start into its own folder from what installs by name (never
downloaded): scikit-image's Middlebury motorcycle stereo pair (``skimage.data.stereo_motorcycle``, bundled with the
package). The left view downscaled x4 (PIL bicubic, as the training data's LR) is the photo to enlarge, the right
view (another shot of the same scene) the reference; a small crop of the pair is the quick example.
"""

import logging
from pathlib import Path
from typing import List, Tuple

import numpy as np

from extracter.data import degradations as deg
from extracter.utils.visualize import save_png

LOG = logging.getLogger('extracter.app')

QUICK_CROP = 160  # HR pixels of the quick example's centred crop (LR 40 x 40)


def _examples() -> List[Tuple[str, str, np.ndarray, np.ndarray]]:
    """(LR name, reference name, LR, reference) of each example."""
    from skimage.data import stereo_motorcycle

    left, right, _ = stereo_motorcycle()
    h, w = (s - s % deg.SCALE for s in left.shape[:2])
    top, lft = (left.shape[0] - QUICK_CROP) // 2, (left.shape[1] - QUICK_CROP) // 2
    crop = np.ascontiguousarray(left[top:top + QUICK_CROP, lft:lft + QUICK_CROP])
    half = deg.pil_bicubic(right, (right.shape[1] // 2, right.shape[0] // 2))
    return [('motorcycle_crop_lr.png', 'motorcycle_right_half.png', deg.make_lq(crop), half),
            ('motorcycle_left_lr.png', 'motorcycle_right.png', deg.make_lq(np.ascontiguousarray(left[:h, :w])),
             np.ascontiguousarray(right))]


def make_examples(folder: Path) -> List[List]:
    """The examples as the page's ``gr.Examples`` rows (``[LR path, [reference path]]``), written into ``folder``
    once (atomically; files already there are kept); [] when scikit-image is not installed."""
    folder = Path(folder)
    try:
        examples = _examples()
    except ImportError as err:
        LOG.info('no examples on the page: %s', err)
        return []
    rows = []
    for lr_name, ref_name, lr, ref in examples:
        lr_path, ref_path = folder / lr_name, folder / ref_name
        for path, img in ((lr_path, lr), (ref_path, ref)):
            if not path.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                save_png(img, path)
        rows.append([str(lr_path), [str(ref_path)]])
    return rows
