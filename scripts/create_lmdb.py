#!/usr/bin/env python
"""Pack CUFED, or any image folder, into LMDBs in BasicSR's layout.

A thin wrapper of :mod:`extracter.tools.create_lmdb`, installed as ``extracter-create-lmdb``;
``--help`` lists the options.
"""

import sys

from extracter.tools.create_lmdb import main

if __name__ == '__main__':
    sys.exit(main())
