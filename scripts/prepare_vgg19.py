#!/usr/bin/env python
"""Write the canonical local VGG-19 weights file.

A thin wrapper of :mod:`extracter.tools.prepare_vgg19`, installed as ``extracter-prepare-vgg19``;
``--help`` lists the options.
"""

import sys

from extracter.tools.prepare_vgg19 import main

if __name__ == '__main__':
    sys.exit(main())
