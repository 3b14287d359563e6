"""Registers this package's datasets in :data:`extracter.registry.DATASET_REGISTRY` by importing every `*_dataset.py`
module (BasicSR's own registry gets them through :func:`extracter.registry.use_basicsr`)."""

from extracter.utils.registry_scan import import_modules
from extracter.utils.startup import gc_paused

with gc_paused():
    _modules = import_modules(__file__, __name__, '_dataset')
