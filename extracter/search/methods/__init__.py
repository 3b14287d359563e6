"""The search methods: every module here registers its methods (:func:`extracter.search.base.register_method`) when
imported; the exact ones first, then the others by file name. A new method is one new module here (and its test)."""

from extracter.search.methods import exact  # noqa: F401  (dense, chunked: registered first)
from extracter.utils.registry_scan import import_modules

_modules = import_modules(__file__, __name__, '')
