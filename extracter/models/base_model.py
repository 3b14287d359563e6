"""BaseSRModel: BasicSR's model lifecycle (feed data, optimise, test, validate, save, resume), shared by the
reference-based :class:`~extracter.models.refsr_model.RefSRModel` (EXTRACTER, TTSR) and the single-image
:class:`~extracter.models.sisr_model.SISRModel` (DRCT). A subclass states whether its network uses a reference
(``uses_reference``), how a batch feeds it (``feed_data``) and how the network is called in training
(``train_forward``) and at test time (``_forward_any_size``, through the inference engine).

Training follows the papers: a reconstruction-only warm-up (the original's "init epochs", ``train.rec_only_iter``),
then L = w_rec L_rec + w_per L_per + w_grd L_grd + w_adv L_adv (EXTRACTER Sec. 3.5; TTSR Eq. 8-11), with a WGAN-GP
critic updated ``net_d_iters`` times per generator step. A network's feature extractor (EXTRACTER's DFE, TTSR's LTE)
is a parameter group with its own learning rate (``train.lr_fe``).

Device and distributed handling come from :mod:`extracter.utils.dist` (no CUDA assumption); checkpoints are
BasicSR's files (``models/net_g_<iter>.pth`` = ``{'params', 'params_ema'}``, ``training_states/<iter>.state``),
written atomically, the state last, so the newest state always refers to complete network files.

Relation with BasicSR: these are our own classes with BasicSR's model lifecycle and method names (``feed_data``,
``optimize_parameters``, ``test``, ``validation``, ``save``, ``resume_training``, ``update_learning_rate``,
``get_current_log``, ...); the subclasses are registered in BasicSR's MODEL_REGISTRY so ``build_model`` finds them
(this base is not: it is no model type). They do not inherit BasicSR's ``BaseModel`` (whose device handling assumes
CUDA and whose saves are not atomic). They use BasicSR's registries, ``build_network``/``build_loss``, metrics, LR
schedulers and ``tensor2img``.
"""

import abc
import os
import warnings
from collections import OrderedDict
from copy import deepcopy
from os import path as osp
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger, tensor2img
from torch import nn
from tqdm import tqdm

from extracter.inference.engine import refsr_kwargs_from_options
from extracter.inference.network import load_state_into
from extracter.models.nonfinite import NonFiniteError, SkippedStep, all_finite, check_step, nonfinite_tensors
from extracter.options.schema import VAL_OWN_KEYS, optimizer_class, option_errors, scheduler_class
from extracter.utils import dist as dist_util
from extracter.utils.checkpoint import load_checkpoint as _read_checkpoint
from extracter.utils.checkpoint import network_state
from extracter.utils.file_io import atomic_torch_save, atomic_write


def imwrite_atomic(img: np.ndarray, path: str) -> None:
    """Write a uint8 BGR image (extension decides the format) via a temporary file in the same folder."""
    ok, buf = cv2.imencode(osp.splitext(path)[1] or '.png', img)
    if not ok:
        raise OSError(f'cannot encode image for {path}')

    def _write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(buf.tobytes())

    atomic_write(path, _write)


