"""Users' own images: LR inputs without ground truth, with references, any size.

References, exactly one of:
- ``ref_path``: one image file, the reference of every input;
- ``dataroot_ref``: a folder matched by file name: for input ``x.png`` the image ``x.*`` of that folder, or, when a
  sub-folder ``x/`` exists there, every image in it (several references for that input);
- ``refs``: a mapping from input file name to a list of reference paths (several references per image);
- ``gallery``: a folder of photos among which each input's references are chosen (``refs_per_image`` of them,
  through the index ``gallery_index``, re-ranking ``shortlist`` candidates): the choice needs the network, so test.py
  makes it before building the dataset (:func:`extracter.gallery.folder.gallery_dataset_options`), which then reads
  the resulting ``refs``;
or none of them with ``ref_mode``:
- ``'self'``: the self-reference protocol (TTSR/EXTRACTER's for images without a reference): Ref = ref_downup = the
  upsampled LR, ``ref_path`` = the LR path;
- ``'none'``: no reference at all (single-image networks, DRCT): the samples have no ``ref``, ``ref_downup``,
  ``ref_path``.

Sizes: the LR is replicate-padded at the bottom/right to a multiple of ``lq_multiple`` (default: the stride) and the
original size is recorded as ``lq_size`` = LongTensor [h, w] (a batch: [N, 2]); the model crops its output back to
``4h x 4w``. References are replicate-padded (or, with ``ref_fit: crop``, cropped) to a multiple of ``ref_multiple``
(default 4 x stride). lq_up is the padded LR bicubically upsampled x4, ref_downup the reference down x4 and up x4
(PIL bicubic, as in training).

Sample keys: ``lq``, ``lq_up``, ``ref``, ``ref_downup``, ``lq_size``, ``lq_path``, ``ref_path`` (no ``gt`` nor
``gt_path``). With several references for an input, ``ref``, ``ref_downup`` and ``ref_path`` are lists (one entry
per reference); with one they are a tensor and a string, as in every other dataset.
"""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from extracter.data import degradations as deg
from extracter.data.image_io import is_image_file, list_images, read_image
from extracter.data.options import merge_options, require_disk_backend
from extracter.registry import DATASET_REGISTRY

REF_FITS = ('pad', 'crop')
REF_MODES = ('given', 'self', 'none')


