"""Test sets without references (Sun80's HR images, Urban100, Set14, Set5, BSD100), with a chosen reference protocol.

HR images: a folder (or LMDB) in the common SelfExSR layout ``img_NNN_SRF_4_HR.png`` (only the ``*_HR`` images are
used when any exist, the ``_LR``/``_bicubic`` files beside them are ignored) or a plain folder of images. As for
CUFED5, HR is cropped at the top-left to a multiple of ``crop_multiple`` (default 4 x stride) and LR, lq_up are made
with PIL bicubic. References, by ``ref_mode``:

- ``'self'``: the self-reference protocol of TTSR/EXTRACTER for Set14/Urban100: Ref = ref_downup = the upsampled LR
  (EXTRACTER's ``dataset/set14.py`` uses LR_sr for both, without a further down-up step). ``ref_path`` = the HR path.
- ``'folder'``: ``dataroot_ref`` holds one reference per HR image with the same name (the ``_HR`` suffix may be
  left off, e.g. Sun80's references); cropped to ``crop_multiple``; ref_downup = bicubic down x4 then up x4.
- ``'random'``: another image of the same set, as EXTRACTER's ``dataset/urban100.py`` does, but drawn from a
  generator seeded with (``seed``, index) so every run and every worker order gives the same pairs (the original
  draws it unseeded).
"""

import re
from typing import Any, Dict, Mapping, Optional

import numpy as np
from torch.utils.data import Dataset

from extracter.data import degradations as deg
from extracter.data.options import REQUIRED, merge_options, positive_multiple_of_4
from extracter.data.sources import open_source
from extracter.registry import DATASET_REGISTRY

REF_MODES = ('self', 'folder', 'random')
_HR_SUFFIX = re.compile(r'_HR$')


@DATASET_REGISTRY.register()
class NoRefTestDataset(Dataset):
    """HR-only test sets with a self, folder or seeded random reference.

    Options:
        dataroot: folder (or ``.lmdb``) of HR images.
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb}`` (for ``dataroot`` and ``dataroot_ref``).
        ref_mode: ``self`` (default) | ``folder`` | ``random``.
        dataroot_ref: reference folder for ``ref_mode: folder``.
        seed: seed of ``ref_mode: random`` (default 0).
        stride: search stride (default 1); crop_multiple: default 4 * stride.
    """

    DEFAULTS: Dict[str, Any] = {'dataroot': REQUIRED, 'io_backend': None, 'ref_mode': 'self', 'dataroot_ref': None,
                                'seed': 0, 'stride': 1, 'crop_multiple': None}

    def __init__(self, opt: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        self.opt = merge_options(type(self).__name__, self.DEFAULTS, opt, kwargs)
        o = self.opt
        if o['ref_mode'] not in REF_MODES:
            raise ValueError(f"ref_mode must be one of {REF_MODES}, got {o['ref_mode']!r}")
        self.ref_mode = o['ref_mode']
        stride = int(o['stride'])
        if stride < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        self.crop_multiple = positive_multiple_of_4(
            o['crop_multiple'] if o['crop_multiple'] is not None else 4 * stride, 'crop_multiple')
        self.source = open_source(o['dataroot'], o['io_backend'], 'dataroot')
        hr_keys = [k for k in self.source.keys if _HR_SUFFIX.search(k)]
        self.keys = hr_keys or list(self.source.keys)
        self.seed = int(o['seed'])
        self.ref_source = None
        self.ref_keys: Dict[str, str] = {}
        if self.ref_mode == 'folder':
            if not o['dataroot_ref']:
                raise ValueError("ref_mode 'folder' needs the option dataroot_ref")
            self.ref_source = open_source(o['dataroot_ref'], o['io_backend'], 'dataroot_ref')
            missing = []
            for key in self.keys:
                cands = [c for c in (key, _HR_SUFFIX.sub('', key)) if c in self.ref_source]
                if cands:
                    self.ref_keys[key] = cands[0]
                else:
                    missing.append(self.source.path(key))
            if missing:
                raise FileNotFoundError(f'{len(missing)} image(s) have no reference of the same name in '
                                        f'{self.ref_source.root}: {", ".join(missing[:10])}'
                                        f'{" ..." if len(missing) > 10 else ""}')
        elif self.ref_mode == 'random' and len(self.keys) < 2:
            raise ValueError(f"{self.source.root}: ref_mode 'random' needs at least two images")

    def __len__(self) -> int:
        return len(self.keys)

    def random_ref_index(self, index: int) -> int:
        """The other image used as reference for ``index`` (fixed by ``seed`` and ``index``)."""
        j = int(np.random.default_rng([self.seed, index]).integers(len(self.keys) - 1))
        return j + (j >= index)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        key = self.keys[index]
        gt_path = self.source.path(key)
        gt = deg.crop_to_multiple(self.source.read(key), self.crop_multiple, gt_path)
        lq = deg.make_lq(gt)
        lq_up = deg.make_lq_up(lq, gt.shape[:2])
        if self.ref_mode == 'self':
            ref, ref_downup, ref_path = lq_up, lq_up, gt_path
        else:
            if self.ref_mode == 'folder':
                src, ref_key = self.ref_source, self.ref_keys[key]
            else:
                src, ref_key = self.source, self.keys[self.random_ref_index(index)]
            ref_path = src.path(ref_key)
            ref = deg.crop_to_multiple(src.read(ref_key), self.crop_multiple, ref_path)
            ref_downup = deg.make_ref_downup(ref)
        images = {'gt': gt, 'lq': lq, 'lq_up': lq_up, 'ref': ref, 'ref_downup': ref_downup}
        sample: Dict[str, Any] = {k: deg.to_tensor(v) for k, v in images.items()}
        sample.update(lq_path=gt_path, gt_path=gt_path, ref_path=ref_path)
        return sample
