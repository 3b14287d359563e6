"""One descriptor per architecture family: what code outside ``archs/`` may need to know of an architecture, stated
once, by the architecture, in its own file (``@describe(...)`` on its class, which sets the class' ``descriptor``).

Consumers ask :func:`descriptor_of` (a network, its class or its registry name) and read the answer: whether it takes
a reference, its scale and size multiples for given options, the tile padding it needs, the memory planner's profile,
its feature extractor, whether its search geometry can change, which options its weights imply (:meth:`detect`) and
which official checkpoint formats the converters turn into it. Nothing outside ``archs/`` probes networks with
``hasattr``/``getattr`` or checks class names (``tests/test_descriptor.py`` checks it).

The WGAN-GP critic (``RefSRDiscriminator``) has no descriptor: it is a training loss' network, never built from a
checkpoint for inference, and none of these facts apply to it.
"""

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import torch
from torch import nn

Options = Mapping[str, Any]
StateDict = Mapping[str, torch.Tensor]

# the official checkpoint formats the converters handle (extracter/archs/convert*.py, scripts/convert_official.py)
CONVERTER_FORMATS: Dict[str, str] = {
    'extracter-official': 'the original EXTRACTER code (SR.*, FE.*)',
    'ttsr-official': 'the original TTSR code (MainNet.*, LTE.*)',
    'mmagic-ttsr': "OpenMMLab mmagic / mmediting's TTSR (generator.*, extractor.*)",
    'c2matching-official': 'the original C2-Matching code (net_g: content_extractor.*, dyn_agg_restore.*; '
                           'net_extractor / teacher / student: feature_extraction_image1/2.*)',
}

_DESCRIPTORS: Dict[str, 'ArchDescriptor'] = {}


@dataclass(frozen=True)
class ArchDescriptor:
    """The facts of one architecture family (see the module docstring).

    Attributes:
        name: the registry type (``network_g.type``), the class' name.
        arch: the class.
        uses_reference: reference-based (``net(lr, ref, ...)``: EXTRACTER, TTSR) or single-image (``net(lr)``: DRCT).
        scale: the upscaling factor, or the name of the constructor option that holds it (DRCT: ``'upscale'``).
        multiples: (LR side multiple, reference side multiple) of a network built from complete options (the
            constructor defaults filled in; see :meth:`size_multiples_for`). RefSR: the search stride and 4x the
            stride; DRCT: the window (both entries).
        min_tile_pad: the smallest tile padding (LR pixels) at which tiled inference matches the untiled result
            (largest difference below 5e-4, an eighth of an 8-bit level, at the released size; measured with
            ``benchmarks/measure_tile_pad.py``, docs/large_images.md): the network's effective receptive field. A
            smaller ``tile_pad`` is raised to it with a warning.
        main_maps_per_lr_px: the memory planner's profile: main-network activations per LR pixel, in
            n_feats-channel x4 maps (measured on CPU with ``benchmarks/benchmark_scaling.py``, +10%); None where the
            planner does not plan the network (single-image).
        feature_extractor: attribute holding the VGG-19 texture extractor (a parameter group of its own in training);
            None without one.
        feature_extractor_init: constructor option that chooses its initialisation (``'vgg19'`` | ``'random'``).
        adjustable_geometry: whether ``set_search_geometry`` may change window/stride/padding (EXTRACTER yes, TTSR no).
        read_options: the ``network_g`` options read off a plain state dict (our key names); raises ``ValueError`` or
            ``KeyError`` when the dict is not of this family. Use :meth:`detect`, which also verifies the result.
        not_detected: (options, what :meth:`detect` reports for them) for what the weights do not determine.
        init_only_options: constructor options that only locate files for initialisation (not needed, and dropped,
            when a complete checkpoint is loaded: :meth:`options_for_weights`).
        converters: the official checkpoint formats the converters turn into this architecture (keys of
            :data:`CONVERTER_FORMATS`); empty where none is needed (DRCT: the original's checkpoints load as they are).
        own_search: the correspondence search is the network's own stage (C2-Matching), not a registered search
            method: the search methods, ``auto``, the planner's search and several references do not apply.
        reference_size: ``'any'`` (the search reads any reference size: EXTRACTER, TTSR) or ``'output'`` (the
            network reads reference features at the output's own positions, so the reference must have the
            output's size: C2-Matching; the inference engine zero-pads the LR and the reference to a common size).
    """

    name: str
    arch: Type[nn.Module] = field(repr=False)
    uses_reference: bool
    scale: Union[int, str]
    multiples: Callable[[Options], Tuple[int, int]] = field(repr=False)
    min_tile_pad: int
    main_maps_per_lr_px: Optional[float] = None
    feature_extractor: Optional[str] = None
    feature_extractor_init: Optional[str] = None
    adjustable_geometry: bool = False
    read_options: Optional[Callable[[StateDict], Dict[str, Any]]] = field(default=None, repr=False)
    not_detected: Tuple[Tuple[str, str], ...] = ()
    init_only_options: Tuple[str, ...] = ()
    converters: Tuple[str, ...] = ()
    own_search: bool = False
    reference_size: str = 'any'

    def __post_init__(self) -> None:
        unknown = [c for c in self.converters if c not in CONVERTER_FORMATS]
        if unknown:
            raise ValueError(f'{self.name}: unknown converter formats {unknown} (known: {sorted(CONVERTER_FORMATS)})')
        if self.reference_size not in ('any', 'output'):
            raise ValueError(f"{self.name}: reference_size must be 'any' or 'output', got {self.reference_size!r}")
        if (self.feature_extractor is None) != (self.feature_extractor_init is None):
            raise ValueError(f'{self.name}: feature_extractor and feature_extractor_init go together')

    @property
    def kind(self) -> str:
        """``'refsr'`` (reference-based) or ``'sisr'`` (single-image)."""
        return 'refsr' if self.uses_reference else 'sisr'

    def complete(self, options: Options) -> Dict[str, Any]:
        """``options`` (a ``network_g`` block) over the constructor's defaults, without ``type``."""
        params = inspect.signature(self.arch.__init__).parameters
        out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
        out.update((k, v) for k, v in options.items() if k != 'type')
        return out

    def scale_for(self, options: Options) -> int:
        """The upscaling factor of a network built from ``options``, without building it."""
        return self.scale if isinstance(self.scale, int) else int(self.complete(options)[self.scale])

    def size_multiples_for(self, options: Options) -> Tuple[int, int]:
        """(LR side multiple, reference side multiple) of a network built from ``options``, without building it."""
        return self.multiples(self.complete(options))

    def options_for_weights(self, options: Options) -> Dict[str, Any]:
        """Constructor options for loading a complete checkpoint: no ``type``, no file needed for initialisation (the
        extractor, if any, initialised at random: the checkpoint holds it)."""
        out = {k: v for k, v in options.items() if k != 'type' and k not in self.init_only_options}
        if self.feature_extractor_init is not None:
            out[self.feature_extractor_init] = 'random'
        return out

    def detect(self, state: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """The ``network_g`` options (with ``type``) of the network of this family that ``state`` belongs to, or None
        if it is not one. ``state``: a state dict with our key names, bare or as a checkpoint ``{'params_ema': ...}``
        / ``{'params': ...}`` (``params_ema`` preferred), ``module.`` prefixes ignored. The options are checked: a
        network built from them has exactly the state's keys and shapes (built on the meta device: no memory, no
        weights initialised), so loading it with ``strict=True`` succeeds."""
        if self.read_options is None:
            return None
        plain = plain_state(state)
        try:
            options = self.read_options(plain)
            with torch.device('meta'):
                net = self.arch(**self.options_for_weights(options))
        except (ValueError, KeyError, IndexError, TypeError, RuntimeError, NotImplementedError):
            return None
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in plain.items() if isinstance(v, torch.Tensor)}
        return options if found == expected and len(found) == len(plain) else None