@DATASET_REGISTRY.register()
class RefSRInferenceDataset(Dataset):
    """LR images (a folder or one file) with references; see the module docstring.

    Options:
        dataroot_lq: folder of LR images, or one LR image file.
        ref_path / dataroot_ref / refs: the references (exactly one of them).
        stride: search stride of the network (default 1).
        lq_multiple: LR padding multiple (default stride); ref_multiple: reference multiple (default 4 * stride).
        ref_fit: ``pad`` (default, replicate) or ``crop`` references to ``ref_multiple``.
        ref_mode: ``given`` (default: one of the three reference options), ``self`` or ``none`` (see above).
    """

    DEFAULTS: Dict[str, Any] = {'dataroot_lq': None, 'ref_path': None, 'dataroot_ref': None, 'refs': None,
                                'stride': 1, 'lq_multiple': None, 'ref_multiple': None, 'ref_fit': 'pad',
                                'io_backend': None, 'ref_mode': 'given', 'gallery': None, 'refs_per_image': None,
                                'gallery_index': None, 'shortlist': None}

    def __init__(self, opt: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        self.opt = merge_options(type(self).__name__, self.DEFAULTS, opt, kwargs)
        o = self.opt
        require_disk_backend(type(self).__name__, o['io_backend'], 'image files')
        if not o['dataroot_lq']:
            raise ValueError("RefSRInferenceDataset: missing required option 'dataroot_lq'")
        stride = int(o['stride'])
        if stride < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        self.lq_multiple = int(o['lq_multiple'] if o['lq_multiple'] is not None else stride)
        self.ref_multiple = int(o['ref_multiple'] if o['ref_multiple'] is not None else 4 * stride)
        if self.lq_multiple < 1 or self.ref_multiple < 4 or self.ref_multiple % 4:
            raise ValueError(f'lq_multiple must be >= 1 and ref_multiple a positive multiple of 4, got '
                             f'{self.lq_multiple} and {self.ref_multiple}')
        if o['ref_fit'] not in REF_FITS:
            raise ValueError(f"ref_fit must be one of {REF_FITS}, got {o['ref_fit']!r}")
        lq_root = os.fspath(o['dataroot_lq'])
        if os.path.isfile(lq_root):
            self.lq_paths = [lq_root]
        elif not os.path.exists(lq_root):
            raise FileNotFoundError(f'dataroot_lq {lq_root}: no such image file or folder')
        else:
            self.lq_paths = [os.path.join(lq_root, n) for n in list_images(lq_root)]
        if o['ref_mode'] not in REF_MODES:
            raise ValueError(f"ref_mode must be one of {REF_MODES}, got {o['ref_mode']!r}")
        if o['gallery'] and not o['refs']:
            raise ValueError('gallery: the references are chosen with the network before the dataset is built '
                             '(test.py does; in code: extracter.gallery.folder.gallery_dataset_options)')
        given = [k for k in ('ref_path', 'dataroot_ref', 'refs') if o[k]]
        if o['ref_mode'] != 'given':
            if given:
                raise ValueError(f"ref_mode {o['ref_mode']!r} takes no references, got {given}")
        elif len(given) != 1:
            raise ValueError(f'give exactly one of ref_path, dataroot_ref, refs; got {given or "none"}')
        self.ref_paths: List[List[str]] = ([self._find_refs(p) for p in self.lq_paths] if o['ref_mode'] == 'given'
                                           else [[] for _ in self.lq_paths])

    def _find_refs(self, lq_path: str) -> List[str]:
        o = self.opt
        name = os.path.basename(lq_path)
        stem = os.path.splitext(name)[0]
        if o['ref_path']:
            paths = [os.fspath(o['ref_path'])]
        elif o['refs']:
            if name not in o['refs'] and stem not in o['refs']:
                raise FileNotFoundError(f'{lq_path}: no entry for {name!r} in the option refs')
            entry = o['refs'].get(name, o['refs'].get(stem))
            paths = [os.fspath(entry)] if isinstance(entry, (str, os.PathLike)) else [os.fspath(p) for p in entry]
            if not paths:
                raise ValueError(f'{lq_path}: empty reference list in the option refs')
        else:
            root = os.fspath(o['dataroot_ref'])
            if not os.path.isdir(root):
                raise FileNotFoundError(f'{root}: no such reference folder')
            sub = os.path.join(root, stem)
            if os.path.isdir(sub):
                paths = [os.path.join(sub, n) for n in list_images(sub)]
            else:
                paths = [os.path.join(root, n) for n in sorted(os.listdir(root))
                         if is_image_file(n) and os.path.splitext(n)[0] == stem]
                if not paths:
                    raise FileNotFoundError(f'{lq_path}: no reference named {stem}.* (nor a folder {stem}/) in {root}')
                if len(paths) > 1:
                    raise ValueError(f'{lq_path}: several references named {stem}.* in {root}: {paths}; '
                                     f'put them in a folder {sub}/ to use them all')
        for p in paths:
            if os.path.isdir(p):
                raise IsADirectoryError(f'{p}: reference of {lq_path} is a folder, not an image file')
            if not os.path.isfile(p):
                raise FileNotFoundError(f'{p}: reference of {lq_path} does not exist')
        return paths

    def __len__(self) -> int:
        return len(self.lq_paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        lq_path, ref_paths = self.lq_paths[index], self.ref_paths[index]
        sample = inference_sample(read_image(lq_path), [read_image(p) for p in ref_paths], self.lq_multiple,
                                  self.ref_multiple, self.opt['ref_fit'], ref_paths, self.opt['ref_mode'])
        sample['lq_path'] = lq_path
        if self.opt['ref_mode'] == 'self':
            sample['ref_path'] = lq_path
        elif self.opt['ref_mode'] == 'given':
            sample['ref_path'] = ref_paths[0] if len(ref_paths) == 1 else list(ref_paths)
        return sample


def inference_sample(lq: np.ndarray, refs: Sequence[np.ndarray], lq_multiple: int, ref_multiple: int,
                     ref_fit: str = 'pad', ref_names: Optional[Sequence[str]] = None,
                     ref_mode: str = 'given') -> Dict[str, Any]:
    """The sample of :class:`RefSRInferenceDataset` (without the paths) from decoded uint8 RGB images: what the
    command line and the web page (:mod:`extracter.app`) both run on. ``ref_mode`` 'self': the upsampled LR is the
    reference (``refs`` empty); 'none': no reference (single-image networks)."""
    h, w = lq.shape[:2]
    lq = deg.pad_to_multiple(lq, lq_multiple, 'edge')
    pairs = []
    for i, ref in enumerate(refs):
        if ref_fit == 'crop':
            ref = deg.crop_to_multiple(ref, ref_multiple, ref_names[i] if ref_names else f'reference {i + 1}')
        else:
            ref = deg.pad_to_multiple(ref, ref_multiple, 'edge')
        pairs.append((deg.to_tensor(ref), deg.to_tensor(deg.make_ref_downup(ref))))
    sample: Dict[str, Any] = {'lq': deg.to_tensor(lq), 'lq_up': deg.to_tensor(deg.make_lq_up(lq)),
                              'lq_size': torch.tensor([h, w], dtype=torch.long)}
    if ref_mode == 'self':
        sample.update(ref=sample['lq_up'], ref_downup=sample['lq_up'])
    elif ref_mode == 'none':
        pass
    elif len(pairs) == 1:
        sample.update(ref=pairs[0][0], ref_downup=pairs[0][1])
    else:
        sample.update(ref=[r for r, _ in pairs], ref_downup=[d for _, d in pairs])
    return sample
