"""Registers C2-Matching's contrastive correspondence network (:class:`ContrasExtractorSep`, two VGG-16 branches to
conv3_1) as an architecture, so that the contrastive training stages build it from ``network_g``/``network_teacher``
(``type: ContrasExtractorSep``). It has no descriptor: it is a feature extractor, not a super-resolution network (the
SR models refuse it, the contrastive models refuse SR networks).
"""

from extracter.archs.c2_matching.contras_extractor import ContrasExtractorSep
from extracter.registry import ARCH_REGISTRY

ARCH_REGISTRY.register(ContrasExtractorSep)
