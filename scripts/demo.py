#!/usr/bin/env python
"""The main job on a bundled real example (`make demo`).

A thin wrapper of :mod:`extracter.tools.demo`, installed as ``extracter-demo``;
``--help`` lists the options.
"""

import sys

from extracter.tools.demo import main

if __name__ == '__main__':
    sys.exit(main())
