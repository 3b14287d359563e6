"""Paired LR/HR/Ref training data in CUFED's layout (``train/input/*.png`` HR paired by name with ``train/ref/*.png``).

Per sample, in the original's order (TTSR/EXTRACTER ``dataset/cufed.py``):
1. read HR and Ref; swap them with probability ``swap_prob`` (EXTRACTER trains with 0.5, TTSR never swaps);
2. ``gt_size``: random crop of a larger HR (replicate padding of a smaller one, so batches collate);
3. ``pad_multiple``: replicate padding of HR and Ref at the bottom/right to a multiple (EXTRACTER: 16);
4. reference size handling (``ref_size_mode``, below);
5. degradations with PIL bicubic: LR, upsampled LR, down-up-sampled Ref (:mod:`extracter.data.degradations`);
6. augmentations drawn independently for the LR group and the Ref group (flips, then rot90).

``ref_size_mode`` lets references of different sizes collate into one batch (CUFED's references are at most
160x160 but vary):
- ``'zero_pad'`` (default; TTSR): Ref and its down-up-sampled version are made at their own size and then padded
  with zeros at the bottom/right to ``ref_size`` (a larger reference is first randomly cropped to ``ref_size``);
- ``'replicate_pad'``: Ref is randomly cropped / replicate-padded to ``ref_size`` before the degradation;
- ``'random_crop'``: as ``replicate_pad``; the name says what happens to CUFED5-size references;
- ``'none'``: references keep their size (EXTRACTER's code, which only pads to ``pad_multiple``; collates only with
  batch size 1 or equal sizes).
"""

import random
from typing import Any, Dict, Mapping, Optional

from torch.utils.data import Dataset

from extracter.data import degradations as deg
from extracter.data.options import REQUIRED, merge_options, positive_multiple_of_4
from extracter.data.sources import open_source
from extracter.registry import DATASET_REGISTRY

REF_SIZE_MODES = ('zero_pad', 'replicate_pad', 'random_crop', 'none')
AUGMENT_MODES = ('independent', 'joint')


