"""Atomic writes and no-overwrite checks for everything we save."""

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

PathLike = Union[str, os.PathLike]


def refuse_overwrite(path: PathLike, overwrite: bool, flag: str = '--overwrite') -> None:
    """Raise if ``path`` exists and ``overwrite`` is not set."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f'{path} already exists; pass {flag} to replace it')


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file in the target folder, then rename it onto ``path``.

    A crash mid-write leaves the previous file (if any) intact; the temporary file is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path: PathLike) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: PathLike, text: str) -> None:
    def _write(tmp: str) -> None:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)

    atomic_write(path, _write)
