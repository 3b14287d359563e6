#!/usr/bin/env python
"""Convert an original EXTRACTER/TTSR or an mmagic TTSR checkpoint into a BasicSR one.

A thin wrapper of :mod:`extracter.tools.convert_official`, installed as ``extracter-convert``;
``--help`` lists the options.
"""

import sys

from extracter.tools.convert_official import main

if __name__ == '__main__':
    sys.exit(main())
