"""Training: BasicSR's pipeline (options -> datasets -> model -> iterations -> checkpoints) without its CUDA
assumptions, with exact resume.

Outputs go to BasicSR's places: ``experiments/<name>/`` (models, training_states, visualization, log) and
``tb_logger/<name>/``. A resumed run continues exactly where the saved one stopped: networks, EMA, critic, optimisers,
schedulers, the warm-up phase (a function of the iteration), the position inside the epoch and all random states.
Nothing is created on disk before the options, the datasets and the model have been built: a run that fails to start
leaves no folder behind that would block the corrected rerun.

The run is one :class:`TrainingRun`: :meth:`~TrainingRun.setup` (resume state, data, model, folders, logs), then
:meth:`~TrainingRun.run` (epochs of :meth:`~TrainingRun.train_step`, with progress logs, checkpoints and validation),
then :meth:`~TrainingRun.finish`.
"""

import contextlib
import datetime
import logging
import math
import os
import sys
import time
from os import path as osp
from typing import Any, Dict, List, Optional, Tuple

import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.models import build_model
from basicsr.utils import get_env_info, get_time_str, init_tb_logger, mkdir_and_rename
from basicsr.utils.options import dict2str

from extracter.models.base_model import list_training_states, load_checkpoint
from extracter.models.nonfinite import NONFINITE_PATIENCE, NonFiniteError
from extracter.options.schema import OptionError, option_errors, parse_options
from extracter.pipeline.common import ROOT_PATH, archive_folder, bind_console, setup_run_logger
from extracter.utils import dist as dist_util
from extracter.utils.file_io import atomic_write_text, clean_stale_temp_files, parse_temp_name
from extracter.utils.folder_lock import FolderLock, command_line


def find_resume_state(opt: Dict[str, Any]) -> Optional[str]:
    """The explicit ``path.resume_state``, or with ``--auto_resume`` the newest complete state of this experiment."""
    if opt['path'].get('resume_state'):
        return opt['path']['resume_state']
    if opt['auto_resume']:
        iters = list_training_states(opt['path']['training_states'])
        if iters:
            return osp.join(opt['path']['training_states'], f'{iters[-1]}.state')
    return None


def holds_results(root: str) -> bool:
    """Whether an experiment folder holds anything worth keeping: a checkpoint or a training state. A failed start
    leaves at most an options copy and a log; a run that failed before its first checkpoint at most validation
    pictures of weights that were never saved. Such a folder is reused by the rerun."""
    for sub in ('models', 'training_states'):
        folder = osp.join(root, sub)
        if osp.isdir(folder) and any(parse_temp_name(e.name) is None for e in os.scandir(folder)):
            return True
    return False


def prepare_experiment_dirs(opt: Dict[str, Any], resuming: bool, lock: Optional[FolderLock] = None) -> None:
    """Rank 0 creates ``experiments/<name>``; an existing one with results is kept unless resuming or ``--overwrite``
    (then it is renamed to ``<name>_archived_<time>``, never deleted). One without results (a failed start) is
    reused. ``lock``: rank 0's lock on the folder (taken before it is looked at; it moves to the new folder when the
    old one is archived)."""
    root = opt['path']['experiments_root']
    if dist_util.is_main_process():  # temporary files of a run killed outright (SIGKILL, out of memory)
        for key in ('experiments_root', 'models', 'training_states'):
            clean_stale_temp_files(opt['path'][key], log=lambda line: print(line, file=sys.stderr))
    if dist_util.is_main_process() and not resuming and holds_results(root):
        if not opt['overwrite']:
            raise FileExistsError(f'{root} already exists; use --auto_resume to continue that run or --overwrite to '
                                  'archive it and start afresh (it holds checkpoints or results)')
        archive_folder(root, lock)
        tb_dir = osp.join(opt['root_path'], 'tb_logger', opt['name'])
        if osp.exists(tb_dir):
            mkdir_and_rename(tb_dir)
    if dist_util.is_main_process():
        for key in ('experiments_root', 'models', 'training_states', 'visualization'):
            os.makedirs(opt['path'][key], exist_ok=True)
    dist_util.barrier()


