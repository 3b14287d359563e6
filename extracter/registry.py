"""This package's registries (architectures, datasets, losses, models) and their link to BasicSR's.

Our components register here, with BasicSR's interface (``@ARCH_REGISTRY.register()``, ``ARCH_REGISTRY.get(name)``),
so that inference (``infer.py``, the web page, :func:`~extracter.inference.engine.run_refsr`) never imports basicsr:
its package import pulls torchvision, ``torch._dynamo`` and scipy, about 1.5 s of a 3 s start on 2 cores.

A lookup (``get``, ``in``, iteration) imports the registry's package first, so ``ARCH_REGISTRY.get('Extracter')``
works after ``from extracter.registry import ARCH_REGISTRY`` alone.

Training, testing and BasicSR's builders (``build_network``, ``build_dataset``, ``build_loss``, ``build_model``) find
our components by name in BasicSR's registries, as in any BasicSR project, once :func:`use_basicsr` has run: it
installs the compatibility shim (:mod:`extracter.compat`), imports our component packages, copies every entry into
BasicSR's registry of the same kind and forwards later registrations. ``extracter.models``, ``extracter.losses``,
``extracter.pipeline`` (``train.py``, ``test.py``) and the option checks call it; call it yourself before using
BasicSR's builders or registries with our names.
"""

import importlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

__all__ = ['Registry', 'ARCH_REGISTRY', 'DATASET_REGISTRY', 'LOSS_REGISTRY', 'MODEL_REGISTRY', 'use_basicsr',
           'basicsr_registry']


class Registry:
    """Name -> class or function, with the interface of BasicSR's ``Registry`` (register, get, ``in``, iteration)."""

    def __init__(self, name: str, package: Optional[str] = None) -> None:
        self._name = name
        self._package = package  # imported on the first lookup: its modules register their components
        self._obj_map: Dict[str, Any] = {}
        self._mirror: Optional[Any] = None  # BasicSR's registry of the same kind, once linked

    def _load(self) -> None:
        if self._package is not None:
            importlib.import_module(self._package)  # a failed import is retried (and raises again) next lookup
            self._package = None

    def _do_register(self, name: str, obj: Any) -> None:
        if name in self._obj_map:
            raise KeyError(f"An object named '{name}' was already registered in '{self._name}' registry!")
        self._obj_map[name] = obj
        if self._mirror is not None:
            _publish(self._mirror, name, obj)

    def register(self, obj: Any = None) -> Optional[Callable]:
        """``@REGISTRY.register()`` on a class or function, or ``REGISTRY.register(obj)``; the name is its
        ``__name__``."""
        if obj is None:
            def deco(func_or_class: Any) -> Any:
                self._do_register(func_or_class.__name__, func_or_class)
                return func_or_class
            return deco
        self._do_register(obj.__name__, obj)
        return None

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._obj_map:
            raise KeyError(f"No object named '{name}' found in '{self._name}' registry!")
        return self._obj_map[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._obj_map

    def __iter__(self) -> Iterator[Tuple[str, Any]]:
        self._load()
        return iter(list(self._obj_map.items()))

    def keys(self):
        self._load()
        return self._obj_map.keys()

    def link(self, basicsr_registry: Any) -> None:
        """Copy every entry into ``basicsr_registry`` and forward later registrations (idempotent)."""
        self._mirror = basicsr_registry
        for name, obj in list(self._obj_map.items()):
            _publish(basicsr_registry, name, obj)


def _publish(registry: Any, name: str, obj: Any) -> None:
    if name in registry:
        if registry.get(name) is obj:
            return
        raise KeyError(f"BasicSR's {registry._name} registry already has a different object named '{name}' "
                       f'(registered by another package imported in this process)')
    registry.register(obj)


ARCH_REGISTRY = Registry('arch', 'extracter.archs')
DATASET_REGISTRY = Registry('dataset', 'extracter.data')
LOSS_REGISTRY = Registry('loss', 'extracter.losses')
MODEL_REGISTRY = Registry('model', 'extracter.models')

_COMPONENT_PACKAGES = ('extracter.archs', 'extracter.data', 'extracter.losses', 'extracter.models')


_linked = False  # set once use_basicsr has completed: later calls (every option check makes one) return at once


def use_basicsr() -> None:
    """Make basicsr importable (:mod:`extracter.compat`) and publish all of this package's components in BasicSR's
    registries, now and as they register later (idempotent; a no-op after the first call has completed)."""
    global _linked
    if _linked:
        return
    from extracter.compat import install
    from extracter.utils.startup import gc_paused

    with gc_paused():
        install()
        from basicsr.utils import registry as basicsr_registry

        for ours, name in ((ARCH_REGISTRY, 'ARCH_REGISTRY'), (DATASET_REGISTRY, 'DATASET_REGISTRY'),
                           (LOSS_REGISTRY, 'LOSS_REGISTRY'), (MODEL_REGISTRY, 'MODEL_REGISTRY')):
            ours.link(getattr(basicsr_registry, name))
        for package in _COMPONENT_PACKAGES:  # already imported (or being imported): a no-op
            importlib.import_module(package)
    _linked = True


def basicsr_registry(kind: str) -> Any:
    """BasicSR's registry of ``kind`` ('arch', 'dataset', 'loss', 'model', 'metric') after :func:`use_basicsr`: ours
    and BasicSR's own components (e.g. its ``PairedImageDataset``, ``L1Loss``, ``psnr``)."""
    use_basicsr()
    from basicsr.utils import registry

    return getattr(registry, f'{kind.upper()}_REGISTRY')
