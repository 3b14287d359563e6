"""Train EXTRACTER / TTSR: BasicSR's training pipeline without its CUDA assumptions, with exact resume.

    python extracter/train.py -opt options/train/rec.yml [--auto_resume] [--overwrite]
    torchrun --nproc_per_node=N extracter/train.py -opt options/train/rec.yml --launcher pytorch

Outputs go to BasicSR's places: ``experiments/<name>/`` (models, training_states, visualization, log) and
``tb_logger/<name>/``. A resumed run continues exactly where the saved one stopped: networks, EMA, critic, optimisers,
schedulers, the warm-up phase (a function of the iteration), the position inside the epoch and all random states.
"""

import contextlib
import datetime
import logging
import math
import os
import sys
import time
from os import path as osp
from typing import Any, Dict, List, Optional

if __package__ in (None, ''):  # run as a script: make the package importable from the repository root
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import extracter  # noqa: E402,F401  (compat shim + registries, before basicsr)

# isort: split
import torch  # noqa: E402
from basicsr.data import build_dataloader, build_dataset  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import get_env_info, get_root_logger, get_time_str, init_tb_logger, mkdir_and_rename  # noqa: E402
from basicsr.utils.options import dict2str  # noqa: E402

from extracter.models.refsr_model import list_training_states, load_checkpoint  # noqa: E402
from extracter.utils import dist as dist_util  # noqa: E402
from extracter.utils.options import OptionError, parse_options  # noqa: E402

ROOT_PATH = osp.dirname(osp.dirname(osp.abspath(__file__)))


def find_resume_state(opt: Dict[str, Any]) -> Optional[str]:
    """The explicit ``path.resume_state``, or with ``--auto_resume`` the newest complete state of this experiment."""
    if opt['path'].get('resume_state'):
        return opt['path']['resume_state']
    if opt['auto_resume']:
        iters = list_training_states(opt['path']['training_states'])
        if iters:
            return osp.join(opt['path']['training_states'], f'{iters[-1]}.state')
    return None


def prepare_experiment_dirs(opt: Dict[str, Any], resuming: bool) -> None:
    """Rank 0 creates ``experiments/<name>``; an existing one is kept unless resuming or ``--overwrite`` (then it is
    renamed to ``<name>_archived_<time>``, never deleted)."""
    root = opt['path']['experiments_root']
    if dist_util.is_main_process() and not resuming:
        if osp.exists(root) and os.listdir(root):
            if not opt['overwrite']:
                raise FileExistsError(f'{root} already exists; use --auto_resume to continue that run or --overwrite '
                                      'to archive it and start afresh')
            mkdir_and_rename(root)
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
    from extracter.utils.file_io import atomic_write_text

    with open(opt_file, encoding='utf-8') as f:
        text = f.read()
    header = f'# GENERATE TIME: {time.asctime()}\n# CMD:\n# {" ".join(sys.argv)}\n\n'
    atomic_write_text(osp.join(opt['path']['experiments_root'], osp.basename(opt_file)), header + text)


def create_dataloaders(opt: Dict[str, Any], logger: logging.Logger):
    train_loader = train_sampler = None
    val_loaders = []
    for phase, ds_opt in opt['datasets'].items():
        if ds_opt['phase'] == 'train':
            if ds_opt.get('persistent_workers'):
                raise OptionError(f'datasets.{phase}.persistent_workers: exact resume needs fresh workers each epoch; '
                                  'set it to false')
            train_set = build_dataset(ds_opt)
            ratio = ds_opt.get('dataset_enlarge_ratio', 1)
            train_sampler = EnlargedSampler(train_set, opt['world_size'], opt['rank'], ratio)
            train_loader = build_dataloader(train_set, ds_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                            sampler=train_sampler, seed=opt['manual_seed'])
            if len(train_loader) == 0:
                raise OptionError(f'datasets.{phase}: {len(train_set)} images give no full batch of '
                                  f'{ds_opt["batch_size_per_gpu"]} per process')
            logger.info(f'Training set {ds_opt["name"]}: {len(train_set)} images, enlarge ratio {ratio}, batch '
                        f'{ds_opt["batch_size_per_gpu"]} per process x {opt["world_size"]}, '
                        f'{len(train_loader)} iterations per epoch')
        else:
            val_set = build_dataset(ds_opt)
            val_loaders.append(build_dataloader(val_set, ds_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                                sampler=None, seed=opt['manual_seed']))
            logger.info(f'Validation set {ds_opt["name"]}: {len(val_set)} images')
    return train_loader, train_sampler, val_loaders


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Validation must not change the training's random streams (so a resumed run matches an uninterrupted one)."""
    state = dist_util.get_rng_state(device)
    try:
        yield
    finally:
        dist_util.set_rng_state(state, device)


