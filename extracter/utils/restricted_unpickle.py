"""Load untrusted torch checkpoints that hold more than tensors, without importing or running anything they name.

Checkpoints written by training frameworks (mmengine, mmcv, Lightning, ...) carry objects of their own classes
(``mmengine.logging.HistoryBuffer`` in ``message_hub``, numpy scalars and arrays in ``meta``, ...), so
``torch.load(..., weights_only=True)`` refuses them, and plain ``torch.load`` would import those modules and run
whatever their pickled ``__reduce__`` names. :func:`restricted_load` passes ``torch.load`` a pickle module whose
unpickler resolves a fixed allowlist of names (tensor rebuilding, ``OrderedDict``, a few builtin containers and
numbers, torch dtypes) and turns every other global into an inert :class:`Placeholder` class. Loading therefore
never imports a module, and a placeholder "called" by the pickle (REDUCE/NEWOBJ/BUILD) only records its
arguments. Tensors come back as tensors; everything else keeps its dict/list/tuple/str/number structure.

A file that tries to run code is hostile, and :func:`restricted_load` refuses it (:class:`HostilePickleError`, one
line naming the file and the callable; nothing was run): the unpickler records every callable the pickle calls
(REDUCE, and the INST/OBJ opcodes of protocols 0-1), and a call of a global that is neither allow-listed nor one
that only rebuilds data (:func:`runs_code`: numpy's scalar/array/dtype reconstructors, ``copyreg._reconstructor``,
``datetime``, ``torch.device``, ... or a class outside the modules that run code: ``Enum`` members, ``Path``) is
code execution: ``os.system``, ``builtins.eval``/``exec``, ``subprocess.*``, any function. Objects restored from
their class (NEWOBJ + BUILD, as mmengine's ``HistoryBuffer`` and every plain Python object are) are data, and so is
``getattr(SomeClass, 'method')``, which is how pickle references a method (mmengine's ``HistoryBuffer.min``): only
calling the result would run it.

There is no fallback to unrestricted unpickling.
"""

import _compat_pickle
import contextvars
import os
import pickle
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch._utils as torch_utils

_PLACEHOLDER_CACHE: Dict[str, type] = {}


class Placeholder:
    """An object of a class (or the result of a function) that the checkpoint named and that was not loaded.

    ``qualname`` is the ``module.name`` the pickle referred to; ``args``/``kwargs`` are what the pickle passed to it,
    ``state`` its ``__setstate__`` argument, ``items``/``mapping`` any list/dict items it appended. Nothing else
    happens: the named class is never imported.
    """

    qualname = '?'

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.mapping = args, kwargs, None, [], {}
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def append(self, item) -> None:
        self.items.append(item)

    def extend(self, items) -> None:
        self.items.extend(items)

    def __setitem__(self, key, value) -> None:
        self.mapping[key] = value

    def __repr__(self) -> str:
        return f'<not loaded: {self.qualname}>'


def placeholder_class(qualname: str) -> type:
    """The inert stand-in class for the global ``qualname`` (one class per name, so isinstance checks work)."""
    cls = _PLACEHOLDER_CACHE.get(qualname)
    if cls is None:
        cls = type(f'Placeholder[{qualname}]', (Placeholder,), {'qualname': qualname, '__module__': __name__})
        _PLACEHOLDER_CACHE[qualname] = cls
    return cls


def _no_hooks(hooks) -> 'OrderedDict':
    # backward hooks are callables; a checkpoint has no business restoring any
    return OrderedDict()


def _rebuild_tensor(storage, storage_offset, size, stride):
    return torch_utils._rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return torch_utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                          _no_hooks(backward_hooks), metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return torch_utils._rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                                          _no_hooks(backward_hooks), dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return torch.nn.Parameter(data, requires_grad)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return torch.nn.Parameter(data, requires_grad)  # the extra Python state of a Parameter subclass is dropped


def _codecs_encode(obj, encoding='utf-8', *rest):
    # protocol-2 pickles write bytes as _codecs.encode(str, 'latin1')
    if isinstance(obj, str) and isinstance(encoding, str) and not rest:
        return obj.encode(encoding)
    return placeholder_class('_codecs.encode')(obj, encoding, *rest)


def _attribute(obj, name, *default):
    """``builtins.getattr`` as a pickle uses it, to reference a method (``getattr(HistoryBuffer, 'min')``, a bound
    method ``getattr(<object>, 'min')``): the placeholder of ``<class>.<name>``, nothing looked up. On anything but a
    placeholder, an inert record."""
    if isinstance(obj, (Placeholder, type)) and getattr(obj, 'qualname', None) and isinstance(name, str) \
            and not default:
        return placeholder_class(f'{obj.qualname}.{name}')
    return placeholder_class('builtins.getattr')(obj, name, *default)


