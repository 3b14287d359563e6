"""RefSRModel: the reference-based x4 SR model (EXTRACTER, TTSR) in BasicSR's lifecycle (training, EMA,
validation, checkpoints, resume: :class:`~extracter.models.base_model.BaseSRModel`).

Its batches carry the references (``lq``, ``ref``, ``lq_up``, ``ref_downup``, ``gt``); the network is called
``net(lr, ref, lr_up, ref_downup)`` in training and through the inference engine
(:func:`extracter.inference.engine.run_refsr`) at test time. The network's feature extractor (EXTRACTER's DFE, TTSR's
LTE) trains with its own learning rate (``train.lr_fe``).
"""

from typing import Any, Dict, Optional

import torch
from torch import nn

from extracter.inference.engine import run_refsr
from extracter.models.base_model import BaseSRModel
from extracter.registry import MODEL_REGISTRY


@MODEL_REGISTRY.register()
class RefSRModel(BaseSRModel):
    """Reference-based x4 SR model for any arch with the ``net(lr, ref, lr_up, ref_downup)`` interface."""

    uses_reference = True  # must agree with the architecture's own fact (``uses_reference``)

    def feature_extractor(self) -> Optional[nn.Module]:
        """The parameter group with its own learning rate (``train.lr_fe``); None when the network has none."""
        return self.get_bare_model(self.net_g).feature_extractor()

    def feed_data(self, data: Dict[str, Any]) -> None:
        for key in ('lq', 'ref'):
            if key not in data:
                raise KeyError(f'the batch has no {key!r}; RefSR samples need lq, ref (and lq_up, ref_downup, gt)')
        self.lq = self._to_device(data['lq'])
        self.ref = self._to_device(data['ref'])  # a list of references (CUFED5 ref_level: all) stays a list
        self.lq_up = self._to_device(data['lq_up']) if 'lq_up' in data else None
        self.ref_downup = self._to_device(data['ref_downup']) if 'ref_downup' in data else None
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True)
        elif hasattr(self, 'gt'):
            del self.gt

    def _to_device(self, x):
        if isinstance(x, (list, tuple)):
            return [t.to(self.device, non_blocking=True) for t in x]
        return x.to(self.device, non_blocking=True)

    def train_forward(self) -> torch.Tensor:
        """The training network's SR of the current batch (with gradients)."""
        return self.net_g(self.lq, self.ref, self.lq_up, self.ref_downup)

    def _forward_any_size(self, net: nn.Module) -> torch.Tensor:
        """SR through the inference engine (:func:`extracter.inference.run_refsr`) with ``val``'s tile /
        max_memory / search options. The test datasets already cropped the images to the network's multiples (the
        original test protocol: their ``stride`` comes from the network); anything else is padded and cropped back."""
        return run_refsr(net, self.lq, self.ref, lr_up=self.lq_up, ref_downup=self.ref_downup,
                         **self._val_inference_kwargs())
