"""Lightning callbacks that belong to fundus-lit runs; recipes name them as
``fundus_lit.callbacks.<Class>``."""

from fundus_lit.callbacks.accuracy_curve import AccuracyCurve
from fundus_lit.callbacks.evaluation import RetrievalEvaluation, ZeroShotEvaluation
from fundus_lit.callbacks.projector import EmbeddingProjector
from fundus_lit.callbacks.run_report import RunReport

__all__ = [
    "AccuracyCurve",
    "EmbeddingProjector",
    "RetrievalEvaluation",
    "RunReport",
    "ZeroShotEvaluation",
]
