"""Our training and testing engine (BasicSR's lifecycle and file conventions, owned here for CPU/gloo support,
exact resume and atomic saves): :mod:`.training`, :mod:`.testing`, and what they share in :mod:`.common`.
``extracter/train.py`` and ``extracter/test.py`` are thin command lines over them."""

from extracter.registry import use_basicsr

use_basicsr()  # BasicSR's builders must find our archs, datasets, losses and models by name
