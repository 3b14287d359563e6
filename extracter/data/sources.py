"""Image sources behind the datasets: a folder of image files or an LMDB in BasicSR's layout, both addressed by key
(the file name without extension) and both returning uint8 RGB arrays through :mod:`extracter.data.image_io`."""

import os
from typing import Dict, List, Mapping, Optional

import numpy as np

from extracter.data import lmdb_backend
from extracter.data.image_io import decode_image_bytes, list_images, read_image

BACKENDS = ('disk', 'lmdb')


class ImageSource:
    """Base: ``keys`` (sorted), ``path(key)`` for the sample's ``*_path`` entry and ``read(key)``."""

    root: str
    keys: List[str]

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._key_set

    def path(self, key: str) -> str:
        raise NotImplementedError

    def read(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def _index(self) -> None:
        self._key_set = set(self.keys)


class FolderSource(ImageSource):
    """Image files of one folder; two files with the same stem (``a.png``, ``a.jpg``) are an error."""

    def __init__(self, root: str) -> None:
        self.root = os.fspath(root)
        self._files: Dict[str, str] = {}
        for name in list_images(self.root):
            key = os.path.splitext(name)[0]
            if key in self._files:
                raise ValueError(f'{self.root}: two images share the name {key!r} '
                                 f'({self._files[key]} and {name}); keep one')
            self._files[key] = name
        self.keys = sorted(self._files)
        self._index()

    def path(self, key: str) -> str:
        return os.path.join(self.root, self._files[key])

    def read(self, key: str) -> np.ndarray:
        return read_image(self.path(key))


class LmdbSource(ImageSource):
    """Records of an LMDB folder (keys from its meta_info.txt); opened lazily per process (see lmdb_backend)."""

    def __init__(self, root: str) -> None:
        self.root = os.fspath(root)
        meta = lmdb_backend.read_meta_info(self.root)
        if not meta:
            raise ValueError(f'{self.root}: meta_info.txt lists no records')
        self.shapes = {key: shape for key, shape, _ in meta}
        self.keys = sorted(self.shapes)
        self._index()

    def path(self, key: str) -> str:
        return os.path.join(self.root, f'{key}.png')

    def read(self, key: str) -> np.ndarray:
        return decode_image_bytes(lmdb_backend.read_bytes(self.root, key), self.path(key))


def backend_type(io_backend: Optional[Mapping]) -> str:
    kind = 'disk' if not io_backend else io_backend.get('type', 'disk')
    if kind not in BACKENDS:
        raise ValueError(f"io_backend.type must be one of {BACKENDS}, got {kind!r}")
    return kind


def open_source(root: str, io_backend: Optional[Mapping], option: str) -> ImageSource:
    """The source for option ``option`` (its value ``root``) under ``io_backend`` ({type: disk|lmdb})."""
    if not root:
        raise ValueError(f'option {option!r} is required')
    if backend_type(io_backend) == 'lmdb':
        return LmdbSource(root)
    return FolderSource(root)
