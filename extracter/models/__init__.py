"""Registers this package's models in BasicSR's registry by importing every `*_model.py` module."""

from extracter.utils.registry_scan import import_modules

_modules = import_modules(__file__, __name__, '_model')
