"""Option handling shared by the datasets: BasicSR passes one dict (``Dataset(opt)``), tests and scripts pass named
arguments (``Dataset(dataroot=...)``); both end up in one validated dict, and unknown keys (typos) are errors."""

from typing import Any, Dict, Mapping, Optional

from extracter.archs.refsr_base import SCALE

REQUIRED = object()

# Keys BasicSR's option files and build_dataset/build_dataloader put into a dataset's options; ignored here.
BASICSR_KEYS = frozenset({
    'name', 'type', 'phase', 'scale', 'batch_size_per_gpu', 'num_worker_per_gpu', 'dataset_enlarge_ratio',
    'use_shuffle', 'prefetch_mode', 'pin_memory', 'num_prefetch_queue', 'persistent_workers', 'color',
})


def merge_options(cls_name: str, defaults: Mapping[str, Any], opt: Optional[Mapping[str, Any]],
                  kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """Defaults <- opt <- kwargs; raises on unknown keys, missing required keys and a scale other than the RefSR
    archs' (``SCALE``, x4)."""
    given: Dict[str, Any] = {}
    if opt is not None:
        given.update(opt)
    given.update(kwargs)
    unknown = sorted(k for k in given if k not in defaults and k not in BASICSR_KEYS)
    if unknown:
        raise ValueError(f'{cls_name}: unknown option(s) {unknown}; known: {sorted(defaults)}')
    if given.get('scale', SCALE) != SCALE:
        raise ValueError(f"{cls_name}: only scale {SCALE} is supported, got scale={given['scale']}")
    out = {k: given.get(k, v) for k, v in defaults.items()}
    missing = sorted(k for k, v in out.items() if v is REQUIRED)
    if missing:
        raise ValueError(f'{cls_name}: missing required option(s) {missing}')
    out['name'] = given.get('name', cls_name)
    return out


def positive_multiple_of_4(value: Any, name: str) -> int:
    """``value`` if it is a positive multiple of the scale (x4), else a ValueError naming ``name``."""
    value = int(value)
    if value < SCALE or value % SCALE:
        raise ValueError(f'{name} must be a positive multiple of {SCALE}, got {value}')
    return value


def require_disk_backend(cls_name: str, io_backend: Optional[Mapping[str, Any]], what: str) -> None:
    """For datasets that read files only: an ``io_backend`` other than ``{type: disk}`` is an error."""
    if io_backend and io_backend.get('type', 'disk') != 'disk':
        raise ValueError(f'{cls_name} reads {what} only (io_backend type disk)')
