"""The import map of ``extracter``: its units (subpackages and top-level modules) form layers, every import runs down
them, and nothing imports in a circle. docs/architecture.md ("Layers") explains the layers and the one exception.

The map is read from the source with ``ast`` (nothing is imported). Its rule:
- every ``import`` / ``from ... import`` statement counts, wherever it stands: at the top, inside a function (a lazy
  import), under a condition; ``from package import name`` counts as an import of the submodule ``package.name``
  when there is one, else of ``package``; relative imports are resolved;
- a string that is exactly the dotted name of one of our modules (``'extracter.archs'``) counts as an import by name:
  such strings are what ``importlib.import_module`` receives (the registries' lazy loading, the schema's ``CHOICES``);
- importing ``a.b.c`` counts as an import of ``a.b.c`` alone, not of the packages ``a`` and ``a.b`` whose
  ``__init__`` Python runs first.
"""

import ast
import re
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = 'extracter'

# Bottom to top. A unit imports only units of lower layers (not its own layer's other units).
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ('utils', 'compat', 'version'),  # the base: imports nothing else of extracter
    ('registry',),  # our registries (BasicSR's interface)
    ('search',),  # the texture search: methods, specs, the transfer (below the networks that use it)
    ('archs',),  # networks; SCALE, the x4 factor, is theirs
    ('data', 'losses', 'evaluation', 'convert'),  # what uses the networks' facts and modules
    ('gallery',),  # references found in a folder of photos: the networks' features, the search, image reading
    ('inference',),  # the one inference engine
    ('options',),  # the option files' schema: checks every component, including the inference options
    ('models',),  # BasicSR's model lifecycle (training, validation, saving)
    ('pipeline',),  # training and testing
    ('app', 'tools', 'infer', 'train', 'test', PACKAGE),  # entry points (PACKAGE: extracter/__init__.py)
)

# The one exception: a registry lookup imports, by name, the package that fills it (``Registry('arch',
# 'extracter.archs')``; ``use_basicsr`` imports all four), so that ``ARCH_REGISTRY.get('Extracter')`` works after
# importing the registry alone. No import statement may run up.
ALLOWED_UPWARD_BY_NAME = {('registry', target) for target in ('archs', 'data', 'losses', 'models')}

Edge = Tuple[str, str, str, int, str]  # (from module, to module, file, line, 'import' or 'by name')


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _existing_module(dotted: str) -> Optional[str]:
    """The longest prefix of ``dotted`` that is one of our modules or packages."""
    parts = dotted.split('.')
    while parts and parts[0] == PACKAGE:
        path = ROOT.joinpath(*parts)
        if path.with_suffix('.py').is_file() or (path / '__init__.py').is_file():
            return '.'.join(parts)
        parts = parts[:-1]
    return None


def _imported_names(node: ast.AST, module: str, is_package: bool) -> List[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split('.') if is_package else module.split('.')[:-1]
            base = base[:len(base) - node.level + 1]
            source = '.'.join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ''
        return [f'{source}.{alias.name}' for alias in node.names]  # a submodule, or else a name in ``source``
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r'\w+(\.\w+)+', node.value):
        return [node.value]
    return []


def import_edges() -> List[Edge]:
    edges = []
    for path in sorted((ROOT / PACKAGE).rglob('*.py')):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
            kind = 'by name' if isinstance(node, ast.Constant) else 'import'
            for name in _imported_names(node, module, path.name == '__init__.py'):
                target = _existing_module(name)
                if kind == 'by name' and target != name:
                    continue  # not exactly one of our modules: an ordinary string
                if target is not None and target != module:
                    edges.append((module, target, str(path.relative_to(ROOT)), node.lineno, kind))
    return edges


def unit(module: str) -> str:
    """The subpackage or top-level module of ``extracter`` that ``module`` belongs to."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else PACKAGE


def layer(name: str) -> int:
    for i, units in enumerate(LAYERS):
        if name in units:
            return i
    raise AssertionError(f'{name} is in no layer: add it to LAYERS (tests/test_layering.py) and to the "Layers" '
                         'section of docs/architecture.md')


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(edges: List[Edge]) -> str:
    return '\n'.join(f'  {path}:{line}: {src} -> {dst} ({kind})' for src, dst, path, line, kind in edges)


def test_the_map_sees_the_imports_it_must_see():
    """The reader finds a top-level import, a lazy one inside a function and an import by name."""
    edges = {(src, dst, kind) for src, dst, _, _, kind in import_edges()}
    assert ('extracter.models.refsr_model', 'extracter.inference.engine', 'import') in edges
    assert ('extracter.inference.network', 'extracter.registry', 'import') in edges  # inside functions
    assert ('extracter.registry', 'extracter.archs', 'by name') in edges


def test_no_circle_between_units_or_modules():
    edges = [e for e in import_edges() if e[4] == 'import']
    units: Dict[str, Set[str]] = {}
    modules: Dict[str, Set[str]] = {}
    for src, dst, *_ in edges:
        if unit(src) != unit(dst):
            units.setdefault(unit(src), set()).add(unit(dst))
        modules.setdefault(src, set()).add(dst)
    assert cycles(units) == [], 'circles between subpackages'
    assert cycles(modules) == [], 'circles between modules'


def test_every_import_runs_down_the_layers():
    """Each unit imports only lower layers; the one exception is the registry's import by name of its packages."""
    wrong = []
    for edge in import_edges():
        src, dst = unit(edge[0]), unit(edge[1])
        if src == dst or layer(dst) < layer(src):
            continue
        if edge[4] == 'by name' and (src, dst) in ALLOWED_UPWARD_BY_NAME:
            continue
        wrong.append(edge)
    assert not wrong, 'imports that do not run down the layers (docs/architecture.md, "Layers"):\n' + _describe(wrong)


def test_utils_is_the_base():
    """``extracter.utils`` imports nothing else of the package (the first layer; a plain message for it)."""
    up = [e for e in import_edges() if unit(e[0]) == 'utils' and unit(e[1]) != 'utils']
    assert not up, 'extracter.utils imports other parts of extracter:\n' + _describe(up)


def test_the_allowed_upward_imports_exist():
    """The exception is stated where it happens: drop it from ALLOWED_UPWARD_BY_NAME if the registry stops."""
    upward = {(unit(src), unit(dst)) for src, dst, *_, kind in import_edges()
              if kind == 'by name' and layer(unit(dst)) > layer(unit(src))}
    assert upward == ALLOWED_UPWARD_BY_NAME
