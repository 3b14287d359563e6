"""Checks of option mappings that any option reader shares: key names against a set or a signature (with a suggestion
for typos), plain types from a constructor's annotations, scalar types and ranges, YAML errors in one line. Each
mistake is an :class:`OptionError` naming the file and the dotted key. The option files' schema
(:mod:`extracter.options.schema`) and the network loader of inference (:mod:`extracter.inference.network`) use them.
"""

import difflib
import inspect
import math
from typing import Any, Callable, Dict, Iterable, Optional, Tuple


class OptionError(ValueError):
    """A mistake in an option file: an unknown or misspelt key, a bad value, or a file it names that is missing."""


def where(source: str, key: str) -> str:
    """``<file>: <key>`` (the key alone when there is no file): the place errors name."""
    return f'{source}: {key}' if source else key


def check_keys(given: Iterable[str], allowed: Iterable[str], prefix: str, source: str = '') -> None:
    """Raise :class:`OptionError` for the first key of ``given`` not in ``allowed``, suggesting the closest one."""
    allowed = sorted(set(allowed))
    for key in given:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f'; allowed keys: {", ".join(allowed)}'
        raise OptionError(f"{where(source, 'unknown option key ' + repr(prefix + str(key)))}{hint}")


def signature_keys(fn: Callable, skip: int = 0) -> Tuple[set, bool]:
    """Named parameters of ``fn`` (a class: its ``__init__``) after the first ``skip``; and whether it takes
    ``**kwargs`` (then any key is accepted)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {p.name for p in params if p.kind in named}
    return names, var_kw


_SIMPLE_TYPES = {int: 'an integer', float: 'a number', bool: 'true or false', str: 'a string'}


def _simple_types(annotation: Any) -> Optional[Tuple[type, ...]]:
    """The plain types an annotation allows (``int``, ``Optional[str]``, ``Union[int, float]``), or None when it
    allows anything else too (a sequence, a mapping, a class) and is not checked here."""
    import typing

    if annotation in _SIMPLE_TYPES:
        return (annotation,)
    if typing.get_origin(annotation) is typing.Literal:
        return (annotation,)
    if typing.get_origin(annotation) is typing.Union:
        out = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                out.append(type(None))
            elif arg in _SIMPLE_TYPES or typing.get_origin(arg) is typing.Literal:
                out.append(arg)
            else:
                return None
        return tuple(out)
    return None


def has_type(value: Any, kinds: Tuple[Any, ...]) -> bool:
    """Whether ``value`` is one of ``kinds``: plain types, ``Literal`` choices; a bool is no int, an int is a float."""
    import typing

    for kind in kinds:
        if typing.get_origin(kind) is typing.Literal:
            if any(value == choice and type(value) is type(choice) for choice in typing.get_args(kind)):
                return True
            continue
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind in (bool, str, type(None)) and isinstance(value, kind):
            return True
    return False


def check_annotated_types(block: Dict[str, Any], target: Callable, prefix: str, source: str,
                          skip: Iterable[str] = ('type',)) -> None:
    """Values of ``block`` against the type annotations of ``target``'s parameters (a class: its ``__init__``):
    the plain ones (int, float, bool, str, their Optional/Union) are checked, so that ``n_feats: eight`` fails here
    with the file and the key, not inside the constructor; a float must be finite. The constructor still checks
    ranges and choices."""
    import typing

    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001  unresolvable annotations (a foreign class): nothing to check
        return
    for key, value in block.items():
        if key in skip or key not in hints:
            continue
        kinds = _simple_types(hints[key])
        if kinds is not None and not has_type(value, kinds):
            raise OptionError(where(source, f'{prefix}{key} must be {_describe(kinds)}, got {value!r}'))
        if kinds is not None and float in kinds:
            check_finite(value, prefix + key, source)


def _describe(kinds: Tuple[Any, ...]) -> str:
    import typing

    words = []
    for kind in kinds:
        if typing.get_origin(kind) is typing.Literal:
            words.append('one of ' + ', '.join(repr(c) for c in typing.get_args(kind)))
        else:
            words.append(_SIMPLE_TYPES.get(kind, 'null'))
    return ' or '.join(words)


def check_finite(value: Any, key: str, source: str) -> None:
    """Refuse inf and NaN (YAML's ``.inf``, ``.nan``, or a number such as ``1.0e400`` that overflows): no option
    means anything by them, and a NaN would pass every range check."""
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(where(source, f'{key} must be a finite number, got {value!r}'))


def check_all_finite(node: Any, key: str, source: str) -> None:
    """:func:`check_finite` on every number of ``node`` (the options at the dotted ``key``; '' for the top level),
    its mappings and lists (``train.optim_g.betas[1]``), also the numbers no schema entry or annotation names."""
    if isinstance(node, dict):
        for name, value in node.items():
            check_all_finite(value, f'{key}.{name}' if key else str(name), source)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_all_finite(value, f'{key}[{i}]', source)
    else:
        check_finite(node, key, source)


def check_scalar(value: Any, kind: type, lo: Optional[float], hi: Optional[float], key: str, source: str) -> None:
    """A type (int: a whole number, not a bool; float: any finite number; bool: true/false; str) and an inclusive
    range; the error names the key."""
    if not has_type(value, (kind,)):
        raise OptionError(where(source, f'{key} must be {_SIMPLE_TYPES[kind]}, got {value!r}'))
    if kind in (bool, str):
        return
    check_finite(value, key, source)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f'>= {lo}' if hi is None else f'between {lo} and {hi}'
        raise OptionError(where(source, f'{key} must be {bounds}, got {value!r}'))


def yaml_problem(err: Exception) -> str:
    """A YAML parse error in one line: what and where (``line L, column C``)."""
    mark = getattr(err, 'problem_mark', None)
    problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
    return f'{problem} (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else problem
