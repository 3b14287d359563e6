"""EXTRACTER and TTSR reference-based super-resolution on BasicSR.

``import extracter`` is light: it imports neither torch nor basicsr. The subpackages load on first use
(``extracter.archs``, ``extracter.data``, ...; also as attributes of this package) and register their components in
this package's registries (:mod:`extracter.registry`). BasicSR's registries and builders get them through
:func:`extracter.registry.use_basicsr`, which the training and test pipelines, ``extracter.models`` and
``extracter.losses`` call (it also makes basicsr importable on current torchvision, :mod:`extracter.compat`).
Inference (``infer.py``, the web page) never imports basicsr.
"""

import importlib

from extracter.version import __version__

_SUBPACKAGES = ('app', 'archs', 'convert', 'data', 'evaluation', 'inference', 'losses', 'models', 'options', 'pipeline',
               'registry', 'utils')

__all__ = ['archs', 'data', 'losses', 'models', '__version__']


def __getattr__(name: str):
    """``extracter.archs`` etc. without importing them first (PEP 562)."""
    if name in _SUBPACKAGES:
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
