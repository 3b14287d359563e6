"""Registers this package's data in BasicSR's registry by importing every `*_dataset.py` module."""

from extracter.utils.registry_scan import import_modules

_modules = import_modules(__file__, __name__, '_dataset')
