"""This package's losses: importing it links our registries to BasicSR's (:func:`extracter.registry.use_basicsr`) and
registers every `*_loss.py` module."""

from extracter.registry import use_basicsr

use_basicsr()  # before the loss modules import basicsr (the compat shim)

from extracter.utils.registry_scan import import_modules  # noqa: E402

_modules = import_modules(__file__, __name__, '_loss')
