"""Registers this package's archs in :data:`extracter.registry.ARCH_REGISTRY` by importing every `*_arch.py` module
(BasicSR's own registry gets them through :func:`extracter.registry.use_basicsr`)."""

from extracter.utils.registry_scan import import_modules
from extracter.utils.startup import gc_paused

with gc_paused():  # torch and the arch modules: see gc_paused
    _modules = import_modules(__file__, __name__, '_arch')