def setup_run_logger(log_file: str) -> logging.Logger:
    """BasicSR's 'basicsr' logger with this run's log file (rank 0). basicsr's get_root_logger attaches a file only on
    its first call in a process; here each run (also a second one in the same process) gets its own file."""
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO)
    for handler in list(logger.handlers):
        if getattr(handler, 'extracter_run_file', False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.INFO if dist_util.is_main_process() else logging.ERROR)
    if dist_util.is_main_process():
        handler = logging.FileHandler(log_file, 'w', encoding='utf-8')
        handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
        handler.extracter_run_file = True
        logger.addHandler(handler)
    return logger


def format_log(opt: Dict[str, Any], epoch: int, current_iter: int, total_iters: int, lrs: List[float],
               its_per_s: float, eta_s: float, data_time: float, losses: Dict[str, float]) -> str:
    lr_str = ','.join(f'{v:.3e}' for v in lrs)
    eta = str(datetime.timedelta(seconds=int(eta_s)))
    loss_str = ' '.join(f'{k}: {v:.4e}' for k, v in losses.items())
    return (f'[{opt["name"][:12]}][epoch:{epoch:3d}, iter:{current_iter:8,d}/{total_iters:,d}, lr:({lr_str})] '
            f'[{its_per_s:.3f} it/s, eta: {eta}, data: {data_time:.3f}s] {loss_str}')


