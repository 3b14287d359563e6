"""Registers this package's losses in BasicSR's registry by importing every `*_loss.py` module."""

from extracter.utils.registry_scan import import_modules

_modules = import_modules(__file__, __name__, '_loss')
