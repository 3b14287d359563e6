"""Test EXTRACTER / TTSR on the test sets of an option file: SR images, a progress bar, and a metrics table.

    python extracter/test.py -opt options/test/cufed5.yml [--overwrite]
    extracter-test -opt options/test/cufed5.yml

A thin command line over :mod:`extracter.pipeline.testing`.
"""

import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ''):  # run as a script: make the package importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from extracter.utils.startup import gc_paused  # noqa: E402

with gc_paused():  # the pipeline links BasicSR's registries (extracter.registry.use_basicsr)
    from extracter.pipeline.common import run_cli
    from extracter.pipeline.testing import metrics_table, test_pipeline

__all__ = ['main', 'metrics_table', 'test_pipeline']


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (errors: one ``error:`` line, see :mod:`extracter.utils.cli`)."""
    return run_cli(test_pipeline, argv)


if __name__ == '__main__':
    sys.exit(main())
