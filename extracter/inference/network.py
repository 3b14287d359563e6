"""A network for inference from a checkpoint: its options (the YAML beside the weights, any YAML with a
``network_g`` block, or else the weights themselves, read by the architectures' descriptors: ``detect``) and its
weights, loaded strictly through :mod:`extracter.utils.checkpoint`."""

import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import yaml

from extracter.archs.descriptor import detect_options, find_descriptor
from extracter.utils.checkpoint import CheckpointError, check_not_original, load_checkpoint, network_state

CONVERT_HINT = ('checkpoints of the original EXTRACTER/TTSR code must be converted first: '
                'python scripts/convert_official.py ORIGINAL.pth -o converted.pth')


class NetworkLoadError(ValueError):
    """The network options or the weights cannot be used; the message names the file."""


def options_from_weights(state: Dict[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
    """``network_g`` read off a state dict by the architecture whose descriptor recognises it
    (:meth:`~extracter.archs.descriptor.ArchDescriptor.detect`); None if none does."""
    return detect_options(state)


def network_options(weights: str, opt_path: Optional[str] = None,
                    state: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, Any]:
    """``network_g`` from ``opt_path``, or from the YAML beside the weights (``W.pth`` -> ``W.yml``), or else read
    off the weights' ``state`` (:func:`options_from_weights`)."""
    path = Path(opt_path) if opt_path else Path(weights).with_suffix('.yml')
    if not path.is_file():
        inferred = options_from_weights(state) if state is not None and not opt_path else None
        if inferred is not None:
            return inferred
        told = '' if opt_path or state is None else f'; no architecture of this package recognises {weights}'
        raise FileNotFoundError(f'network options not found: {path} (give --opt with a network_g block){told}')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        from extracter.utils.option_checks import yaml_problem

        raise NetworkLoadError(f'{path}: not valid YAML: {yaml_problem(err)}') from None
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise NetworkLoadError(f'{path}: no network_g block')
    return dict(opt['network_g'])


def build_network(options: Dict[str, Any], source: str = 'network_g') -> torch.nn.Module:
    """The architecture named by ``options['type']`` (any with a descriptor: a RefSR network, or a single-image one),
    built for loading a complete checkpoint afterwards."""
    from extracter.registry import ARCH_REGISTRY

    arch = options.get('type')
    try:
        cls = ARCH_REGISTRY.get(arch)
    except KeyError:
        raise NetworkLoadError(f'{source}: unknown network type {arch!r}') from None
    descriptor = find_descriptor(cls)
    if descriptor is None:
        raise NetworkLoadError(f'{source}: {arch} is not an SR network of this package')
    from extracter.utils.option_checks import OptionError, check_annotated_types, check_keys, signature_keys

    given = {k: v for k, v in options.items() if k != 'type'}
    try:  # the option schema's checks: key names (with a suggestion) and plain types
        names, var_kw = signature_keys(cls)
        if not var_kw:
            check_keys(given, names, 'network_g.', source)
        check_annotated_types(given, cls, 'network_g.', source)
    except OptionError as err:
        raise NetworkLoadError(str(err)) from None
    try:
        return cls(**descriptor.options_for_weights(options))
    except (TypeError, ValueError) as err:  # the constructor's own checks (ranges, block counts)
        raise NetworkLoadError(f'{source}: network_g: {err}') from None


def describe_mismatch(err: RuntimeError, limit: int = 3) -> str:
    """A short summary of a strict-load failure: how many keys are missing / unexpected / of another shape."""
    text = str(err)
    parts = []
    for label in ('Missing key(s)', 'Unexpected key(s)'):
        if label in text:
            chunk = text.split(label, 1)[1].split('. ', 1)[0]
            keys = [k.strip().strip('"') for k in chunk.split(':', 1)[-1].split(',') if k.strip()]
            parts.append(f'{len(keys)} {label.lower().replace("(s)", "s")} (e.g. {", ".join(keys[:limit])})')
    n_shape = text.count('size mismatch')
    if n_shape:
        m = re.search(r'size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^]]*\])\) from '
                      r'checkpoint, the shape in current model is torch\.Size\((\[[^]]*\])\)', text)
        example = f' (e.g. {m.group(1)}: {m.group(2)} in the file, {m.group(3)} in the network)' if m else ''
        parts.append(f'{n_shape} tensors of another shape{example}')
    return '; '.join(parts) or text.splitlines()[0][:300]


def load_state_into(net: torch.nn.Module, state: Dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """``net.load_state_dict`` with an error that names the file and summarises the mismatch."""
    try:
        check_not_original(state, source)
    except CheckpointError as err:
        raise NetworkLoadError(str(err)) from None
    try:
        net.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise NetworkLoadError(f'{source} does not match {type(net).__name__} as configured: '
                               f'{describe_mismatch(err)}; check the network_g options, or ({CONVERT_HINT})') from None


def load_network(weights: str, opt_path: Optional[str] = None, device: str = 'cpu',
                 param_key: Optional[str] = None) -> torch.nn.Module:
    """Build the network from its options (see :func:`network_options`) and load the weights strictly (EMA weights
    preferred; untrusted file: weights_only). Returns it in eval mode on ``device``."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f'weights not found: {weights}')
    try:
        state = network_state(load_checkpoint(weights), weights, param_key)
    except CheckpointError as err:
        raise NetworkLoadError(str(err)) from None
    options = network_options(weights, opt_path, state)
    source = str(opt_path or Path(weights).with_suffix('.yml'))
    net = build_network(options, source if Path(source).is_file() else f'{weights} (network_g read off the weights)')
    load_state_into(net, state, weights)
    return net.eval().to(device)