def copy_option_file(opt_file: str, opt: Dict[str, Any]) -> None:
    if not dist_util.is_main_process():
        return
    with open(opt_file, encoding='utf-8') as f:
        text = f.read()
    header = f'# GENERATE TIME: {time.asctime()}\n# CMD:\n# {" ".join(sys.argv)}\n\n'
    atomic_write_text(osp.join(opt['path']['experiments_root'], osp.basename(opt_file)), header + text)


def create_dataloaders(opt: Dict[str, Any]) -> Tuple[Any, Any, List[Any], List[str]]:
    """(train loader, its sampler, validation loaders, lines to log once the log file exists)."""
    train_loader = train_sampler = None
    val_loaders, info = [], []
    for phase, ds_opt in opt['datasets'].items():
        if ds_opt['phase'] == 'train':
            if ds_opt.get('persistent_workers'):
                raise OptionError(f'datasets.{phase}.persistent_workers: exact resume needs fresh workers each epoch; '
                                  'set it to false')
            with option_errors(opt.get('opt_path', ''), f'datasets.{phase}'):
                train_set = build_dataset(ds_opt)
            ratio = ds_opt.get('dataset_enlarge_ratio', 1)
            train_sampler = EnlargedSampler(train_set, opt['world_size'], opt['rank'], ratio)
            train_loader = build_dataloader(train_set, ds_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                            sampler=train_sampler, seed=opt['manual_seed'])
            if len(train_loader) == 0:
                raise OptionError(f'datasets.{phase}: {len(train_set)} images give no full batch of '
                                  f'{ds_opt["batch_size_per_gpu"]} per process')
            info.append(f'Training set {ds_opt["name"]}: {len(train_set)} images, enlarge ratio {ratio}, batch '
                        f'{ds_opt["batch_size_per_gpu"]} per process x {opt["world_size"]}, '
                        f'{len(train_loader)} iterations per epoch')
        else:
            with option_errors(opt.get('opt_path', ''), f'datasets.{phase}'):
                val_set = build_dataset(ds_opt)
            val_loaders.append(build_dataloader(val_set, ds_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                                sampler=None, seed=opt['manual_seed']))
            info.append(f'Validation set {ds_opt["name"]}: {len(val_set)} images')
    return train_loader, train_sampler, val_loaders, info


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Validation must not change the training's random streams (so a resumed run matches an uninterrupted one)."""
    state = dist_util.get_rng_state(device)
    try:
        yield
    finally:
        dist_util.set_rng_state(state, device)


def format_log(opt: Dict[str, Any], epoch: int, current_iter: int, total_iters: int, lrs: List[float],
               its_per_s: float, eta_s: float, data_time: float, losses: Dict[str, float]) -> str:
    lr_str = ','.join(f'{v:.3e}' for v in lrs)
    eta = str(datetime.timedelta(seconds=int(eta_s)))
    loss_str = ' '.join(f'{k}: {v:.4e}' for k, v in losses.items())
    return (f'[{opt["name"][:12]}][epoch:{epoch:3d}, iter:{current_iter:8,d}/{total_iters:,d}, lr:({lr_str})] '
            f'[{its_per_s:.3f} it/s, eta: {eta}, data: {data_time:.3f}s] {loss_str}')


