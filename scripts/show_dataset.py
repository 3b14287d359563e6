#!/usr/bin/env python
"""Save a dataset's samples as an image grid.

A thin wrapper of :mod:`extracter.tools.show_dataset`, installed as ``extracter-show-dataset``;
``--help`` lists the options.
"""

import sys

from extracter.tools.show_dataset import main

if __name__ == '__main__':
    sys.exit(main())