def plain_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """The tensors of a state dict given bare or as ``{'params_ema': ...}`` / ``{'params': ...}`` (``params_ema``
    preferred), with ``module.`` prefixes (DataParallel, DDP) removed."""
    for key in ('params_ema', 'params'):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    return {re.sub(r'^(module\.)+', '', k): v for k, v in state.items()}


def count_indexed(state: StateDict, prefix: str) -> int:
    """How many ``prefix.<i>.`` entries (blocks of a sequence, heads of a list) a state dict holds."""
    pattern = re.compile(re.escape(prefix) + r'\.(\d+)\.')
    indices = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
    return max(indices) + 1 if indices else 0


def describe(**facts: Any) -> Callable[[type], type]:
    """Class decorator: state the class' :class:`ArchDescriptor` (``facts``: its fields but ``name`` and ``arch``),
    set it as the class' ``descriptor`` and register it under the class' name."""

    def deco(cls: type) -> type:
        if cls.__name__ in _DESCRIPTORS:
            raise KeyError(f'an architecture named {cls.__name__!r} already has a descriptor')
        descriptor = ArchDescriptor(name=cls.__name__, arch=cls, **facts)
        cls.descriptor = descriptor
        _DESCRIPTORS[cls.__name__] = descriptor
        return cls

    return deco


def descriptors() -> Dict[str, ArchDescriptor]:
    """Every architecture's descriptor by registry name (this package's architectures imported first)."""
    from extracter.registry import ARCH_REGISTRY

    ARCH_REGISTRY.keys()  # imports extracter.archs: every arch module states its descriptor on import
    return dict(sorted(_DESCRIPTORS.items()))


def find_descriptor(obj: Any) -> Optional[ArchDescriptor]:
    """The descriptor of a network, its class or its registry name; None for anything else (another package's
    architecture, the critic, an unknown name)."""
    if isinstance(obj, ArchDescriptor):
        return obj
    if isinstance(obj, str):
        return descriptors().get(obj)
    cls = obj if isinstance(obj, type) else type(obj)
    found = _DESCRIPTORS.get(cls.__name__)
    return found if found is not None and found.arch is cls else None


def descriptor_of(obj: Any) -> ArchDescriptor:
    """:func:`find_descriptor`, raising ``KeyError`` when there is none."""
    found = find_descriptor(obj)
    if found is None:
        label = obj if isinstance(obj, str) else getattr(obj, '__name__', type(obj).__name__)
        raise KeyError(f'{label!r} is not an SR architecture of this package (known: {", ".join(descriptors())})')
    return found


def detect_options(state: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``network_g`` options of the first architecture (by name) whose :meth:`ArchDescriptor.detect` recognises
    ``state``; None if none does."""
    for descriptor in descriptors().values():
        options = descriptor.detect(state)
        if options is not None:
            return options
    return None
