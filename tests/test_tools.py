"""Where the command lines live: the user tools in the package (extracter/tools/, console scripts, thin scripts/
wrappers), the developer benchmarks outside it (benchmarks/, run as ``python -m``), and no path tricks."""

import ast
import importlib
import re

import pytest

from tests.data_helpers import REPO_ROOT

TOOLS = ('demo', 'convert_official', 'create_lmdb', 'prepare_vgg19', 'make_demo_trainset', 'show_dataset')


def console_scripts() -> dict:
    """``name -> 'module:function'`` of setup.py's console scripts (read, not run)."""
    text = (REPO_ROOT / 'setup.py').read_text()
    return dict(re.findall(r"'([\w-]+) = ([\w.]+:\w+)'", text))


def test_every_console_script_points_at_a_main():
    scripts = console_scripts()
    for tool in TOOLS:
        assert f'extracter.tools.{tool}:main' in scripts.values(), tool
    for name, target in scripts.items():
        module, func = target.split(':')
        assert callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.parametrize('tool', TOOLS)
def test_scripts_are_thin_wrappers_of_the_tools(tool):
    tree = ast.parse((REPO_ROOT / 'scripts' / f'{tool}.py').read_text())
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [(f'extracter.tools.{tool}', ['main'])]
    assert len([n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]) == 0
    assert callable(importlib.import_module(f'extracter.tools.{tool}').main)


def test_scripts_holds_only_the_user_tools():
    assert sorted(p.stem for p in (REPO_ROOT / 'scripts').glob('*.py')) == sorted(TOOLS)


def test_sys_path_is_changed_only_by_the_three_entry_scripts():
    found = sorted(str(p.relative_to(REPO_ROOT)) for folder in ('extracter', 'scripts', 'benchmarks')
                   for p in (REPO_ROOT / folder).rglob('*.py') if 'sys.path.insert' in p.read_text())
    assert found == ['extracter/infer.py', 'extracter/test.py', 'extracter/train.py']


def test_tests_import_the_package_not_scripts_or_benchmarks():
    pattern = re.compile(r'^\s*(from|import)\s+(scripts|benchmarks)\b', re.MULTILINE)
    offenders = [p.name for p in (REPO_ROOT / 'tests').glob('*.py') if pattern.search(p.read_text())]
    assert offenders == []
