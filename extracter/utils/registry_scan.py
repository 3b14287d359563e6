"""Import every module of a package folder whose file name ends with a suffix (BasicSR's registry pattern)."""

import importlib
from pathlib import Path
from typing import List


def import_modules(package_file: str, package_name: str, suffix: str) -> List[object]:
    """Import ``<package_name>.<stem>`` for each ``*<suffix>.py`` beside ``package_file`` (not ``_*.py``), sorted by
    name."""
    folder = Path(package_file).parent
    names = sorted(p.stem for p in folder.glob(f'*{suffix}.py') if not p.stem.startswith('_'))
    return [importlib.import_module(f'{package_name}.{name}') for name in names]