def train_pipeline(root_path: str = ROOT_PATH, argv: Optional[List[str]] = None) -> Dict[str, Any]:
    opt, args = parse_options(root_path, is_train=True, argv=argv)
    opt.setdefault('logger', {})
    opt['logger'].setdefault('print_freq', 100)
    opt['logger'].setdefault('save_checkpoint_freq', 5000)
    torch.backends.cudnn.benchmark = bool(opt.get('cudnn_benchmark', False))
    device = opt['device']

    resume_path = find_resume_state(opt)
    resume_state = load_checkpoint(resume_path, device) if resume_path else None
    prepare_experiment_dirs(opt, resuming=resume_state is not None)
    copy_option_file(args.opt, opt)
    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = setup_run_logger(log_file)
    logger.info(get_env_info())
    logger.info(f'device: {device}, world size: {opt["world_size"]}, rank: {opt["rank"]}')
    logger.info(dict2str({k: v for k, v in opt.items() if k != 'device'}))
    tb_logger = None
    if opt['logger'].get('use_tb_logger') and dist_util.is_main_process():
        tb_logger = init_tb_logger(log_dir=osp.join(opt['root_path'], 'tb_logger', opt['name']))

    train_loader, train_sampler, val_loaders = create_dataloaders(opt, logger)
    total_iters = int(opt['train']['total_iter'])
    iters_per_epoch = len(train_loader)
    total_epochs = math.ceil(total_iters / iters_per_epoch)

    model = build_model(opt)
    start_epoch, current_iter, skip = 0, 0, 0
    epoch_rng_all: Optional[List[Any]] = None
    if resume_state is not None:
        model.resume_training(resume_state)
        start_epoch, current_iter = resume_state['epoch'], resume_state['iter']
        skip = int(resume_state.get('iter_in_epoch', 0))
        if skip >= iters_per_epoch:  # saved at the end of an epoch: start the next one
            start_epoch, skip = start_epoch + 1, 0
        epoch_rng_all = resume_state.get('rng_epoch_start')
        logger.info(f'Resuming from {resume_path}: epoch {start_epoch}, iter {current_iter} '
                    f'({skip} iterations into the epoch)')

    val_opt = opt.get('val') or {}
    val_freq = val_opt.get('val_freq')
    save_freq = int(opt['logger']['save_checkpoint_freq'])
    print_freq = int(opt['logger']['print_freq'])
    logger.info(f'Start training from epoch {start_epoch}, iter {current_iter}')
    rank, world = dist_util.get_dist_info()
    last_saved = current_iter if resume_state is not None else -1
    window_start, window_iters, data_time = time.time(), 0, 0.0
    run_start, run_start_iter = time.time(), current_iter
    epoch = start_epoch
    for epoch in range(start_epoch, total_epochs + 1):
        if current_iter >= total_iters:
            break
        train_sampler.set_epoch(epoch)
        resuming_here = skip > 0 and epoch == start_epoch
        if resuming_here:
            if epoch_rng_all is not None and len(epoch_rng_all) == world:
                dist_util.set_rng_state(epoch_rng_all[rank], device)  # replay the epoch's loader exactly
            epoch_rng = dist_util.get_rng_state(device)
            loader_iter = iter(train_loader)
            for _ in range(skip):  # the batches this epoch already used (loaded, not trained on)
                next(loader_iter)
            iter_in_epoch = skip
            model.restore_rng(resume_state)
            skip = 0
        else:
            if epoch == start_epoch and resume_state is not None:
                model.restore_rng(resume_state)
            epoch_rng = dist_util.get_rng_state(device)
            loader_iter = iter(train_loader)
            iter_in_epoch = 0
        epoch_rng_all = None
        tic = time.time()
        for train_data in loader_iter:
            data_time += time.time() - tic
            if current_iter >= total_iters:
                break
            current_iter += 1
            iter_in_epoch += 1
            model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            window_iters += 1

            if current_iter % print_freq == 0 or current_iter == total_iters:
                now = time.time()
                its = window_iters / max(now - window_start, 1e-9)
                overall = (current_iter - run_start_iter) / max(now - run_start, 1e-9)
                losses = dict(model.get_current_log())
                msg = format_log(opt, epoch, current_iter, total_iters, model.get_current_learning_rate(), its,
                                 (total_iters - current_iter) / max(overall, 1e-9), data_time / window_iters, losses)
                logger.info(msg + (' [warm-up: reconstruction only]' if model.in_rec_only_phase(current_iter) else ''))
                if tb_logger:
                    for k, v in losses.items():
                        tb_logger.add_scalar(f'losses/{k}', v, current_iter)
                    for i, lr in enumerate(model.get_current_learning_rate()):
                        tb_logger.add_scalar(f'lr/group{i}', lr, current_iter)
                    tb_logger.add_scalar('speed/it_per_s', its, current_iter)
                window_start, window_iters, data_time = now, 0, 0.0

            if current_iter % save_freq == 0 or current_iter == total_iters:
                if epoch_rng_all is None:
                    epoch_rng_all = dist_util.gather_objects(epoch_rng)
                logger.info(f'Saving models and training state at iter {current_iter}.')
                model.save(epoch, current_iter, {'iter_in_epoch': iter_in_epoch, 'rng_epoch_start': epoch_rng_all})
                last_saved = current_iter

            if val_freq and current_iter % val_freq == 0 and val_loaders:
                with preserved_rng(device):
                    for val_loader in val_loaders:
                        model.validation(val_loader, current_iter, tb_logger, val_opt.get('save_img', False))
            tic = time.time()

    if last_saved != current_iter:
        model.save(epoch, current_iter, {'iter_in_epoch': iter_in_epoch,
                                         'rng_epoch_start': dist_util.gather_objects(epoch_rng)})
    logger.info(f'End of training at iter {current_iter}. Time consumed: '
                f'{datetime.timedelta(seconds=int(time.time() - run_start))}. Saving the latest model.')
    model.save(-1, -1)
    if opt['dist']:  # DDP keeps the replicas equal; prove it (an error here means the ranks diverged)
        digests = dist_util.gather_objects(dist_util.weights_digest(model.get_bare_model(model.net_g)))
        logger.info(f'net_g weight digests of the {len(digests)} ranks: {digests}')
        if len(set(digests)) != 1:
            raise RuntimeError(f'net_g weights differ between ranks: {digests}')
        logger.info(f'net_g weights identical on all {len(digests)} ranks')
    if tb_logger:
        tb_logger.close()
    return opt


def run_cli(pipeline) -> None:
    """Run a pipeline as a command: option and file errors become one clear line, distributed state is cleaned up."""
    try:
        pipeline(ROOT_PATH)
    except (OptionError, FileExistsError, FileNotFoundError) as err:
        raise SystemExit(f'error: {err}') from err
    finally:
        dist_util.destroy()


def main() -> None:
    run_cli(train_pipeline)


if __name__ == '__main__':
    main()
