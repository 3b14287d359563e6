"""The one place where checkpoints are read. Checkpoints are untrusted input: always ``weights_only=True``.

- :func:`load_checkpoint`: the whole file (a training state, a BasicSR network file, a VGG-19 file, a foreign
  checkpoint), with errors that name the file.
- :func:`network_state`: the network's tensors inside a loaded checkpoint: BasicSR's ``{'params_ema'|'params': ...}``
  (EMA weights preferred, as BasicSR's test scripts do) or a plain state dict; ``module.`` prefixes (DataParallel/DDP)
  removed.
"""

import os
import re
from typing import Any, Dict, Optional, Sequence, Union

import torch

PathLike = Union[str, 'os.PathLike[str]']
DEFAULT_PARAM_KEYS = ('params_ema', 'params')


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not hold what was asked for; the message names it."""


def load_checkpoint(path: PathLike, map_location: Any = 'cpu') -> Any:
    """``torch.load(path, weights_only=True)``; a missing or unreadable file is an error naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f'{path} is a folder, not a checkpoint file')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # any unpickling failure means the same to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f'{path}: not a readable weights-only torch checkpoint ({first[:200]})') from err


def strip_module_prefix(state: Dict[str, Any]) -> Dict[str, Any]:
    return {re.sub(r'^(module\.)+', '', k): v for k, v in state.items()}


def network_state(ckpt: Any, source: str, param_key: Optional[str] = None,
                  fallback_keys: Sequence[str] = DEFAULT_PARAM_KEYS) -> Dict[str, torch.Tensor]:
    """The state dict of a network inside ``ckpt``.

    ``param_key``: the entry to use (``'params'``, ``'params_ema'``); ``'params_ema'`` falls back to ``'params'`` when
    the file has no EMA weights. Without it, the first of ``fallback_keys`` present is used, or ``ckpt`` itself when
    it is already a dict of tensors.
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{source}: expected a dict of tensors or {{"params": ...}}, got {type(ckpt).__name__}')
    if param_key is not None:
        keys = [param_key] + (['params'] if param_key == 'params_ema' else [])
    else:
        keys = list(fallback_keys)
    for key in keys:
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    else:
        if param_key is not None:
            raise CheckpointError(f'{source} has no {param_key!r} entry (top-level keys: {sorted(map(str, ckpt))[:8]})')
    if not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f'{source}: not a network checkpoint (no dict of tensors under {" / ".join(keys)}); '
                              f'top-level keys: {sorted(map(str, ckpt))[:8]}')
    return strip_module_prefix(ckpt)
