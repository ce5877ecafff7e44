"""Procedural colour fundus photographs with known categories, findings and lesion masks.

Real fundus datasets cannot ship with the project, yet every part of the pipeline (readers,
text builders, training loops, evaluation) needs images whose labels it can trust; this
generator supplies them at training speed and in the same on-disk layout real data uses.
"""

from .atlas import atlas_caption
from .generator import CATEGORIES, Finding, FundusSynth, SynthSample
from .reports import SynthReport, report_details, synthetic_report
from .writer import (
    write_atlas_dataset,
    write_csv_dataset,
    write_flair_dataset,
    write_mask_dataset,
    write_report_dataset,
)

__all__ = [
    "CATEGORIES",
    "Finding",
    "FundusSynth",
    "SynthReport",
    "SynthSample",
    "atlas_caption",
    "report_details",
    "synthetic_report",
    "write_atlas_dataset",
    "write_csv_dataset",
    "write_flair_dataset",
    "write_mask_dataset",
    "write_report_dataset",
]
