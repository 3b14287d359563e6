"""C2-Matching's contrastive training stages (Jiang et al., ICCV 2021, Sec. 3.1) in BasicSR's lifecycle
(:class:`~extracter.models.base_model.BaseSRModel`: optimiser, schedulers, atomic checkpoints, exact resume,
non-finite guard):

- stage 1, :class:`TeacherContrasModel`: the contrastive correspondence network (``network_g``, two VGG-16
  branches, :class:`~extracter.archs.c2_matching.contras_extractor.ContrasExtractorSep`) learns to match an HR image
  with a warped copy of it: ``net(gt, ref)``;
- stage 2, :class:`StudentContrasDistillationModel`: the student (``network_g``) matches the upsampled LR with the
  warped HR, ``net(lq_up, ref)``, and learns the frozen stage-1 teacher's (``network_teacher``, loaded from
  ``path.pretrain_network_teacher``) correspondence distribution on ``(gt, ref)`` besides the contrastive loss.

Batches come from :class:`~extracter.data.contrastive_dataset.ContrastiveWarpDataset`; the loss is
:class:`~extracter.losses.contrastive_loss.ContrastiveCorrespondenceLoss` (``train.contrastive_opt``). Validation logs
the mean loss terms over the validation set (the original's), with fixed warps. The original's names
(``TeacherContrasModel``, ``StudentContrasDistillationModel``) are kept; its training options map onto ours as in
``options/train/c2matching_stage1_teacher.yml`` / ``_stage2_student.yml``. The student is saved as ``net_g`` (the
original: ``net_student``); the teacher is not saved (it does not change).
"""

from collections import OrderedDict
from copy import deepcopy
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from torch import nn

from extracter.models.base_model import BaseSRModel, load_checkpoint
from extracter.models.nonfinite import SkippedStep
from extracter.options.schema import option_errors
from extracter.registry import MODEL_REGISTRY

# what trains an SR network and means nothing to a contrastive stage: refused, so a mixed-up option file is named
SR_ONLY_TRAIN_KEYS = ('pixel_opt', 'perceptual_opt', 'gradient_opt', 'gan_opt', 'ema_decay', 'lr_fe',
                      'rec_only_iter', 'optim_d', 'net_d_iters')


