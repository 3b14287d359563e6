"""Compatibility fixes for running PyPI's basicsr 1.4.2 on current PyTorch, in one place.

1. basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, which torchvision 0.17 renamed to
   ``torchvision.transforms._functional_tensor``. :func:`install` registers the old name as an alias of the new
   module before basicsr is imported. Nothing in site-packages is edited.
2. lmdb >= 2 refuses to open one environment twice in a process: see :mod:`extracter.data.lmdb_backend`.
3. basicsr's distributed helpers assume CUDA: see :mod:`extracter.utils.dist`.

:func:`extracter.registry.use_basicsr` calls :func:`install` before it imports basicsr; user code that imports
basicsr itself calls ``use_basicsr()`` first (the inference path never imports basicsr).
"""

import importlib
import sys

_OLD_NAME = 'torchvision.transforms.functional_tensor'
_NEW_NAME = 'torchvision.transforms._functional_tensor'


def install() -> None:
    """Register the torchvision alias basicsr needs (idempotent)."""
    if _OLD_NAME in sys.modules:
        return
    try:
        importlib.import_module(_OLD_NAME)  # old torchvision: the module still exists
    except ModuleNotFoundError:
        sys.modules[_OLD_NAME] = importlib.import_module(_NEW_NAME)