class TrainingRun:
    """One training run, from parsed options to the last checkpoint."""

    def __init__(self, opt: Dict[str, Any], opt_file: str, command: Optional[str] = None,
                 wait: Optional[float] = None) -> None:
        self.opt, self.opt_file = opt, opt_file
        self.command, self.wait = command, wait  # for the lock on experiments/<name>: how it names us, --wait
        self.folder_lock: Optional[FolderLock] = None
        opt.setdefault('logger', {})
        opt['logger'].setdefault('print_freq', 100)
        opt['logger'].setdefault('save_checkpoint_freq', 5000)
        self.device = opt['device']
        self.total_iters = int(opt['train']['total_iter'])
        self.val_opt = opt.get('val') or {}
        self.logger: Optional[logging.Logger] = None
        self.tb_logger = None
        # non-finite values: consecutive iterations with skipped steps, all of them, the newest state saved
        self.patience = int(opt['train'].get('nonfinite_patience', NONFINITE_PATIENCE))
        self.nonfinite_streak = self.nonfinite_total = 0
        self.last_good: Optional[str] = None
        self.current_iter = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """The lock on ``experiments/<name>`` (rank 0; before anything looks at what the folder holds), then resume
        state, data and model (anything wrong fails here, before any experiment folder is made; a folder made only to
        hold the lock goes with it), then the experiment folders, the options copy, the log file and TensorBoard."""
        opt = self.opt
        torch.backends.cudnn.benchmark = bool(opt.get('cudnn_benchmark', False))
        if dist_util.is_main_process():  # one run at a time in experiments/<name> (released by release())
            self.folder_lock = FolderLock(opt['path']['experiments_root'], self.command, self.wait).acquire()
        self.resume_path = find_resume_state(opt)
        self.resume_state = load_checkpoint(self.resume_path, self.device) if self.resume_path else None
        self.last_good = self.resume_path
        self.train_loader, self.train_sampler, self.val_loaders, data_info = create_dataloaders(opt)
        self.model = build_model(opt)
        prepare_experiment_dirs(opt, resuming=self.resume_state is not None, lock=self.folder_lock)
        copy_option_file(self.opt_file, opt)
        log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
        self.logger = setup_run_logger(log_file)
        self.logger.info(get_env_info())
        self.logger.info(f'device: {self.device}, world size: {opt["world_size"]}, rank: {opt["rank"]}')
        self.logger.info(dict2str({k: v for k, v in opt.items() if k != 'device'}))
        for line in data_info:
            self.logger.info(line)
        if opt['logger'].get('use_tb_logger') and dist_util.is_main_process():
            self.tb_logger = init_tb_logger(log_dir=osp.join(opt['root_path'], 'tb_logger', opt['name']))

    def resume_position(self) -> Tuple[int, int, int, Optional[List[Any]]]:
        """(start epoch, iteration, iterations already done in that epoch, per-rank RNG at that epoch's start)."""
        if self.resume_state is None:
            return 0, 0, 0, None
        state = self.resume_state
        self.model.resume_training(state)
        start_epoch, current_iter = state['epoch'], state['iter']
        skip = int(state.get('iter_in_epoch', 0))
        if skip >= len(self.train_loader):  # saved at the end of an epoch: start the next one
            start_epoch, skip = start_epoch + 1, 0
        self.logger.info(f'Resuming from {self.resume_path}: epoch {start_epoch}, iter {current_iter} '
                         f'({skip} iterations into the epoch)')
        return start_epoch, current_iter, skip, state.get('rng_epoch_start')

    # ------------------------------------------------------------------ the loop
    def epoch_iterator(self, epoch: int, skip: int, epoch_rng_all: Optional[List[Any]], restore: bool):
        """The epoch's batches (after the ``skip`` already trained on, replayed from the epoch's saved RNG) and the
        RNG state at the epoch's start; ``restore``: put back the saved run's random state first."""
        rank, world = dist_util.get_dist_info()
        self.train_sampler.set_epoch(epoch)
        if skip > 0:
            if epoch_rng_all is not None and len(epoch_rng_all) == world:
                dist_util.set_rng_state(epoch_rng_all[rank], self.device)  # replay the epoch's loader exactly
            epoch_rng = dist_util.get_rng_state(self.device)
            loader_iter = iter(self.train_loader)
            for _ in range(skip):  # the batches this epoch already used (loaded, not trained on)
                next(loader_iter)
            self.model.restore_rng(self.resume_state)
            return loader_iter, epoch_rng
        if restore:
            self.model.restore_rng(self.resume_state)
        return iter(self.train_loader), dist_util.get_rng_state(self.device)

    def train_step(self, current_iter: int, batch: Dict[str, Any]) -> None:
        self.model.update_learning_rate(current_iter, warmup_iter=self.opt['train'].get('warmup_iter', -1))
        self.model.feed_data(batch)
        self.model.optimize_parameters(current_iter)

    def check_finite_step(self, current_iter: int) -> None:
        """Count the iterations whose steps the model skipped on non-finite values (``model.skipped_steps``), log
        each, and stop (:class:`NonFiniteError`, exit status 2) after more than ``train.nonfinite_patience``
        consecutive ones, or at once when a step left non-finite weights."""
        skipped = getattr(self.model, 'skipped_steps', None)
        if not skipped:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        what = '; '.join(dict.fromkeys(step.describe() for step in skipped))
        self.logger.warning(f'iter {current_iter}: {what}: step skipped ({self.nonfinite_streak} iteration(s) in a '
                            f'row, {self.nonfinite_total} in this run; train.nonfinite_patience: {self.patience})')
        if any(step.weights for step in skipped):
            raise NonFiniteError(f'training stopped at iteration {current_iter}: {what}, which no later step can '
                                 f'undo; {self.resume_hint()}')
        if self.nonfinite_streak > self.patience:
            first = current_iter - self.nonfinite_streak + 1
            span = f'iterations {first}-{current_iter}' if first < current_iter else f'iteration {current_iter}'
            raise NonFiniteError(f'training stopped at iteration {current_iter}: {what}; {self.nonfinite_streak} '
                                 f'consecutive iteration(s) with non-finite values ({span}), more than '
                                 f'train.nonfinite_patience: {self.patience}; {self.resume_hint()}')

    def resume_hint(self) -> str:
        """Where to go on from after a stop: the newest training state saved (or resumed from), or none yet."""
        if self.last_good is None:
            return ('no checkpoint was saved yet: fix the cause (e.g. a lower train.optim_g.lr) and start again, the '
                    'experiment folder is reused')
        return (f'the last good checkpoint is {self.last_good}: fix the cause (e.g. a lower train.optim_g.lr) and '
                'resume from it with --auto_resume (or path.resume_state)')

    def save_checkpoint(self, epoch: int, current_iter: int, loop_state: Optional[Dict[str, Any]] = None) -> None:
        """``model.save``; a network with non-finite weights stops the run with nothing written."""
        try:
            self.model.save(epoch, current_iter, loop_state)
        except NonFiniteError as err:
            which = 'net_g_latest.pth' if current_iter == -1 else f'the checkpoint of iteration {current_iter}'
            raise NonFiniteError(f'training stopped at iteration {self.current_iter}: {which} was not written: {err}; '
                                 f'{self.resume_hint()}') from err
        if current_iter != -1:
            self.last_good = osp.join(self.opt['path']['training_states'], f'{current_iter}.state')

    def periodic_save_due(self, current_iter: int, save_freq: int) -> bool:
        """A checkpoint every ``save_freq`` iterations, but none while steps are being skipped: those weights just
        gave non-finite values (the run's last iteration saves after the loop in any case)."""
        if current_iter % save_freq and current_iter != self.total_iters:
            return False
        if not self.nonfinite_streak:
            return True
        if current_iter != self.total_iters:
            self.logger.warning(f'iter {current_iter}: no checkpoint while steps are skipped on non-finite values')
        return False

    def log_progress(self, epoch: int, current_iter: int) -> None:
        now = time.time()
        its = self.window_iters / max(now - self.window_start, 1e-9)
        overall = (current_iter - self.run_start_iter) / max(now - self.run_start, 1e-9)
        losses = dict(self.model.get_current_log())
        msg = format_log(self.opt, epoch, current_iter, self.total_iters, self.model.get_current_learning_rate(), its,
                         (self.total_iters - current_iter) / max(overall, 1e-9), self.data_time / self.window_iters,
                         losses)
        self.logger.info(msg + (' [warm-up: reconstruction only]' if self.model.in_rec_only_phase(current_iter)
                                else ''))
        if self.tb_logger:
            for k, v in losses.items():
                self.tb_logger.add_scalar(f'losses/{k}', v, current_iter)
            for i, lr in enumerate(self.model.get_current_learning_rate()):
                self.tb_logger.add_scalar(f'lr/group{i}', lr, current_iter)
            self.tb_logger.add_scalar('speed/it_per_s', its, current_iter)
        self.window_start, self.window_iters, self.data_time = now, 0, 0.0

    def validate(self, current_iter: int) -> None:
        with preserved_rng(self.device):
            for val_loader in self.val_loaders:
                self.model.validation(val_loader, current_iter, self.tb_logger, self.val_opt.get('save_img', False))

    def run(self) -> None:
        opt = self.opt
        iters_per_epoch = len(self.train_loader)
        total_epochs = math.ceil(self.total_iters / iters_per_epoch)
        start_epoch, current_iter, skip, epoch_rng_all = self.resume_position()
        val_freq = self.val_opt.get('val_freq')
        save_freq = int(opt['logger']['save_checkpoint_freq'])
        print_freq = int(opt['logger']['print_freq'])
        self.logger.info(f'Start training from epoch {start_epoch}, iter {current_iter}')
        last_saved = current_iter if self.resume_state is not None else -1
        self.window_start, self.window_iters, self.data_time = time.time(), 0, 0.0
        self.run_start, self.run_start_iter = time.time(), current_iter
        epoch, iter_in_epoch, epoch_rng = start_epoch, 0, None
        for epoch in range(start_epoch, total_epochs + 1):
            if current_iter >= self.total_iters:
                break
            first = epoch == start_epoch and self.resume_state is not None
            loader_iter, epoch_rng = self.epoch_iterator(epoch, skip if epoch == start_epoch else 0, epoch_rng_all,
                                                         restore=first)
            iter_in_epoch = skip if epoch == start_epoch else 0
            epoch_rng_all = None
            tic = time.time()
            for batch in loader_iter:
                self.data_time += time.time() - tic
                if current_iter >= self.total_iters:
                    break
                current_iter += 1
                iter_in_epoch += 1
                self.current_iter = current_iter
                self.train_step(current_iter, batch)
                self.window_iters += 1
                if current_iter % print_freq == 0 or current_iter == self.total_iters:
                    self.log_progress(epoch, current_iter)
                self.check_finite_step(current_iter)
                if self.periodic_save_due(current_iter, save_freq):
                    if epoch_rng_all is None:
                        epoch_rng_all = dist_util.gather_objects(epoch_rng)
                    self.logger.info(f'Saving models and training state at iter {current_iter}.')
                    self.save_checkpoint(epoch, current_iter, {'iter_in_epoch': iter_in_epoch,
                                                               'rng_epoch_start': epoch_rng_all})
                    last_saved = current_iter
                if val_freq and current_iter % val_freq == 0 and self.val_loaders:
                    self.validate(current_iter)
                tic = time.time()
        if last_saved != current_iter:
            self.save_checkpoint(epoch, current_iter, {'iter_in_epoch': iter_in_epoch,
                                                       'rng_epoch_start': dist_util.gather_objects(epoch_rng)})
        self.logger.info(f'End of training at iter {current_iter}. Time consumed: '
                         f'{datetime.timedelta(seconds=int(time.time() - self.run_start))}. Saving the latest model.')

    def finish(self) -> None:
        self.save_checkpoint(-1, -1)
        if self.opt['dist']:  # DDP keeps the replicas equal; prove it (an error here means the ranks diverged)
            model = self.model
            digests = dist_util.gather_objects(dist_util.weights_digest(model.get_bare_model(model.net_g)))
            self.logger.info(f'net_g weight digests of the {len(digests)} ranks: {digests}')
            if len(set(digests)) != 1:
                raise RuntimeError(f'net_g weights differ between ranks: {digests}')
            self.logger.info(f'net_g weights identical on all {len(digests)} ranks')

    def close(self) -> None:
        """Close TensorBoard's writer (also after a stop on non-finite values or another error)."""
        if self.tb_logger:
            self.tb_logger.close()
            self.tb_logger = None

    def release(self) -> None:
        """Give back the lock on ``experiments/<name>`` (after the run, an error, Ctrl-C or SIGTERM)."""
        if self.folder_lock is not None:
            self.folder_lock.release()


def train_pipeline(root_path: str = ROOT_PATH, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    opt, args = parse_options(root_path, is_train=True, argv=argv)
    bind_console()
    run = TrainingRun(opt, args.opt, command_line('train.py', sys.argv[1:] if argv is None else argv), args.wait)
    try:
        run.setup()
        run.run()
        run.finish()
    finally:
        run.close()
        run.release()
    return opt
