"""Readers: one per on-disk format, each turning its rows into :class:`FundusRecord`.

Sources are cheap to construct (the CLI builds them just to print a config); reading and
validation happen in :meth:`Source.load`, called by the DataModule before training starts.
This module gathers them; each lives with its kind: the seam and shared readers in
source_base.py, CSV layouts in csv_sources.py (captions.py, reports.py), class folders in
folder_source.py, the synthetic generator in synthetic_source.py, Hugging Face datasets in
hf_source.py, prepared caches in prepared/.
"""

from fundus_lit.data.csv_sources import CSVSource, FlairCSVSource, MaskCSVSource
from fundus_lit.data.folder_source import IMAGE_SUFFIXES, ImageFolderSource
from fundus_lit.data.source_base import DRAFT_MARGIN, Source, draft, parse_list_cell, read_rgb
from fundus_lit.data.synthetic_source import SyntheticSource

__all__ = [
    "CSVSource",
    "DRAFT_MARGIN",
    "FlairCSVSource",
    "IMAGE_SUFFIXES",
    "ImageFolderSource",
    "MaskCSVSource",
    "Source",
    "SyntheticSource",
    "draft",
    "parse_list_cell",
    "read_rgb",
]
