"""Evaluation: zero-shot classification and metrics (retrieval and probes come with issue 4)."""

from fundus_lit.eval.metrics import classification_metrics
from fundus_lit.eval.zeroshot import ZeroShot, format_table

__all__ = ["ZeroShot", "classification_metrics", "format_table"]
