"""Video sequences as a real-reference benchmark: target frame t, reference frame t + k.

For each offset k of ``offsets`` (default 1, 2, 4, 8, 16) the reference is frame t + k, or t - k where t + k is past
the end; larger k means less similar content, a ladder like CUFED5's five reference levels but with real camera
and scene motion. HR and Ref are cropped to ``crop_multiple`` and degraded as for CUFED5 (PIL bicubic).

``dataroot`` is one folder of frames (sorted by name) or a folder of sequence folders. Each sample also carries
``ref_offset`` (the signed offset actually used) and a ``lq_path`` that names the sample uniquely,
``<sequence folder>/<sequence>_<frame>_k<k>.png`` (not an existing file: the LR is made from the HR), so that saved
results of different sequences and offsets do not overwrite each other.
"""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch.utils.data import Dataset

from extracter.data import degradations as deg
from extracter.data.image_io import is_image_file, list_images, read_image
from extracter.data.options import REQUIRED, merge_options, positive_multiple_of_4, require_disk_backend
from extracter.registry import DATASET_REGISTRY


def find_sequences(root: str) -> List[Tuple[str, List[str]]]:
    """(sequence folder, sorted frame names): ``root`` itself when it holds images, else its sub-folders with images."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'{root}: no such folder')
    if any(is_image_file(n) for n in os.listdir(root)):
        return [(root, list_images(root))]
    seqs = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isdir(folder) and any(is_image_file(n) for n in os.listdir(folder)):
            seqs.append((folder, list_images(folder)))
    if not seqs:
        raise FileNotFoundError(f'{root}: no frames (neither images nor sub-folders with images)')
    return seqs


@DATASET_REGISTRY.register()
class VideoRefDataset(Dataset):
    """Target/reference frame pairs at several temporal offsets.

    Options:
        dataroot: frames folder, or a folder of sequence folders.
        offsets: list of k >= 1 (default [1, 2, 4, 8, 16]).
        target_stride: use every n-th frame as a target (default 1: all frames).
        stride: search stride (default 1); crop_multiple: default 4 * stride.
    """

    DEFAULTS: Dict[str, Any] = {'dataroot': REQUIRED, 'offsets': (1, 2, 4, 8, 16), 'target_stride': 1, 'stride': 1,
                                'crop_multiple': None, 'io_backend': None}

    def __init__(self, opt: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        self.opt = merge_options(type(self).__name__, self.DEFAULTS, opt, kwargs)
        o = self.opt
        require_disk_backend(type(self).__name__, o['io_backend'], 'frame folders')
        offsets: Sequence[int] = [o['offsets']] if isinstance(o['offsets'], int) else list(o['offsets'])
        if not offsets or any(int(k) < 1 for k in offsets):
            raise ValueError(f'offsets must be a non-empty list of integers >= 1, got {o["offsets"]!r}')
        self.offsets = [int(k) for k in offsets]
        step = int(o['target_stride'])
        if step < 1:
            raise ValueError(f'target_stride must be >= 1, got {step}')
        stride = int(o['stride'])
        self.crop_multiple = positive_multiple_of_4(
            o['crop_multiple'] if o['crop_multiple'] is not None else 4 * stride, 'crop_multiple')
        self.samples: List[Tuple[str, str, str, int]] = []  # (folder, target name, ref name, signed offset)
        for folder, frames in find_sequences(os.fspath(o['dataroot'])):
            n = len(frames)
            for k in self.offsets:
                if k >= n:
                    raise ValueError(f'{folder}: offset {k} needs more than {n} frames')
                for t in range(0, n, step):
                    d = k if t + k < n else -k
                    if 0 <= t + d < n:
                        self.samples.append((folder, frames[t], frames[t + d], d))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        folder, target, ref_name, d = self.samples[index]
        gt_path, ref_path = os.path.join(folder, target), os.path.join(folder, ref_name)
        gt = deg.crop_to_multiple(read_image(gt_path), self.crop_multiple, gt_path)
        ref = deg.crop_to_multiple(read_image(ref_path), self.crop_multiple, ref_path)
        sample: Dict[str, Any] = {k: deg.to_tensor(v) for k, v in deg.degrade(gt, ref).items()}
        seq = os.path.basename(os.path.normpath(folder))
        name = f'{seq}_{os.path.splitext(target)[0]}_k{abs(d)}.png'
        sample.update(lq_path=os.path.join(folder, name), gt_path=gt_path, ref_path=ref_path, ref_offset=d)
        return sample
