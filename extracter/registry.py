"""BasicSR's registries, reached through this package so that the basicsr compatibility shim and our registrations
are in place first (``from extracter.registry import ARCH_REGISTRY`` works in any import order)."""

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

__all__ = ['ARCH_REGISTRY', 'DATASET_REGISTRY', 'LOSS_REGISTRY', 'METRIC_REGISTRY', 'MODEL_REGISTRY']
