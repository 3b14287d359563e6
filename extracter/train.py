"""Train EXTRACTER / TTSR: BasicSR's training pipeline without its CUDA assumptions, with exact resume.

    python extracter/train.py -opt options/train/rec.yml [--auto_resume] [--overwrite]
    torchrun --nproc_per_node=N extracter/train.py -opt options/train/rec.yml --launcher pytorch
    extracter-train -opt options/train/rec.yml

A thin command line over :mod:`extracter.pipeline.training`.
"""

import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ''):  # run as a script: make the package importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from extracter.utils.startup import gc_paused  # noqa: E402

with gc_paused():  # the pipeline links BasicSR's registries (extracter.registry.use_basicsr)
    from extracter.pipeline.common import run_cli
    from extracter.pipeline.training import train_pipeline

__all__ = ['main', 'train_pipeline']


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (errors: one ``error:`` line, see :mod:`extracter.utils.cli`)."""
    return run_cli(train_pipeline, argv)


if __name__ == '__main__':
    sys.exit(main())
