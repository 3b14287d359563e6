"""Load untrusted torch checkpoints that hold more than tensors, without importing or running anything they name.

Checkpoints written by training frameworks (mmengine, mmcv, Lightning, ...) carry objects of their own classes
(``mmengine.logging.HistoryBuffer`` in ``message_hub``, numpy scalars and arrays in ``meta``, ...), so
``torch.load(..., weights_only=True)`` refuses them, and plain ``torch.load`` would import those modules and run
whatever their pickled ``__reduce__`` names. :func:`restricted_load` passes ``torch.load`` a pickle module whose
unpickler resolves a fixed allowlist of names (tensor rebuilding, ``OrderedDict``, a few builtin containers and
numbers, torch dtypes) and turns every other global into an inert :class:`Placeholder` class. Loading therefore
never imports a module, and a placeholder "called" by the pickle (REDUCE/NEWOBJ/BUILD) only records its
arguments. Tensors come back as tensors; everything else keeps its dict/list/tuple/str/number structure.

There is no fallback to unrestricted unpickling.
"""

import pickle
from collections import OrderedDict
from typing import Any, Dict, Tuple

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


_ALLOWED: Dict[Tuple[str, str], Any] = {
    ('collections', 'OrderedDict'): OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_tensor_v3'): _rebuild_tensor_v3,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter_with_state,
    ('torch', 'Size'): torch.Size,
    ('_codecs', 'encode'): _codecs_encode,
}
for _module in ('builtins', '__builtin__'):  # plain containers and numbers that protocol 2 writes as calls
    for _name, _obj in (('set', set), ('frozenset', frozenset), ('complex', complex), ('bytearray', bytearray)):
        _ALLOWED[(_module, _name)] = _obj
# dtype globals (tensor metadata); read from the module dict so that no lazy torch submodule import can be triggered
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


def resolve_global(module: str, name: str) -> Any:
    """What a pickle's global ``module.name`` becomes: an allowlisted object or a placeholder class."""
    allowed = _ALLOWED.get((module, name))
    if allowed is not None:
        return allowed
    if module == 'torch' and name in _DTYPES:
        return _DTYPES[name]
    return placeholder_class(f'{module}.{name}')


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that never imports: globals resolve through :func:`resolve_global`."""

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name)


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load`` (it uses ``Unpickler`` and ``load``)."""

    __name__ = 'extracter.utils.restricted_unpickle'
    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()


def restricted_load(path, map_location='cpu') -> Any:
    """Load a torch checkpoint, keeping tensors and plain containers and replacing every other object by an inert
    :class:`Placeholder`; nothing named in the file is imported or executed.

    ``weights_only=False`` is only what lets ``torch.load`` accept our ``pickle_module``; the restriction is ours.
    """
    return torch.load(path, map_location=map_location, pickle_module=_RestrictedPickleModule, weights_only=False)


def find_placeholders(obj, path: str = '') -> Dict[str, str]:
    """``{location: qualname}`` of every placeholder in a loaded structure (for reporting what was not loaded)."""
    found: Dict[str, str] = {}
    if isinstance(obj, Placeholder):
        found[path or '<root>'] = obj.qualname
    elif isinstance(obj, dict):
        for k, v in obj.items():
            found.update(find_placeholders(v, f'{path}.{k}' if path else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found.update(find_placeholders(v, f'{path}[{i}]'))
    return found