@DATASET_REGISTRY.register()
class RefSRTrainDataset(Dataset):
    """CUFED-style training pairs.

    Options (YAML keys or named arguments):
        dataroot_gt: folder (or ``.lmdb``) of HR images, e.g. ``CUFED/train/input``.
        dataroot_ref: folder (or ``.lmdb``) of references with the same names, e.g. ``CUFED/train/ref``.
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb}``.
        gt_size: HR crop size (int or [h, w]); ``None`` keeps the whole HR.
        use_hflip, use_vflip, use_rot: the original augmentations (default on).
        augment_mode: ``independent`` (the original: the HR/LR group and the Ref group are flipped and rotated
            independently, so 7 references in 8 come in another orientation than their target) or ``joint`` (both
            groups get the same transform: the reference keeps its orientation relative to the target, as in
            video frames or photos of one scene; our option, used by the CPU demo model's last stage).
        swap_prob: probability of exchanging HR and Ref (default 0; EXTRACTER uses 0.5).
        pad_multiple: HR and Ref are replicate-padded to a multiple of this (>= 4, multiple of 4; default 4;
            EXTRACTER uses 16). For search stride s, 4 * s is what the network needs.
        ref_size_mode: ``zero_pad`` | ``replicate_pad`` | ``random_crop`` | ``none`` (see the module docstring).
        ref_size: target reference size for the first three modes (int or [h, w]; default 160).
    """

    DEFAULTS: Dict[str, Any] = {
        'dataroot_gt': REQUIRED, 'dataroot_ref': REQUIRED, 'io_backend': None, 'gt_size': None,
        'use_hflip': True, 'use_vflip': True, 'use_rot': True, 'swap_prob': 0.0, 'pad_multiple': 4,
        'ref_size_mode': 'zero_pad', 'ref_size': 160, 'augment_mode': 'independent',
    }

    def __init__(self, opt: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        self.opt = merge_options(type(self).__name__, self.DEFAULTS, opt, kwargs)
        o = self.opt
        self.gt_source = open_source(o['dataroot_gt'], o['io_backend'], 'dataroot_gt')
        self.ref_source = open_source(o['dataroot_ref'], o['io_backend'], 'dataroot_ref')
        self.gt_size = deg.as_hw(o['gt_size'], 'gt_size') if o['gt_size'] is not None else None
        self.pad_multiple = positive_multiple_of_4(o['pad_multiple'], 'pad_multiple')
        if o['ref_size_mode'] not in REF_SIZE_MODES:
            raise ValueError(f"ref_size_mode must be one of {REF_SIZE_MODES}, got {o['ref_size_mode']!r}")
        self.ref_size_mode = o['ref_size_mode']
        self.ref_size = deg.as_hw(o['ref_size'], 'ref_size') if self.ref_size_mode != 'none' else None
        if self.ref_size is not None:
            self.ref_size = tuple(-(-s // self.pad_multiple) * self.pad_multiple for s in self.ref_size)
        if o['augment_mode'] not in AUGMENT_MODES:
            raise ValueError(f"augment_mode must be one of {AUGMENT_MODES}, got {o['augment_mode']!r}")
        self.swap_prob = float(o['swap_prob'])
        if not 0.0 <= self.swap_prob <= 1.0:
            raise ValueError(f'swap_prob must be in [0, 1], got {self.swap_prob}')
        if o['use_rot']:
            for name, size in (('gt_size', self.gt_size), ('ref_size', self.ref_size)):
                if size is not None and size[0] != size[1]:
                    raise ValueError(f'use_rot needs a square {name} (rotated samples must still collate), got {size}')
        missing_ref = [k for k in self.gt_source.keys if k not in self.ref_source]
        if missing_ref:
            shown = ', '.join(self.gt_source.path(k) for k in missing_ref[:10])
            raise FileNotFoundError(f'{len(missing_ref)} HR image(s) have no reference of the same name in '
                                    f'{self.ref_source.root}: {shown}{" ..." if len(missing_ref) > 10 else ""}')
        self.keys = list(self.gt_source.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def _fit_ref(self, ref):
        """Random crop / replicate pad to ref_size before the degradation (modes replicate_pad, random_crop), or
        only the crop of a too large reference (zero_pad, whose zeros come after the degradation)."""
        if self.ref_size is None:
            return ref
        ref = deg.random_crop(ref, self.ref_size)
        if self.ref_size_mode in ('replicate_pad', 'random_crop'):
            ref = deg.pad_to_size(ref, self.ref_size, 'edge')
        return ref

    def __getitem__(self, index: int) -> Dict[str, Any]:
        key = self.keys[index]
        gt, gt_path = self.gt_source.read(key), self.gt_source.path(key)
        ref, ref_path = self.ref_source.read(key), self.ref_source.path(key)
        if self.swap_prob > 0 and random.random() < self.swap_prob:
            gt, ref, gt_path, ref_path = ref, gt, ref_path, gt_path
        if self.gt_size is not None:
            gt = deg.pad_to_size(deg.random_crop(gt, self.gt_size), self.gt_size, 'edge')
        gt = deg.pad_to_multiple(gt, self.pad_multiple, 'edge')
        ref = deg.pad_to_multiple(self._fit_ref(ref), self.pad_multiple, 'edge')
        images = deg.degrade(gt, ref)
        if self.ref_size_mode == 'zero_pad':
            for k in deg.REF_GROUP:
                images[k] = deg.pad_to_size(images[k], self.ref_size, 'constant')
        params = deg.draw_augment(self.opt['use_hflip'], self.opt['use_vflip'], self.opt['use_rot'],
                                  joint=self.opt['augment_mode'] == 'joint')
        images = deg.augment_sample(images, params)
        sample: Dict[str, Any] = {k: deg.to_tensor(v) for k, v in images.items()}
        sample.update(lq_path=gt_path, gt_path=gt_path, ref_path=ref_path)
        return sample