_ALLOWED: Dict[Tuple[str, str], Any] = {
    ('collections', 'OrderedDict'): OrderedDict,
    ('collections', 'Counter'): Counter,  # MultiStepLR's milestones in a training state
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter_with_state,
    ('torch', 'Size'): torch.Size,
    ('_codecs', 'encode'): _codecs_encode,
}
for _module in ('builtins', '__builtin__'):  # plain containers and numbers that protocol 2 writes as calls
    for _name, _obj in (('set', set), ('frozenset', frozenset), ('complex', complex), ('bytearray', bytearray),
                        ('getattr', _attribute)):
        _ALLOWED[(_module, _name)] = _obj
# dtype globals (tensor metadata); read from the module dict so that no lazy torch submodule import can be triggered
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}

# Calls that only rebuild data (their results stay placeholders): numpy's scalars, arrays, dtypes and random states,
# protocol 0-1 objects, the standard library's value types whose class names are lower case, torch's devices and
# tensor rebuilders. Any other call of a global that is not allow-listed runs code (see runs_code).
DATA_CALLS = frozenset({
    *(f'numpy.{core}.multiarray.{name}' for core in ('core', '_core') for name in ('scalar', '_reconstruct')),
    *(f'numpy.{core}.numeric._frombuffer' for core in ('core', '_core')),
    'numpy.dtype', 'numpy.ndarray', 'numpy.random._pickle.__randomstate_ctor',
    'numpy.random._pickle.__bit_generator_ctor', 'numpy.random._pickle.__generator_ctor',
    'copyreg._reconstructor', 'copy_reg._reconstructor', 'copyreg.__newobj__', 'copyreg.__newobj_ex__',
    'collections.defaultdict', 'collections.deque', 'functools.partial',  # (calling a partial is a call in turn)
    *(f'builtins.{name}' for name in ('slice', 'range', 'object', 'list', 'dict', 'tuple', 'int', 'float', 'str',
                                      'bytes', 'bool')),
    *(f'datetime.{name}' for name in ('date', 'time', 'datetime', 'timedelta', 'timezone')),
    'torch.device', 'torch._tensor._rebuild_from_type_v2', 'torch._utils._rebuild_device_tensor_from_numpy',
    'torch._utils._rebuild_qtensor', 'torch._utils._rebuild_sparse_tensor', 'torch._utils._rebuild_nested_tensor',
    'torch._utils._rebuild_meta_tensor_no_storage', 'torch._utils._rebuild_wrapper_subclass',
})
# Modules whose callables run code, start processes, open files or import: a call into them is never data, whatever
# the name looks like (subprocess.Popen is a class).
CODE_MODULES = frozenset({
    'os', 'posix', 'nt', 'subprocess', 'builtins', '__builtin__', 'sys', 'shutil', 'importlib', 'runpy', 'pty',
    'socket', 'code', 'codeop', 'ctypes', 'pickle', '_pickle', 'marshal', 'types', 'functools', 'operator',
    'webbrowser', 'multiprocessing', 'threading', '_thread', 'asyncio', 'signal', 'timeit', 'pdb', 'bdb', 'trace',
    'profile', 'cProfile', 'commands', 'platform', 'popen2', 'pip', 'setuptools', 'distutils', 'zipimport',
    'pkgutil', 'io', '_io', 'codecs', 'logging', 'tempfile', 'glob', 'urllib', 'http', 'ftplib', 'smtplib',
    'telnetlib', 'requests', 'sqlite3', 'tkinter', 'idlelib', 'lib2to3', 'ensurepip', 'venv',
})


_SHOWN_MODULES = {'posix': 'os', 'nt': 'os'}


def runs_code(qualname: str) -> bool:
    """Whether calling the global ``qualname`` (``module.name``) runs code rather than rebuild data: anything in
    :data:`CODE_MODULES`, and any function (a lower-case name) not in :data:`DATA_CALLS`. A class outside those
    modules (a capitalised name: an ``Enum`` member, a ``Path``, a framework's record type) only builds an object."""
    if qualname in DATA_CALLS:
        return False
    top = qualname.split('.', 1)[0]
    last = qualname.rsplit('.', 1)[-1].lstrip('_')
    return top in CODE_MODULES or not last[:1].isupper()


def shown_name(qualname: str) -> str:
    """A global as the user knows it: ``posix.system`` -> ``os.system``."""
    module, _, name = qualname.partition('.')
    return f'{_SHOWN_MODULES.get(module, module)}.{name}' if name else qualname


class HostilePickleError(ValueError):
    """A checkpoint whose pickle calls code (``os.system``, ``eval``, ...); the message names the file and the
    callable. Nothing was run."""


MADE_BY = 'an object made by '  # how a call of an object (not of a global) is named


