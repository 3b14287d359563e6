"""The error boundary of command lines: bad input ends in one ``error: <message>`` line, not a traceback.

Usage in a script::

    def main(argv):               # parses argv, raises on failure, returns 0 (or None)
        ...

    if __name__ == '__main__':
        sys.exit(run_main(main))

Exit statuses: 0 success; 2 a known error (bad input or environment: ``ValueError`` and its subclasses such as
``ImageReadError`` or ``OptionError``, ``OSError`` and its subclasses such as ``FileNotFoundError``,
``FileExistsError``, ``PermissionError``, ``IsADirectoryError``, a full disk, ``MemoryError``, the script's own
``known`` types, argparse's usage errors and ``sys.exit('message')``); 1 anything unexpected (a bug: the message
says to rerun with ``--debug`` and report it); 130 Ctrl-C; 128 + n for signal n (143 for SIGTERM), as a shell
reports a killed process. ``--debug`` anywhere on the command line (or ``EXTRACTER_DEBUG=1``) prints the traceback
as well; the flag is removed before ``main`` sees ``argv``.

While ``main`` runs, SIGTERM and SIGHUP raise :class:`~extracter.utils.file_io.Terminated`, so temporary files are
removed (see :mod:`extracter.utils.file_io`), and an :class:`~extracter.utils.input_warning.InputWarning` (e.g. an
:class:`~extracter.data.image_io.ImageInputWarning`) prints as one ``warning: <message>`` line.
"""

import argparse
import errno
import os
import sys
import traceback
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Type

from tqdm import tqdm

from extracter.utils.file_io import Terminated, interruptible, left_behind
from extracter.utils.input_warning import InputWarning

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
KNOWN_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, OSError, MemoryError)


def format_error(err: BaseException) -> str:
    """The message of a known error, as one readable line (several for errors that list problems)."""
    if isinstance(err, MemoryError):
        detail = str(err)
        return 'out of memory' + (f': {detail}' if detail else '') + \
            ' (use smaller images or tiles, or a machine with more memory)'
    if isinstance(err, OSError) and err.strerror:
        # '[Errno 2] No such file or directory: x' -> 'x: No such file or directory'
        where = ' -> '.join(str(f) for f in (err.filename, err.filename2) if f is not None)
        if err.errno == errno.ENOSPC:
            return f'{where + ": " if where else ""}{err.strerror} (free some space and run again)'
        return f'{where}: {err.strerror}' if where else err.strerror
    return str(err) or type(err).__name__


def _strip_flag(argv: Sequence[str], flag: str) -> Tuple[List[str], bool]:
    argv = list(argv)
    found = flag in argv
    return [a for a in argv if a != flag], found


def _write_line(text: str, file=None) -> None:
    """One line on stderr, on a line of its own even while a progress bar is drawn (tqdm clears and redraws it)."""
    tqdm.write(text, file=sys.stderr if file is None else file)


def _close_progress_bars() -> None:
    """Close the progress bars still drawn (a run that failed midway), so that the error is the last line."""
    for bar in list(getattr(tqdm, '_instances', ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001  a bar that cannot be closed must not hide the error
            pass


def _show_warning(previous):
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            _write_line(f'warning: {message}', file)
        else:
            previous(message, category, filename, lineno, file, line)
    return show


def run_main(main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None,
             debug_flag: str = '--debug', known: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run ``main(argv)`` (``argv`` defaults to ``sys.argv[1:]``) and return its exit status, turning errors into
    messages as described in the module docstring. ``SystemExit`` raised by ``main`` (argparse's usage errors, exit
    status 2, or ``--help``) becomes its exit status, so that ``main(argv)`` can be called in-process."""
    argv, debug = _strip_flag(sys.argv[1:] if argv is None else argv, debug_flag)
    debug = debug or os.environ.get('EXTRACTER_DEBUG', '') not in ('', '0')

    def fail(status: int, message: str) -> int:
        _close_progress_bars()
        if debug:
            traceback.print_exc(file=sys.stderr)
        print(f'error: {message}', file=sys.stderr)
        return status

    previous_show = warnings.showwarning
    warnings.showwarning = _show_warning(previous_show)
    torch = sys.modules.get('torch')  # a CLI run in-process (tests) leaves torch's global modes as it found them
    torch_state = (torch.is_grad_enabled(), torch.get_num_threads()) if torch is not None else None
    try:
        with interruptible():
            status = main(argv)
        return EXIT_OK if status is None else int(status)
    except Terminated as err:
        return fail(int(err.code), f'{err}; {left_behind(err)}')
    except KeyboardInterrupt as err:
        return fail(EXIT_INTERRUPTED, f'interrupted (Ctrl-C); {left_behind(err)}')
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        try:
            sys.stdout = open(os.devnull, 'w')  # noqa: SIM115  (keep Python from failing again on exit)
        except OSError:
            pass
        return EXIT_UNEXPECTED
    except KNOWN_ERRORS + tuple(known) as err:
        return fail(EXIT_ERROR, format_error(err))
    except SystemExit as err:  # argparse's usage errors (2, message already printed) and --help (0)
        if err.code is None or isinstance(err.code, int):
            return int(err.code or 0)
        # sys.exit('message'): a usage error stated by the script itself (Python would exit 1, as for a bug)
        return fail(EXIT_ERROR, str(err.code).removeprefix('error: '))
    except Exception as err:  # noqa: BLE001  the boundary: a bug, reported as one
        hint = '' if debug else f'; rerun with {debug_flag} for the traceback'
        return fail(EXIT_UNEXPECTED, f'unexpected {type(err).__name__}: {err}{hint} (please report it)')
    finally:
        warnings.showwarning = previous_show
        if torch_state is not None:
            torch.set_grad_enabled(torch_state[0])
            torch.set_num_threads(torch_state[1])


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one ``error:`` line (the flag, the value and where to look)
    instead of the whole usage text; exit status 2, as argparse's."""

    def error(self, message: str):
        print(f'error: {message} (see {self.prog} --help)', file=sys.stderr)
        raise SystemExit(EXIT_ERROR)
