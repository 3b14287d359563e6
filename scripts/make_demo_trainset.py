#!/usr/bin/env python
"""Build the CPU demo model's training pairs from real photographs and video frames.

A thin wrapper of :mod:`extracter.tools.make_demo_trainset`, installed as ``extracter-make-demo-trainset``;
``--help`` lists the options.
"""

import sys

from extracter.tools.make_demo_trainset import main

if __name__ == '__main__':
    sys.exit(main())
