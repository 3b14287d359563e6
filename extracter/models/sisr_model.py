"""SISRModel: single-image SR (DRCT) in the lifecycle it shares with :class:`~extracter.models.refsr_model.RefSRModel`
(:class:`~extracter.models.base_model.BaseSRModel`).

The same training loop, losses, EMA, BasicSR checkpoints (``{'params', 'params_ema'}``), exact resume, validation
metrics and test tables; only the network's inputs differ: ``net(lq)``. Batches may come from any of this package's
datasets (their ``ref``/``lq_up``/``ref_downup`` are ignored, so a RefSR training set trains a SISR model on the same
images) or from BasicSR's ``PairedImageDataset`` (``lq``, ``gt``), as the original DRCT repository trains and tests.

Test-time behaviour is the original's (DRCT ``models/drct_model.py``): reflect-pad the LR to the window multiple, run
untiled or tile by tile (``val.tile: {tile_size, tile_pad}``), crop back; here through the one inference engine
(:func:`extracter.inference.engine.run_sisr`, the tile loop RefSR uses). EMA weights are preferred when present.
"""

from typing import Any, Dict

import torch
from torch import nn

from extracter.inference.engine import run_sisr
from extracter.models.base_model import BaseSRModel
from extracter.registry import MODEL_REGISTRY


@MODEL_REGISTRY.register()
class SISRModel(BaseSRModel):
    """Single-image SR model for any arch with the ``net(lr)`` interface (``uses_reference = False``: DRCT)."""

    uses_reference = False  # and no separately trained texture extractor (BaseSRModel.feature_extractor: None)

    def feed_data(self, data: Dict[str, Any]) -> None:
        if 'lq' not in data:
            raise KeyError("the batch has no 'lq' (the LR image)")
        self.lq = data['lq'].to(self.device, non_blocking=True)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True)
        elif hasattr(self, 'gt'):
            del self.gt

    def train_forward(self) -> torch.Tensor:
        multiple = self.get_bare_model(self.net_g).size_multiples()[0]
        h, w = self.lq.shape[-2:]
        if h % multiple or w % multiple:
            raise ValueError(f'training LR patches of {h}x{w} are not multiples of the network\'s window {multiple}: '
                             f'make datasets.train.gt_size a multiple of {self.opt.get("scale", 4) * multiple}')
        return self.net_g(self.lq)

    def _forward_any_size(self, net: nn.Module) -> torch.Tensor:
        """Reflect-pad, untiled or tiled (``val.tile``), crop back (the original's ``pre_process``/``tile_process``/
        ``post_process``). ``val.max_memory``/``val.search`` concern the reference search and have no effect."""
        return run_sisr(net, self.lq, **self._val_inference_kwargs())
