"""Our training and testing engine (BasicSR's lifecycle and file conventions, owned here for CPU/gloo support,
exact resume and atomic saves): :mod:`.training`, :mod:`.testing`, and what they share in :mod:`.common`.
``extracter/train.py`` and ``extracter/test.py`` are thin command lines over them."""
