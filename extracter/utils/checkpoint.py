"""The one place where checkpoints are read. Checkpoints are untrusted input: ``weights_only=True``, or for the files
torch's weights-only unpickler cannot read, our restricted unpickler, which imports and runs nothing either.

- :func:`load_checkpoint`: the whole file (a training state, a BasicSR network file, a VGG-19 file, a foreign
  checkpoint), with errors that name the file. A pickle that would call code (``os.system``, ``eval``, ...) is
  refused as hostile; one of pickle protocol 3 or above (which torch's weights-only unpickler does not read) is read
  by the restricted unpickler (:mod:`extracter.utils.restricted_unpickle`).
- :func:`network_state`: the network's tensors inside a loaded checkpoint: BasicSR's ``{'params_ema'|'params': ...}``
  (EMA weights preferred, as BasicSR's test scripts do) or a plain state dict; ``module.`` prefixes (DataParallel/DDP)
  removed.
"""

import os
import pickle
import re
import warnings
from typing import Any, Dict, Optional, Sequence, Union

import torch

from extracter.utils.restricted_unpickle import HostilePickleError, PickleReport, restricted_load

PathLike = Union[str, 'os.PathLike[str]']
DEFAULT_PARAM_KEYS = ('params_ema', 'params')


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not hold what was asked for; the message names it."""


class HostileCheckpointError(CheckpointError):
    """A checkpoint whose pickle would call code (``os.system``, ``eval``, ...): refused, nothing was run; the message
    names the file and the callable."""


def _why_unreadable(path: str, err: Exception) -> str:
    """What an unpicklable file most likely is, in words."""
    text = str(err)
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK') and ('central directory' in text or 'zip archive' in text):
        return 'a truncated or corrupt PyTorch file (an interrupted download or copy?)'
    if 'Unsupported global' in text or 'This file can still be loaded' in text:
        return ('a PyTorch file holding objects other than tensors (a pickled model?); only weights-only files '
                'are read')
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return 'a text file, not PyTorch weights'
    return 'not a PyTorch weights file'


def load_checkpoint(path: PathLike, map_location: Any = 'cpu', what: str = 'a PyTorch checkpoint',
                    placeholders: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; a missing, empty, foreign or corrupt file is an error naming it and
    ``what`` was expected.

    A file torch's weights-only unpickler refuses is read again by the restricted unpickler (nothing imported or
    run): a pickle that calls code is refused (:class:`HostileCheckpointError`); tensors and plain containers in a
    pickle protocol torch's reader does not take (3 and above) are returned; objects of other classes are refused
    (a pickled model?) unless ``placeholders`` (then they come back as inert placeholders: the converter of
    mmengine's checkpoints reads those)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f'{path} is a folder, expected the file of {what}')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such file (checkpoint not found; expected {what})')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'{path}: empty file (0 bytes), expected {what}')
    try:
        with warnings.catch_warnings():
            # torch warns about every protocol but 2 (then reads it or fails); those files are read below
            warnings.filterwarnings('ignore', message='Detected pickle protocol', category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        raise OSError(err.errno, f'{path}: cannot read ({err.strerror or err})') from err
    except MemoryError:
        raise
    except pickle.UnpicklingError as err:  # a class or an opcode torch's weights-only unpickler does not take
        return _load_restricted(path, map_location, what, placeholders, err)
    except Exception as err:  # noqa: BLE001  unpickling untrusted data fails in many ways; all mean the same
        raise CheckpointError(f'{path}: {_why_unreadable(path, err)}; expected {what}') from err


def _load_restricted(path: str, map_location: Any, what: str, placeholders: bool, refused: Exception) -> Any:
    """The file that ``torch.load(weights_only=True)`` refused (``refused``), read by the restricted unpickler."""
    report = PickleReport()
    try:
        obj = restricted_load(path, map_location, report=report)
    except HostilePickleError as err:
        raise HostileCheckpointError(str(err)) from None
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001  junk: say what torch's reader found
        raise CheckpointError(f'{path}: {_why_unreadable(path, refused)}; expected {what}') from refused
    if report.replaced and not placeholders:
        names = ', '.join(report.replaced[:3]) + (' ...' if report.replaced[3:] else '')
        raise CheckpointError(f'{path}: a PyTorch file holding objects other than tensors (a pickled model?); only '
                              f'weights-only files are read, this one holds {names}; expected {what}')
    return obj


def strip_module_prefix(state: Dict[str, Any]) -> Dict[str, Any]:
    return {re.sub(r'^(module\.)+', '', k): v for k, v in state.items()}


CONVERT_HINT = 'python scripts/convert_official.py {path} -o converted.pth'
C2_CONVERT_HINT = ('python scripts/convert_official.py RESTORATION.pth --extractor EXTRACTOR.pth '
                   '[--vgg19 vgg19_canonical.pth] -o converted.pth')


def original_layout(state: Dict[str, Any]) -> Optional[str]:
    """'EXTRACTER', 'TTSR', 'mmagic TTSR' or 'C2-Matching ...' when ``state``'s keys have the original code's layout
    (SR.*/FE.*, MainNet.*/LTE.*, generator.*/extractor.*; C2-Matching's restoration net content_extractor.* /
    dyn_agg_restore.*, its contrastive extractor feature_extraction_image1/2.* with the mean/std buffers; none of
    ours), else None."""
    heads = {str(k).split('.', 1)[0] for k in state}
    if heads and heads <= {'content_extractor', 'dyn_agg_restore'}:
        return 'C2-Matching (its restoration net)'
    if 'feature_extraction_image1.mean' in state:
        return 'C2-Matching (its contrastive extractor)'
    if heads & {'SR', 'FE'}:
        return 'EXTRACTER'
    if heads & {'MainNet', 'LTE'}:
        return 'TTSR'
    if heads & {'generator', 'extractor'}:
        return 'mmagic TTSR'
    return None


def check_not_original(state: Dict[str, Any], source: str) -> None:
    """A checkpoint of the original code is refused with the command that converts it."""
    original = original_layout(state)
    if original is not None:
        hint = C2_CONVERT_HINT if original.startswith('C2-Matching') else CONVERT_HINT.format(path=source)
        raise CheckpointError(f'{source} is a checkpoint of the original {original} code, not ours: convert it first '
                              f'with {hint}')


def network_state(ckpt: Any, source: str, param_key: Optional[str] = None,
                  fallback_keys: Sequence[str] = DEFAULT_PARAM_KEYS) -> Dict[str, torch.Tensor]:
    """The state dict of a network inside ``ckpt``.

    ``param_key``: the entry to use (``'params'``, ``'params_ema'``); ``'params_ema'`` falls back to ``'params'`` when
    the file has no EMA weights. Without it, the first of ``fallback_keys`` present is used, or ``ckpt`` itself when
    it is already a dict of tensors.
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{source}: expected a dict of tensors or {{"params": ...}}, got {type(ckpt).__name__}')
    for nested in ('state_dict', 'model', 'params'):  # the original trainers' layouts, possibly nested
        check_not_original(ckpt[nested] if isinstance(ckpt.get(nested), dict) else ckpt, source)
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
