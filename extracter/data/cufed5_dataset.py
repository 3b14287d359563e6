"""CUFED5 test set: ``NNN_0.png`` (HR) with references ``NNN_1.png`` .. ``NNN_5.png`` of decreasing similarity.

As the original test sets (TTSR; EXTRACTER with ``filled = 4 * stride``): HR and Ref are cropped at the top-left to
a multiple of ``crop_multiple`` (default 4 x ``stride``), then LR = bicubic(HR, /4), lq_up = bicubic(LR, x4) and
ref_downup = bicubic(bicubic(Ref, /4), x4), all with PIL. No augmentation.
"""

import re
from typing import Any, Dict, List, Mapping, Optional

from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils.data import Dataset

from extracter.data import degradations as deg
from extracter.data.options import REQUIRED, merge_options, positive_multiple_of_4
from extracter.data.sources import open_source

_HR_KEY = re.compile(r'^(.+)_0$')


@DATASET_REGISTRY.register()
class CUFED5Dataset(Dataset):
    """CUFED5 from its folder or from an LMDB of it (keys ``NNN_0`` .. ``NNN_5``).

    Options:
        dataroot: the CUFED5 folder (or ``.lmdb``).
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb}``.
        ref_level: 1 (most similar) .. 5 (least similar).
        stride: search stride of the network (default 1).
        crop_multiple: HR and Ref crop multiple (default 4 * stride; must be a multiple of 4).
    """

    DEFAULTS: Dict[str, Any] = {'dataroot': REQUIRED, 'io_backend': None, 'ref_level': 1, 'stride': 1,
                                'crop_multiple': None}

    def __init__(self, opt: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        self.opt = merge_options(type(self).__name__, self.DEFAULTS, opt, kwargs)
        o = self.opt
        self.ref_level = int(o['ref_level'])
        if not 1 <= self.ref_level <= 5:
            raise ValueError(f'ref_level must be 1..5, got {o["ref_level"]!r}')
        stride = int(o['stride'])
        if stride < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        multiple = o['crop_multiple'] if o['crop_multiple'] is not None else 4 * stride
        self.crop_multiple = positive_multiple_of_4(multiple, 'crop_multiple')
        self.source = open_source(o['dataroot'], o['io_backend'], 'dataroot')
        self.groups: List[str] = [m.group(1) for m in map(_HR_KEY.match, self.source.keys) if m]
        if not self.groups:
            raise FileNotFoundError(f'{self.source.root}: no CUFED5 HR images (NNN_0.png)')
        missing = [f'{g}_{self.ref_level}' for g in self.groups if f'{g}_{self.ref_level}' not in self.source]
        if missing:
            raise FileNotFoundError(f'{self.source.root}: missing level-{self.ref_level} reference(s) '
                                    f'{", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}')

    def __len__(self) -> int:
        return len(self.groups)

    def _ref_key(self, group: str) -> str:
        return f'{group}_{self.ref_level}'

    def __getitem__(self, index: int) -> Dict[str, Any]:
        group = self.groups[index]
        gt_key, ref_key = f'{group}_0', self._ref_key(group)
        gt_path, ref_path = self.source.path(gt_key), self.source.path(ref_key)
        gt = deg.crop_to_multiple(self.source.read(gt_key), self.crop_multiple, gt_path)
        ref = deg.crop_to_multiple(self.source.read(ref_key), self.crop_multiple, ref_path)
        sample: Dict[str, Any] = {k: deg.to_tensor(v) for k, v in deg.degrade(gt, ref).items()}
        sample.update(lq_path=gt_path, gt_path=gt_path, ref_path=ref_path)
        return sample