class ContrastiveModel(BaseSRModel):
    """What both stages share: the network is a two-branch feature extractor returning ``{'dense_features1',
    'dense_features2'}``, the loss is ``train.contrastive_opt``; a subclass states the branches' inputs
    (``feed_data``, :meth:`train_forward`) and the teacher's (:meth:`teacher_features`)."""

    uses_reference = True  # the second branch sees the (warped) reference
    REQUIRED_TRAIN_KEYS = ('optim_g', 'total_iter', 'contrastive_opt')

    @classmethod
    def check_architecture(cls, arch: Optional[str]) -> None:
        """A contrastive stage trains a feature extractor; an SR network (one with a descriptor) is refused."""
        from extracter.archs.descriptor import find_descriptor
        from extracter.registry import basicsr_registry

        if find_descriptor(basicsr_registry('arch').get(arch)) is not None:
            raise ValueError(f'model_type {cls.__name__} trains the contrastive correspondence network '
                             f'(network_g.type: ContrasExtractorSep); {arch} is a super-resolution network: use '
                             'model_type RefSRModel or SISRModel')

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__(opt)
        path_opt = opt.get('path') or {}
        if path_opt.get('init_vgg16') and not path_opt.get('pretrain_network_g'):
            self.init_from_vgg16(self.net_g, path_opt['init_vgg16'])

    def init_from_vgg16(self, net: nn.Module, path: str) -> None:
        """Both branches from torchvision's ImageNet VGG-16 (``vgg16-397923af.pth``), the original's initialisation
        (``vgg16(pretrained=True)``); nothing is downloaded."""
        with option_errors(self.source, 'path.init_vgg16'):
            state = load_checkpoint(path)
            bare = self.get_bare_model(net)
            for branch in (bare.feature_extraction_image1, bare.feature_extraction_image2):
                branch.load_vgg16_features(state)
        get_root_logger().info(f'Initialised both branches from the VGG-16 weights {path}')

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        given = [key for key in SR_ONLY_TRAIN_KEYS if train_opt.get(key) not in (None, 0)]
        if given:
            with option_errors(self.source, f'train.{given[0]}'):
                raise ValueError(f'{type(self).__name__} trains with train.contrastive_opt only; remove '
                                 f'{", ".join("train." + k for k in given)}')
        self.net_g.train()
        self.ema_decay, self.rec_only_iter, self.cri_gan = 0.0, 0, None
        with option_errors(self.source, 'train.contrastive_opt'):
            self.cri_contrastive = build_loss(deepcopy(train_opt['contrastive_opt'])).to(self.device)
        self.setup_optimizers()
        self.setup_schedulers()

    # ------------------------------------------------------------------ steps
    def teacher_features(self) -> Optional[Dict[str, torch.Tensor]]:
        """The teacher's features of the current batch (stage 2), None in stage 1."""
        return None

    def loss_terms(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.cri_contrastive(features, self.warp_coords, self.teacher_features())

    def optimize_parameters(self, current_iter: int) -> None:
        """One step on the contrastive loss (+ distillation); skipped (``self.skipped_steps``) when a term or a
        gradient is not finite."""
        self.skipped_steps: List[SkippedStep] = []
        self.optimizer_g.zero_grad(set_to_none=True)
        self.output = self.train_forward()
        terms = self.loss_terms(self.output)
        terms['l_total'].backward()
        self._guarded_step('network', self.optimizer_g, terms)
        self.log_dict = self.reduce_loss_dict(OrderedDict((k, v.detach()) for k, v in terms.items()))

    def _forward_any_size(self, net: nn.Module) -> Dict[str, torch.Tensor]:
        return self.train_forward(net)

    def nondist_validation(self, dataloader, current_iter: int, tb_logger, save_img: bool) -> None:
        """The mean loss terms over the validation set (fixed warps), logged and kept in ``self.metric_results``."""
        dataset_name = dataloader.dataset.opt['name']
        totals: Dict[str, List[float]] = {}
        for val_data in dataloader:
            self.feed_data(val_data)
            self.test()
            with torch.no_grad():
                for key, value in self.loss_terms(self.output).items():
                    totals.setdefault(key, []).append(float(value))
        self.metric_results = {key: float(np.mean(values)) for key, values in totals.items()}
        get_root_logger().info(f'Validation {dataset_name} # ' + ' # '.join(
            f'{key}: {value:.4e}' for key, value in self.metric_results.items()))
        if tb_logger:
            for key, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{key}', value, current_iter)

    def _batch(self, data: Dict[str, Any], keys) -> None:
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(f'the batch has no {missing}; {type(self).__name__} trains on ContrastiveWarpDataset '
                           'samples (gt, lq_up, ref, warp_coords)')
        for key in keys:
            setattr(self, key, data[key].to(self.device, non_blocking=True))


@MODEL_REGISTRY.register()
class TeacherContrasModel(ContrastiveModel):
    """Stage 1: the teacher matches the HR image with its warped copy, ``net(gt, ref)``; the loss is the contrastive
    triplet loss alone (``train.contrastive_opt.distill_weight: 0``)."""

    def feed_data(self, data: Dict[str, Any]) -> None:
        self._batch(data, ('gt', 'ref', 'warp_coords'))

    def train_forward(self, net: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        return (net or self.net_g)(self.gt, self.ref)


@MODEL_REGISTRY.register()
class StudentContrasDistillationModel(ContrastiveModel):
    """Stage 2: the student sees the upsampled LR, ``net(lq_up, ref)``, and learns the frozen teacher's matching
    distribution on ``(gt, ref)`` (``train.contrastive_opt.distill_weight`` > 0; the original: 15, temperature 0.15).
    The teacher is ``network_teacher``, loaded from ``path.pretrain_network_teacher`` (stage 1's ``net_g``)."""

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__(opt)
        path_opt = opt.get('path') or {}
        with option_errors(self.source, 'network_teacher'):
            if 'network_teacher' not in opt:
                raise ValueError('missing: stage 2 needs the stage-1 network (network_teacher: {type: '
                                 'ContrasExtractorSep})')
            self.check_architecture(opt['network_teacher'].get('type'))
            self.net_teacher = build_network(deepcopy(opt['network_teacher'])).to(self.device)
        with option_errors(self.source, 'path.pretrain_network_teacher'):
            if not path_opt.get('pretrain_network_teacher'):
                raise ValueError('missing: stage 2 distils the stage-1 teacher (experiments/<stage 1>/models/'
                                 'net_g_latest.pth)')
            self.load_network(self.net_teacher, path_opt['pretrain_network_teacher'],
                              path_opt.get('strict_load_teacher', True), path_opt.get('param_key_teacher', 'params'))
        self.net_teacher.eval()
        for p in self.net_teacher.parameters():
            p.requires_grad = False
        if self.is_train and self.cri_contrastive.distill_weight <= 0:
            with option_errors(self.source, 'train.contrastive_opt.distill_weight'):
                raise ValueError('must be > 0 in stage 2 (the original: 15)')

    def feed_data(self, data: Dict[str, Any]) -> None:
        self._batch(data, ('gt', 'lq_up', 'ref', 'warp_coords'))

    def train_forward(self, net: Optional[nn.Module] = None) -> Dict[str, torch.Tensor]:
        return (net or self.net_g)(self.lq_up, self.ref)

    def teacher_features(self) -> Optional[Dict[str, torch.Tensor]]:
        """The frozen teacher on the HR image and the reference (no gradients: its weights never change)."""
        with torch.no_grad():
            return self.net_teacher(self.gt, self.ref)