@dataclass
class PickleReport:
    """What one restricted load met: ``replaced``, the globals that became placeholders (in order, once each);
    ``calls``, the non-allow-listed callables the pickle called (placeholder classes by name, an object the pickle
    made as ``an object made by <name>``)."""

    replaced: List[str] = field(default_factory=list)
    calls: List[str] = field(default_factory=list)

    def code_calls(self) -> List[str]:
        """The calls that would have run code (:func:`runs_code`), once each, in order."""
        out: List[str] = []
        for name in self.calls:
            if (name.startswith(MADE_BY) or runs_code(name)) and name not in out:
                out.append(name)
        return out

    def refuse_code(self, source: str) -> None:
        """Raise :class:`HostilePickleError` naming ``source`` if the pickle calls code."""
        found = self.code_calls()
        if found:
            shown = [n if n.startswith(MADE_BY) else shown_name(n) for n in found[:3]]
            shown += [f'{len(found) - 3} more'] if found[3:] else []
            names = shown[0] if len(shown) == 1 else f'{", ".join(shown[:-1])} and {shown[-1]}'
            raise HostilePickleError(f'{source}: refused: the pickle calls {names} (a checkpoint never needs to run '
                                     f'code); nothing was run')


_REPORT: 'contextvars.ContextVar[Optional[PickleReport]]' = contextvars.ContextVar('restricted_unpickle_report',
                                                                                    default=None)


def resolve_global(module: str, name: str) -> Any:
    """What a pickle's global ``module.name`` becomes: an allowlisted object or a placeholder class."""
    allowed = _ALLOWED.get((module, name))
    if allowed is not None:
        return allowed
    if module == 'torch' and name in _DTYPES:
        return _DTYPES[name]
    return placeholder_class(f'{module}.{name}')


def _is_placeholder_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, Placeholder)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that never imports: globals resolve through :func:`resolve_global`. It is Python's own
    unpickler (the pure-Python one, so that every call the pickle makes is seen: REDUCE, INST, OBJ); what it replaces
    and calls is recorded in the :class:`PickleReport` of the :func:`restricted_load` that runs it."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        report = _REPORT.get()
        self.report = PickleReport() if report is None else report

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names (__builtin__, commands.Popen), as pickle maps them
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = resolve_global(module, name)
        if _is_placeholder_class(found) and found.qualname not in self.report.replaced:
            self.report.replaced.append(found.qualname)
        return found

    def _note_call(self, func: Any) -> None:
        if _is_placeholder_class(func):
            self.report.calls.append(func.qualname)
        elif isinstance(func, Placeholder):  # an object the pickle made, called in turn
            self.report.calls.append(f'{MADE_BY}{func.qualname}')

    def load_reduce(self) -> None:
        self._note_call(self.stack[-2])
        pickle._Unpickler.load_reduce(self)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass, args) -> None:  # INST and OBJ (protocols 0-1) call the class
        self._note_call(klass)
        super()._instantiate(klass, args)


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load`` (it uses ``Unpickler`` and ``load``)."""

    __name__ = 'extracter.utils.restricted_unpickle'
    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()


def restricted_load(path, map_location='cpu', refuse_code: bool = True, report: Optional[PickleReport] = None) -> Any:
    """Load a torch checkpoint, keeping tensors and plain containers and replacing every other object by an inert
    :class:`Placeholder`; nothing named in the file is imported or executed.

    A pickle that calls code is refused (:class:`HostilePickleError`: the file and the callable, e.g. ``model.pth:
    refused: the pickle calls os.system (...)``), also when the rest of the file cannot be read, unless
    ``refuse_code`` is False. ``report``, if given, receives what was replaced and called (:class:`PickleReport`).

    ``weights_only=False`` is only what lets ``torch.load`` accept our ``pickle_module``; the restriction is ours.
    """
    report = PickleReport() if report is None else report
    source = os.fspath(path)
    token = _REPORT.set(report)
    try:
        obj = torch.load(source, map_location=map_location, pickle_module=_RestrictedPickleModule, weights_only=False)
    except Exception:
        if refuse_code:
            report.refuse_code(source)  # a hostile pickle is named as such even if the rest is junk
        raise
    finally:
        _REPORT.reset(token)
    if refuse_code:
        report.refuse_code(source)
    return obj


def find_placeholders(obj, path: str = '') -> Dict[str, str]:
    """``{location: qualname}`` of every placeholder (an object, or a class or function the structure refers to) in a
    loaded structure (for reporting what was not loaded)."""
    found: Dict[str, str] = {}
    if isinstance(obj, Placeholder) or _is_placeholder_class(obj):
        found[path or '<root>'] = obj.qualname
    elif isinstance(obj, dict):
        for k, v in obj.items():
            found.update(find_placeholders(v, f'{path}.{k}' if path else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found.update(find_placeholders(v, f'{path}[{i}]'))
    return found
