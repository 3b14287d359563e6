"""EXTRACTER and TTSR reference-based super-resolution on BasicSR.

Importing this package makes basicsr importable on current torchvision (see :mod:`extracter.compat`) and fills
BasicSR's registries (ARCH, MODEL, DATASET, LOSS) with this package's components, as BasicSR-based repositories do.
"""

from extracter.compat import install as _install_compat

_install_compat()

from extracter import archs, data, losses, models  # noqa: E402  (registries are filled on import)
from extracter.version import __version__  # noqa: E402

__all__ = ['archs', 'data', 'losses', 'models', '__version__']
