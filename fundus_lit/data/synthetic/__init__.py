"""Procedural colour fundus photographs with known categories, findings and lesion masks.

Real fundus datasets cannot ship with the project, yet every part of the pipeline (readers,
text builders, training loops, evaluation) needs images whose labels it can trust; this
generator supplies them at training speed and in the same on-disk layout real data uses.
"""

from .generator import CATEGORIES, Finding, FundusSynth, SynthSample, write_flair_dataset

__all__ = ["CATEGORIES", "Finding", "FundusSynth", "SynthSample", "write_flair_dataset"]
