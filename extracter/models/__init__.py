"""This package's models (BasicSR's model interface): importing it links our registries to BasicSR's
(:func:`extracter.registry.use_basicsr`, which imports basicsr) and registers every `*_model.py` module."""

from extracter.registry import use_basicsr

use_basicsr()  # before the model modules import basicsr (the compat shim)

from extracter.utils.registry_scan import import_modules  # noqa: E402

_modules = import_modules(__file__, __name__, '_model')
