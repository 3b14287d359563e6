"""What the training and test pipelines share: the repository root, the run's log file, the command-line boundary."""

import logging
import sys
from os import path as osp
from typing import Callable, List, Optional, Sequence

from basicsr.utils import get_root_logger, get_time_str, mkdir_and_rename

from extracter.utils import dist as dist_util
from extracter.utils.cli import run_main

ROOT_PATH = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def archive_folder(folder: str, lock=None) -> None:
    """Rename ``folder`` to ``<folder>_archived_<time>`` (``--overwrite``): through its lock when this run holds one
    (the lock moves to the new, empty folder; :meth:`extracter.utils.folder_lock.FolderLock.archive`), else as
    BasicSR's ``mkdir_and_rename``."""
    if lock is None:
        mkdir_and_rename(folder)
        return
    archived = f'{folder}_archived_{get_time_str()}'
    print(f'Path already exists. Rename it to {archived}', flush=True)
    lock.archive(archived)


def bind_console() -> None:
    """BasicSR's 'basicsr' logger prints to the stderr of the process' first run; point it at this run's (a second
    run in one process, e.g. a test or a notebook, may have another one)."""
    for handler in get_root_logger(logger_name='basicsr').handlers:
        if type(handler) is logging.StreamHandler and handler.stream is not sys.stderr:
            handler.acquire()
            try:  # not setStream: it flushes the previous stream, which may be closed
                handler.stream = sys.stderr
            finally:
                handler.release()


def setup_run_logger(log_file: str) -> logging.Logger:
    """BasicSR's 'basicsr' logger with this run's log file (rank 0). basicsr's get_root_logger attaches a file only on
    its first call in a process; here each run (also a second one in the same process) gets its own file."""
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO)
    for handler in list(logger.handlers):
        if getattr(handler, 'extracter_run_file', False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.INFO if dist_util.is_main_process() else logging.ERROR)
    if dist_util.is_main_process():
        handler = logging.FileHandler(log_file, 'w', encoding='utf-8')
        handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
        handler.extracter_run_file = True
        logger.addHandler(handler)
    return logger


def run_cli(pipeline: Callable[[str, List[str]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Run a pipeline (``pipeline(root_path, argv)``) as a command through the error boundary of
    :func:`extracter.utils.cli.run_main`: bad options, files and checkpoints become one ``error:`` line and exit status
    2, a bug exit status 1, SIGTERM 143; the distributed state is cleaned up in every case. Returns the exit status."""

    def main(args: List[str]) -> int:
        try:
            pipeline(ROOT_PATH, args)
        finally:
            dist_util.destroy()
        return 0

    return run_main(main, argv)
