"""Distributed helpers without CUDA assumptions: the one place that replaces basicsr's ``dist_util`` parts we need.

basicsr 1.4.2 picks the device as ``RANK % cuda.device_count()`` (wrong across nodes, a ZeroDivisionError on CPU),
always uses nccl, wraps models with ``device_ids=[cuda.current_device()]`` and maps resume states onto CUDA. Here:

- :func:`init_dist` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), selects
  ``cuda:LOCAL_RANK`` when CUDA is used, and picks nccl on GPUs and gloo on CPU (or the backend given);
- :func:`wrap_model` gives ``DistributedDataParallel`` ``device_ids`` only for a CUDA device;
- :func:`map_location` maps a loaded state onto this process' device.
"""

import datetime
import functools
import hashlib
import os
import random
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f'--launcher pytorch needs the environment variable {name}; start the script with torchrun '
                           '(e.g. torchrun --nproc_per_node=2 extracter/train.py -opt ... --launcher pytorch)')
    return int(value)


def select_device(num_gpu: Any, local_rank: int = 0) -> torch.device:
    """``cuda:local_rank`` if the options ask for GPUs (``num_gpu`` > 0 or ``'auto'`` with CUDA present), else CPU."""
    if num_gpu == 'auto':
        num_gpu = torch.cuda.device_count()
    if not isinstance(num_gpu, int) or num_gpu < 0:
        raise ValueError(f"num_gpu must be 'auto' or a non-negative integer, got {num_gpu!r}")
    if num_gpu == 0:
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise RuntimeError(f'num_gpu is {num_gpu} but CUDA is not available; set num_gpu: 0 for CPU')
    if local_rank >= torch.cuda.device_count():
        raise RuntimeError(f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible')
    return torch.device('cuda', local_rank)


def init_dist(launcher: str, num_gpu: Any = 'auto', backend: Optional[str] = None,
              timeout_s: Optional[float] = None) -> torch.device:
    """Join the process group started by torchrun (``launcher='pytorch'``) and return this process' device.

    ``backend`` defaults to nccl when this process uses a GPU and gloo otherwise. Works within one node and across
    nodes (torchrun's ``--nnodes``/``--rdzv_*`` options set the same environment variables).
    """
    if launcher != 'pytorch':
        raise ValueError(f"launcher must be 'pytorch' (torchrun), got {launcher!r}")
    rank, world_size, local_rank = _env_int('RANK'), _env_int('WORLD_SIZE'), _env_int('LOCAL_RANK')
    device = select_device(num_gpu, local_rank)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    backend = backend or ('nccl' if device.type == 'cuda' else 'gloo')
    kwargs: Dict[str, Any] = {'backend': backend, 'rank': rank, 'world_size': world_size}
    if timeout_s is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout_s)
    if device.type == 'cuda' and backend == 'nccl':
        kwargs['device_id'] = device
    if not dist.is_initialized():
        dist.init_process_group(**kwargs)
    return device


def get_dist_info() -> Tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return get_dist_info()[0] == 0


def master_only(func: Callable) -> Callable:
    """Run ``func`` on rank 0 only (returns None elsewhere)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if is_main_process():
            return func(*args, **kwargs)
        return None

    return wrapper


def barrier() -> None:
    if get_dist_info()[1] > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(net: nn.Module, device: torch.device, distributed: bool,
               find_unused_parameters: bool = False) -> nn.Module:
    """Move ``net`` to ``device``; in a process group wrap it in DDP (``device_ids`` only on CUDA)."""
    net = net.to(device)
    if not distributed:
        return net
    if device.type == 'cuda':
        return DistributedDataParallel(net, device_ids=[device.index], output_device=device.index,
                                       find_unused_parameters=find_unused_parameters)
    return DistributedDataParallel(net, find_unused_parameters=find_unused_parameters)


def bare_model(net: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper."""
    return net.module if isinstance(net, (DistributedDataParallel, nn.DataParallel)) else net


def map_location(device: torch.device) -> Callable:
    """``torch.load`` map_location that puts every tensor on ``device`` (the current process' device)."""
    return lambda storage, loc: storage.to(device) if device.type != 'cpu' else storage


def get_rng_state(device: torch.device) -> Dict[str, Any]:
    """Python, NumPy and torch (CPU and, when used, this CUDA device) random states, as plain picklable values."""
    state = {
        'python': random.getstate(),
        'numpy': _numpy_state_to_torch(np.random.get_state()),
        'torch': torch.get_rng_state(),
    }
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    random.setstate(_as_python_state(state['python']))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys.cpu().numpy(), dtype=np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    torch.set_rng_state(state['torch'].cpu())
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'].cpu(), device)


def _numpy_state_to_torch(np_state: tuple) -> tuple:
    """NumPy's state with its key array as a tensor, so that ``torch.load(weights_only=True)`` reads it back."""
    name, keys, pos, has_gauss, cached = np_state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _as_python_state(value: Any) -> tuple:
    """random.setstate wants tuples; a state that went through a checkpoint may hold lists."""
    version, internal, gauss = value
    return version, tuple(int(v) for v in internal), gauss


def weights_digest(net: nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes, bytes): equal digests mean identical weights."""
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)}'.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (just ``[obj]`` outside a process group)."""
    _, world_size = get_dist_info()
    if world_size == 1:
        return [obj]
    out: List[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out
