"""``python -m extracter.app``: the local web page (see :mod:`extracter.app.cli`)."""

from extracter.app.cli import main

main()