def load_checkpoint(path: str, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """A training state or network file, every tensor on ``device`` (see :mod:`extracter.utils.checkpoint`)."""
    return _read_checkpoint(path, dist_util.map_location(device or torch.device('cpu')))


class BaseSRModel(abc.ABC):
    """What the SR models share; a subclass states ``uses_reference``, ``feed_data``, ``train_forward`` and
    ``_forward_any_size``."""

    uses_reference: bool  # must agree with the architecture's own fact (``uses_reference``)

    def __init__(self, opt: Dict[str, Any]) -> None:
        self.opt = opt
        self.check_architecture(opt['network_g'].get('type'))
        self.device = opt.get('device') or dist_util.select_device(opt.get('num_gpu', 'auto'))
        self.is_train = opt['is_train']
        self.schedulers: List[Any] = []
        self.optimizers: List[torch.optim.Optimizer] = []
        self.log_dict: Dict[str, float] = OrderedDict()
        self.metric_records: Dict[str, List[Dict[str, Any]]] = {}
        self.source = opt.get('opt_path', '')  # the option file, named in errors
        with option_errors(self.source, 'network_g'):
            self.net_g = self.model_to_device(build_network(deepcopy(opt['network_g'])))
        self.print_network(self.net_g)
        path_opt = opt.get('path', {})
        if path_opt.get('pretrain_network_g'):
            with option_errors(self.source, 'path.pretrain_network_g'):
                self.load_network(self.net_g, path_opt['pretrain_network_g'], path_opt.get('strict_load_g', True),
                                  path_opt.get('param_key_g', 'params'))
        if self.is_train:
            self.init_training_settings()

    # ------------------------------------------------------------------ setup
    @classmethod
    def check_architecture(cls, arch: Optional[str]) -> None:
        """A reference-based model needs a reference-based network and a single-image model a single-image one."""
        from extracter.archs.descriptor import find_descriptor
        from extracter.registry import basicsr_registry

        descriptor = find_descriptor(basicsr_registry('arch').get(arch))
        if (descriptor is not None and descriptor.uses_reference) != cls.uses_reference:
            other = 'SISRModel' if cls.uses_reference else 'RefSRModel'
            kind = 'reference-based' if cls.uses_reference else 'single-image'
            raise ValueError(f'model_type {cls.__name__} needs a {kind} network; network_g.type {arch} is not one: '
                             f'use model_type {other}')

    def model_to_device(self, net: nn.Module) -> nn.Module:
        return dist_util.wrap_model(net, self.device, self.opt.get('dist', False),
                                    self.opt.get('find_unused_parameters', False))

    def get_bare_model(self, net: nn.Module) -> nn.Module:
        return dist_util.bare_model(net)

    def print_network(self, net: nn.Module) -> None:
        if dist_util.is_main_process():
            bare = self.get_bare_model(net)
            n_params = sum(p.numel() for p in bare.parameters())
            get_root_logger().info(f'Network: {type(bare).__name__}, with parameters: {n_params:,d}')

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        self.net_g.train()
        self.ema_decay = float(train_opt.get('ema_decay', 0) or 0)
        if self.ema_decay > 0:
            get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
            self.net_g_ema = build_network(deepcopy(self.opt['network_g'])).to(self.device)
            load_path = self.opt['path'].get('pretrain_network_g')
            if load_path and 'params_ema' in load_checkpoint(load_path):
                self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)  # copy net_g
            self.net_g_ema.eval()
            for p in self.net_g_ema.parameters():
                p.requires_grad = False

        def _loss(key: str) -> Optional[nn.Module]:
            if not train_opt.get(key):
                return None
            with option_errors(self.source, f'train.{key}'):
                return build_loss(deepcopy(train_opt[key])).to(self.device)

        self.cri_pix = _loss('pixel_opt')
        self.cri_perceptual = _loss('perceptual_opt')
        self.cri_gradient = _loss('gradient_opt')
        self.cri_gan = _loss('gan_opt')
        if self.cri_pix is None:
            raise ValueError('train.pixel_opt (the reconstruction loss) is required')
        self.rec_only_iter = int(train_opt.get('rec_only_iter', 0))
        self.net_d_iters = int(train_opt.get('net_d_iters', 1))
        if self.cri_gan is not None:
            if not hasattr(self.cri_gan, 'discriminator_loss'):
                raise ValueError(f'train.gan_opt: {type(self.cri_gan).__name__} has no discriminator_loss; use '
                                 'WGANGPLoss')
            with option_errors(self.source, 'network_d'):
                self.net_d = self.model_to_device(build_network(deepcopy(self.opt['network_d'])))
            self.print_network(self.net_d)
            path_opt = self.opt['path']
            if path_opt.get('pretrain_network_d'):
                with option_errors(self.source, 'path.pretrain_network_d'):
                    self.load_network(self.net_d, path_opt['pretrain_network_d'], path_opt.get('strict_load_d', True),
                                      path_opt.get('param_key_d', 'params'))
            self.net_d.train()
        self.setup_optimizers()
        self.setup_schedulers()

    def feature_extractor(self) -> Optional[nn.Module]:
        """The parameter group with its own learning rate (``train.lr_fe``); None when the network has none (the
        default)."""
        return None
    def setup_optimizers(self) -> None:
        train_opt = self.opt['train']
        optim_g = deepcopy(train_opt['optim_g'])
        optim_type = optim_g.pop('type')
        lr = optim_g.pop('lr')
        lr_fe = train_opt.get('lr_fe')
        fe = self.feature_extractor()
        fe_ids = {id(p) for p in fe.parameters()} if fe is not None else set()
        main_params, fe_params = [], []
        for p in self.net_g.parameters():
            if p.requires_grad:
                (fe_params if id(p) in fe_ids else main_params).append(p)
        groups = [{'params': main_params, 'lr': lr}]
        if fe_params:  # the feature extractor's own learning rate (original: lr_rate_lte = 1e-5)
            groups.append({'params': fe_params, 'lr': lr if lr_fe is None else float(lr_fe)})
        with option_errors(self.source, 'train.optim_g'):
            self.optimizer_g = self.get_optimizer(optim_type, groups, lr, **optim_g)
        self.optimizers.append(self.optimizer_g)
        if self.cri_gan is not None:
            optim_d = deepcopy(train_opt['optim_d'])
            optim_type = optim_d.pop('type')
            with option_errors(self.source, 'train.optim_d'):
                self.optimizer_d = self.get_optimizer(optim_type, self.net_d.parameters(), optim_d.pop('lr'),
                                                      **optim_d)
            self.optimizers.append(self.optimizer_d)

    def get_optimizer(self, optim_type: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
        if 'betas' in kwargs:
            kwargs['betas'] = tuple(float(b) for b in kwargs['betas'])
        optimizer = optimizer_class(optim_type)(params, lr=float(lr), **kwargs)
        for group in optimizer.param_groups:  # the warm-up's reference (schedulers set it too)
            group.setdefault('initial_lr', group['lr'])
        return optimizer

    def setup_schedulers(self) -> None:
        sched = deepcopy(self.opt['train'].get('scheduler') or {})
        if not sched:
            return
        cls = scheduler_class(sched.pop('type'))
        with option_errors(self.source, 'train.scheduler'):
            for optimizer in self.optimizers:
                self.schedulers.append(cls(optimizer, **sched))

    # ------------------------------------------------------------------ learning rate, logs, best metrics
    def update_learning_rate(self, current_iter: int, warmup_iter: int = -1) -> None:
        """Step the schedulers (from the 2nd iteration), then BasicSR's linear warm-up over ``warmup_iter``. The
        schedule follows the iteration, also after optimiser steps skipped on non-finite values (torch's warning
        about a scheduler step before the first optimiser step is expected then)."""
        if current_iter > 1:
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', message=r'Detected call of `lr_scheduler\.step\(\)` before')
                for scheduler in self.schedulers:
                    scheduler.step()
        if current_iter < warmup_iter:
            for optimizer in self.optimizers:
                for group in optimizer.param_groups:
                    group['lr'] = group['initial_lr'] / warmup_iter * current_iter

    def get_current_learning_rate(self) -> List[float]:
        return [group['lr'] for group in self.optimizers[0].param_groups]

    def get_current_log(self) -> Dict[str, float]:
        return self.log_dict

    def _initialize_best_metric_results(self, dataset_name: str) -> None:
        if not hasattr(self, 'best_metric_results'):
            self.best_metric_results = {}
        if dataset_name in self.best_metric_results:
            return
        record = {}
        for metric, content in self.opt['val']['metrics'].items():
            better = content.get('better', 'higher')
            record[metric] = {'better': better, 'val': float('-inf') if better == 'higher' else float('inf'),
                              'iter': -1}
        self.best_metric_results[dataset_name] = record

    def _update_best_metric_result(self, dataset_name: str, metric: str, value: float, current_iter) -> None:
        best = self.best_metric_results[dataset_name][metric]
        if (value >= best['val']) if best['better'] == 'higher' else (value <= best['val']):
            best['val'], best['iter'] = value, current_iter

    # ------------------------------------------------------------------ data and steps
    @abc.abstractmethod
    def feed_data(self, data: Dict[str, Any]) -> None:
        """Move a batch's tensors to the device as this model's inputs (``self.lq``, ``self.gt`` when present, ...)."""

    def in_rec_only_phase(self, current_iter: int) -> bool:
        """The warm-up phase (iterations 1..rec_only_iter) trains with the reconstruction loss only."""
        return current_iter <= self.rec_only_iter

    def optimize_parameters(self, current_iter: int) -> None:
        """One iteration: the critic's steps (after the warm-up, with a GAN loss), then the generator's. A step
        whose loss terms or gradients are not all finite is skipped and listed in ``self.skipped_steps`` (see
        :mod:`extracter.models.nonfinite`); the EMA follows only the generator steps taken."""
        if not hasattr(self, 'gt'):
            raise KeyError("training batches need 'gt'")
        rec_only = self.in_rec_only_phase(current_iter)
        use_gan = self.cri_gan is not None and not rec_only
        self.skipped_steps: List[SkippedStep] = []
        loss_dict: Dict[str, torch.Tensor] = OrderedDict()
        self.optimizer_g.zero_grad(set_to_none=True)
        self.output = self.train_forward()
        if use_gan:  # critic steps first (as the original): net_d_iters updates on the detached SR of this batch
            loss_dict.update(self._critic_steps())
        terms = self._generator_losses(rec_only, use_gan)
        terms['l_total'].backward()  # also on a non-finite loss: DDP's reducer expects every backward
        loss_dict.update((k, v.detach()) for k, v in terms.items())
        stepped = self._guarded_step('generator', self.optimizer_g, terms)
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if stepped and self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _critic_steps(self) -> Dict[str, torch.Tensor]:
        """``net_d_iters`` critic steps on the detached SR; the last step's loss terms."""
        for p in self.net_d.parameters():
            p.requires_grad = True
        for _ in range(self.net_d_iters):
            self.optimizer_d.zero_grad(set_to_none=True)
            l_d, wdist, gp, d_real = self.cri_gan.discriminator_loss(self.net_d, self.gt, self.output.detach())
            l_d.backward()
            self._guarded_step('critic', self.optimizer_d, OrderedDict(l_d=l_d, l_d_wdist=wdist, l_d_gp=gp))
        for p in self.net_d.parameters():
            p.requires_grad = False
        return OrderedDict(l_d=l_d.detach(), l_d_wdist=wdist.detach(), l_d_gp=gp.detach(),
                           out_d_real=d_real.detach())

    def _generator_losses(self, rec_only: bool, use_gan: bool) -> Dict[str, torch.Tensor]:
        """L = L_rec (+ L_per + L_grd + L_adv after the warm-up): the terms and ``l_total``, with gradients."""
        terms: Dict[str, torch.Tensor] = OrderedDict(l_rec=self.cri_pix(self.output, self.gt))
        if not rec_only:
            if self.cri_perceptual is not None:
                terms['l_per'] = self.cri_perceptual(self.output, self.gt)
            if self.cri_gradient is not None:
                terms['l_grd'] = self.cri_gradient(self.output, self.gt)
            if use_gan:
                # the bare critic: its weights are frozen here, so DDP must not wait for their gradients
                terms['l_adv'] = self.cri_gan(self.get_bare_model(self.net_d)(self.output))
        l_total = terms['l_rec']
        for key in list(terms)[1:]:
            l_total = l_total + terms[key]
        terms['l_total'] = l_total
        return terms

    def _guarded_step(self, network: str, optimizer: torch.optim.Optimizer, terms: Dict[str, torch.Tensor]) -> bool:
        """``optimizer.step()`` unless a loss term or a gradient is not finite (then the gradients are dropped and
        the step recorded as skipped); a step that leaves non-finite weights is recorded too. Whether it stepped."""
        params = [p for group in optimizer.param_groups for p in group['params']]
        bad_terms, grads_ok = check_step(terms, (p.grad for p in params if p.grad is not None),
                                         self.opt.get('dist', False))
        if bad_terms or not grads_ok:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps.append(SkippedStep(network, bad_terms, gradient=not bad_terms))
            return False
        optimizer.step()
        if not bool(all_finite(p.detach() for p in params)):
            self.skipped_steps.append(SkippedStep(network, weights=True))
            return False
        return True

    @abc.abstractmethod
    def train_forward(self) -> torch.Tensor:
        """The training network's SR of the current batch (with gradients)."""

    def reduce_loss_dict(self, loss_dict: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Mean of each loss over all processes (every rank gets it, so logs agree)."""
        with torch.no_grad():
            keys = list(loss_dict)
            values = torch.stack([loss_dict[k].float().mean() for k in keys])
            if self.opt.get('dist', False):
                torch.distributed.all_reduce(values)
                values /= self.opt['world_size']
            return OrderedDict((k, float(v)) for k, v in zip(keys, values.cpu()))

    def model_ema(self, decay: float = 0.999) -> None:
        net_g = self.get_bare_model(self.net_g)
        params = dict(net_g.named_parameters())
        with torch.no_grad():
            for name, p_ema in self.net_g_ema.named_parameters():
                p_ema.mul_(decay).add_(params[name].detach(), alpha=1 - decay)
            ema_buffers = dict(self.net_g_ema.named_buffers())
            for name, buf in net_g.named_buffers():
                ema_buffers[name].copy_(buf)

    # ------------------------------------------------------------------ inference
    def _inference_net(self) -> nn.Module:
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def _val_inference_kwargs(self) -> Dict[str, Any]:
        """``val``'s tile / max_memory / search options as keyword arguments of the inference engine."""
        return refsr_kwargs_from_options(self.opt.get('val'), 'val.', ignore=VAL_OWN_KEYS)

    @abc.abstractmethod
    def _forward_any_size(self, net: nn.Module) -> torch.Tensor:
        """SR of the current batch by ``net`` through the inference engine, at any input size (no gradients)."""

    def test(self) -> None:
        net = self._inference_net()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = self._forward_any_size(net)
        if was_training:
            net.train()

    def get_current_visuals(self) -> Dict[str, torch.Tensor]:
        out = OrderedDict(lq=self.lq.detach().cpu(), result=self.output.detach().cpu())
        if hasattr(self, 'gt'):
            out['gt'] = self.gt.detach().cpu()
        return out

    def validation(self, dataloader, current_iter: int, tb_logger, save_img: bool = False) -> None:
        """Rank 0 validates (on the bare / EMA network); other ranks wait."""
        if dist_util.is_main_process():
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)
        dist_util.barrier()

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self.validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter: int, tb_logger, save_img: bool) -> None:
        """Metrics on the uint8 images that are saved (BasicSR's calculate_psnr/ssim on BGR, Y channel per options);
        per-image values go to ``self.metric_records[dataset_name]``, means to ``self.metric_results``."""
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        metrics_opt = val_opt.get('metrics') or {}
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
        records: List[Dict[str, Any]] = []
        pbar = tqdm(total=len(dataloader), unit='image', desc=f'Test {dataset_name}') if val_opt.get('pbar') else None
        for val_data in dataloader:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            sr_img = tensor2img([self.output.detach().cpu()])
            record: Dict[str, Any] = {'name': img_name}
            if save_img:
                if self.opt['is_train']:
                    save_path = osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
                else:
                    suffix = val_opt.get('suffix') or self.opt['name']
                    save_path = osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')
                imwrite_atomic(sr_img, save_path)
                record['path'] = save_path
            if metrics_opt:
                if not hasattr(self, 'gt'):
                    raise KeyError(f'{dataset_name}: sample {img_name} has no gt, so val.metrics cannot be computed')
                gt_img = tensor2img([self.gt.detach().cpu()])
                if gt_img.shape != sr_img.shape:
                    raise ValueError(f'{dataset_name}/{img_name}: SR {sr_img.shape} and GT {gt_img.shape} differ; the '
                                     'GT must be 4x the LR')
                for name, m_opt in metrics_opt.items():
                    m_opt = {k: v for k, v in m_opt.items() if k != 'better'}
                    record[name] = float(calculate_metric({'img': sr_img, 'img2': gt_img}, m_opt))
            records.append(record)
            del self.lq, self.output
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix_str(img_name)
        if pbar is not None:
            pbar.close()
        self.metric_records[dataset_name] = records
        if metrics_opt:
            self.metric_results = {name: float(np.mean([r[name] for r in records])) for name in metrics_opt}
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _log_validation_metric_values(self, current_iter: int, dataset_name: str, tb_logger) -> None:
        lines = [f'Validation {dataset_name}']
        for metric, value in self.metric_results.items():
            best = self.best_metric_results[dataset_name][metric]
            lines.append(f'\t # {metric}: {value:.4f}\tBest: {best["val"]:.4f} @ {best["iter"]} iter')
        get_root_logger().info('\n'.join(lines))
        if tb_logger:
            for metric, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)

    # ------------------------------------------------------------------ checkpoints
    def load_network(self, net: nn.Module, load_path: str, strict: bool = True, param_key: Optional[str] = 'params'):
        net = self.get_bare_model(net)
        state = network_state(load_checkpoint(load_path), load_path, param_key)
        get_root_logger().info(f'Loading {type(net).__name__} from {load_path} [{param_key}]')
        load_state_into(net, state, load_path, strict)

    def save_network(self, net, net_label: str, current_iter, param_key='params') -> None:
        if not dist_util.is_main_process():
            return
        label = 'latest' if current_iter == -1 else current_iter
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {}
        for net_, key in zip(nets, keys):
            save_dict[key] = {k: v.detach().cpu() for k, v in self.get_bare_model(net_).state_dict().items()}
        atomic_torch_save(save_dict, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def check_finite_weights(self) -> None:
        """Raise :class:`~extracter.models.nonfinite.NonFiniteError` when a network to be saved (the generator, its
        EMA, the critic) holds inf or NaN. Every process checks (their weights are equal), so all of them stop."""
        nets = {'net_g': self.get_bare_model(self.net_g)}
        if hasattr(self, 'net_g_ema'):
            nets['net_g (EMA, params_ema)'] = self.net_g_ema
        if hasattr(self, 'net_d'):
            nets['net_d'] = self.get_bare_model(self.net_d)
        for label, net in nets.items():
            state = net.state_dict()
            bad = nonfinite_tensors(state)
            if bad:
                raise NonFiniteError(f'{label} has non-finite weights ({len(bad)} of {len(state)} tensors, e.g. '
                                     f'{bad[0]!r}); nothing was saved')

    def save(self, epoch: int, current_iter: int, loop_state: Optional[Dict[str, Any]] = None) -> None:
        """Networks first, then the training state (atomic): the newest state always has complete networks. Networks
        with non-finite weights are refused before anything is written (:meth:`check_finite_weights`)."""
        self.check_finite_weights()
        rng = dist_util.gather_objects(dist_util.get_rng_state(self.device))  # collective: every rank calls save
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, ['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        if hasattr(self, 'net_d'):
            self.save_network(self.net_d, 'net_d', current_iter)
        if current_iter != -1 and dist_util.is_main_process():
            state = {'epoch': epoch, 'iter': current_iter,
                     'optimizers': [o.state_dict() for o in self.optimizers],
                     'schedulers': [s.state_dict() for s in self.schedulers],
                     'rec_only': self.in_rec_only_phase(current_iter), 'rec_only_iter': self.rec_only_iter,
                     'rng': rng, 'best_metric_results': getattr(self, 'best_metric_results', {})}
            state.update(loop_state or {})
            atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))
        dist_util.barrier()

    def resume_training(self, resume_state: Dict[str, Any]) -> None:
        """Networks, EMA, critic, optimisers, schedulers and random states of the saved iteration."""
        it = resume_state['iter']
        models = self.opt['path']['models']
        g_path = osp.join(models, f'net_g_{it}.pth')
        self.load_network(self.net_g, g_path, True, 'params')
        if hasattr(self, 'net_g_ema'):
            self.load_network(self.net_g_ema, g_path, True, 'params_ema')
        if hasattr(self, 'net_d'):
            self.load_network(self.net_d, osp.join(models, f'net_d_{it}.pth'), True, 'params')
        if len(resume_state['optimizers']) != len(self.optimizers):
            raise ValueError(f'the resume state has {len(resume_state["optimizers"])} optimisers, these options make '
                             f'{len(self.optimizers)} (was the GAN loss switched on or off?)')
        if len(resume_state['schedulers']) != len(self.schedulers):
            raise ValueError('the resume state and these options have different numbers of schedulers')
        option_lrs = [[group['initial_lr'] for group in o.param_groups] for o in self.optimizers]
        for o, s in zip(self.optimizers, resume_state['optimizers']):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, resume_state['schedulers']):
            sch.load_state_dict(s)
        self._apply_option_lrs(option_lrs)
        if resume_state.get('rec_only_iter', self.rec_only_iter) != self.rec_only_iter:
            get_root_logger().warning(f"train.rec_only_iter changed from {resume_state['rec_only_iter']} to "
                                      f'{self.rec_only_iter}: the warm-up phase follows the new value')
        if resume_state.get('best_metric_results'):
            self.best_metric_results = resume_state['best_metric_results']

    def _apply_option_lrs(self, option_lrs: List[List[float]]) -> None:
        """A resumed run takes the learning rates of its options where they differ from the saved run's (e.g. a lower
        ``train.optim_g.lr`` after a run stopped on non-finite values): each group's current rate is scaled by the
        same factor, so the schedule's position and the warm-up are kept. Equal options change nothing."""
        names = ('train.optim_g', 'train.optim_d')
        for i, (optimizer, lrs) in enumerate(zip(self.optimizers, option_lrs)):
            for j, (group, new) in enumerate(zip(optimizer.param_groups, lrs)):
                old = group.get('initial_lr', new)
                if old == new:
                    continue
                group['lr'] = group['lr'] * new / old if old else new
                group['initial_lr'] = new
                for scheduler in self.schedulers:
                    if scheduler.optimizer is optimizer:
                        scheduler.base_lrs[j] = new
                which = ('train.lr_fe' if i == 0 and j == 1 else f'{names[min(i, 1)]}.lr')
                get_root_logger().warning(f'{which}: {new:g} in the options, {old:g} in the resume state: the '
                                          f'options\' rate is used (now {group["lr"]:g})')

    def restore_rng(self, resume_state: Dict[str, Any]) -> None:
        rank, world = dist_util.get_dist_info()
        states = resume_state.get('rng') or []
        if len(states) == world:
            dist_util.set_rng_state(states[rank], self.device)
        else:
            get_root_logger().warning(f'resume state holds random states for {len(states)} processes, this run has '
                                      f'{world}: the random streams restart (the run is not bit-exact)')


def list_training_states(folder: str) -> List[int]:
    """Iterations with a complete training state in ``folder`` (temporary files of interrupted saves are ignored)."""
    if not osp.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        stem, ext = osp.splitext(name)
        if ext == '.state' and stem.isdigit():
            out.append(int(stem))
    return sorted(out)
