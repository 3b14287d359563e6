"""Converters of official checkpoints (the original EXTRACTER and TTSR code, mmagic's TTSR) into checkpoints of our
architectures: :func:`extracter.convert.official.convert_state_dict` reads any of them (``scripts/convert_official.py``
is its command line)."""
