"""Evaluation protocols: how PSNR/SSIM are measured (colour space, border crop) and how the results tables name them.
See docs/evaluation.md for which published number used which protocol."""

from extracter.evaluation.protocols import describe_metric, expand_protocols, merge_metrics, metric_name

__all__ = ['describe_metric', 'expand_protocols', 'merge_metrics', 'metric_name']
