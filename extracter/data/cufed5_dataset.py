"""CUFED5 test set: ``NNN_0.png`` (HR) with references ``NNN_1.png`` .. ``NNN_5.png`` of decreasing similarity.

As the original test sets (TTSR; EXTRACTER with ``filled = 4 * stride``): HR and Ref are cropped at the top-left to
a multiple of ``crop_multiple`` (default 4 x stride), then LR = bicubic(HR, /4), lq_up = bicubic(LR, x4) and
ref_downup = bicubic(bicubic(Ref, /4), x4), all with PIL. No augmentation.

Reference protocols (``ref_level``), see docs/evaluation.md:
- ``1`` .. ``5``: the one reference of that level (TTSR, EXTRACTER, C2-Matching, mmagic: level 1);
- ``all``: the five references, each cropped as above, searched together (our multi-reference search: the top-k over
  the union of their patches); ``ref``, ``ref_downup`` and ``ref_path`` are lists of five;
- ``stitched``: the five references stitched into one image as MASA-SR's ``TestSet_multi`` does (each centred on a
  ``stitch_size`` x ``stitch_size`` canvas with replicated edges, stacked vertically;
  :func:`extracter.data.degradations.stitch_references`), then cropped and degraded as one reference.
"""

import os
import re
from typing import Any, Dict, List, Mapping, Optional

from torch.utils.data import Dataset

from extracter.data import degradations as deg
from extracter.data.options import REQUIRED, merge_options, positive_multiple_of_4
from extracter.data.sources import open_source
from extracter.registry import DATASET_REGISTRY

_HR_KEY = re.compile(r'^(.+)_0$')
LEVELS = (1, 2, 3, 4, 5)
REF_LEVELS = LEVELS + ('all', 'stitched')  # the values of ref_level (the options schema checks against this)
STITCH_SIZE = 512  # MASA-SR's canvas side (dataloader/dataset.py, TestSet_multi)


@DATASET_REGISTRY.register()
class CUFED5Dataset(Dataset):
    """CUFED5 from its folder or from an LMDB of it (keys ``NNN_0`` .. ``NNN_5``).

    Options:
        dataroot: the CUFED5 folder (or ``.lmdb``).
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb}``.
        ref_level: 1 (most similar) .. 5 (least similar), ``all`` or ``stitched`` (see the module docstring).
        stitch_size: canvas side of each reference for ``stitched`` (default 512, MASA-SR's).
        stride: search stride of the network (default 1).
        crop_multiple: HR and Ref crop multiple (default 4 * stride; must be a multiple of 4).
    """

    DEFAULTS: Dict[str, Any] = {'dataroot': REQUIRED, 'io_backend': None, 'ref_level': 1, 'stride': 1,
                                'crop_multiple': None, 'stitch_size': STITCH_SIZE}

    def __init__(self, opt: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        self.opt = merge_options(type(self).__name__, self.DEFAULTS, opt, kwargs)
        o = self.opt
        self.ref_level = o['ref_level']
        if isinstance(self.ref_level, bool) or self.ref_level not in REF_LEVELS:
            raise ValueError(f'ref_level must be 1..5, all or stitched, got {o["ref_level"]!r}')
        self.levels = LEVELS if self.ref_level in ('all', 'stitched') else (self.ref_level,)
        self.stitch_size = positive_multiple_of_4(o['stitch_size'], 'stitch_size')
        stride = int(o['stride'])
        if stride < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        multiple = o['crop_multiple'] if o['crop_multiple'] is not None else 4 * stride
        self.crop_multiple = positive_multiple_of_4(multiple, 'crop_multiple')
        self.source = open_source(o['dataroot'], o['io_backend'], 'dataroot')
        self.groups: List[str] = [m.group(1) for m in map(_HR_KEY.match, self.source.keys) if m]
        if not self.groups:
            raise FileNotFoundError(f'{self.source.root}: no CUFED5 HR images (NNN_0.png)')
        missing = [f'{g}_{lv}' for g in self.groups for lv in self.levels if f'{g}_{lv}' not in self.source]
        if missing:
            what = f'level-{self.ref_level}' if len(self.levels) == 1 else f'level-1..5 (ref_level {self.ref_level})'
            raise FileNotFoundError(f'{self.source.root}: missing {what} reference(s) '
                                    f'{", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}')

    @property
    def protocol(self) -> str:
        """The reference protocol, as the metrics files name it."""
        if self.ref_level == 'all':
            return 'CUFED5 ref_level all: the five references NNN_1..NNN_5 searched together (union of their patches)'
        if self.ref_level == 'stitched':
            return (f'CUFED5 ref_level stitched: NNN_1..NNN_5 each centred on a {self.stitch_size}x{self.stitch_size} '
                    'canvas with replicated edges, stacked vertically into one reference (MASA-SR TestSet_multi)')
        return f'CUFED5 ref_level {self.ref_level}: one reference, NNN_{self.ref_level}'

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        group = self.groups[index]
        gt_key = f'{group}_0'
        gt_path = self.source.path(gt_key)
        gt = deg.crop_to_multiple(self.source.read(gt_key), self.crop_multiple, gt_path)
        ref_keys = [f'{group}_{lv}' for lv in self.levels]
        ref_paths = [self.source.path(k) for k in ref_keys]
        refs = [self.source.read(k) for k in ref_keys]
        if self.ref_level == 'stitched':
            refs = [deg.stitch_references(refs, self.stitch_size, ref_paths)]
            ref_paths = [os.path.join(self.source.root, f'{group}_1-5_stitched.png')]  # names the sample, no file
        refs = [deg.crop_to_multiple(r, self.crop_multiple, p) for r, p in zip(refs, ref_paths)]
        images = deg.degrade(gt, refs[0])
        sample: Dict[str, Any] = {k: deg.to_tensor(v) for k, v in images.items()}
        sample.update(lq_path=gt_path, gt_path=gt_path, ref_path=ref_paths[0])
        if self.ref_level == 'all':
            sample.update(ref=[deg.to_tensor(r) for r in refs], ref_path=ref_paths,
                          ref_downup=[sample['ref_downup']] + [deg.to_tensor(deg.make_ref_downup(r)) for r in refs[1:]])
        return sample
