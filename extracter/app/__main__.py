"""``python -m extracter.app``: the local web page (see :mod:`extracter.app.cli`)."""

import sys

from extracter.app.cli import main

sys.exit(main())
