"""Readers: one per on-disk format, each turning its rows into :class:`FundusRecord`.

Sources are cheap to construct (the CLI builds them just to print a config); reading and
validation happen in :meth:`Source.load`, called by the DataModule before training starts.
Each lives with its kind: the seam and shared readers in base.py, CSV layouts in csv_layouts.py
(FLAIR, masks), captions.py and reports.py, class folders in folder.py, the synthetic generator
in synthetic.py, Hugging Face datasets in hf.py (table cells they share with the prepared cache
in table_cells.py); prepared caches are read by ``data/prepared/``.
"""

from fundus_lit.data.sources.base import DRAFT_MARGIN, Source, draft, parse_list_cell, read_rgb
from fundus_lit.data.sources.csv_layouts import CSVSource, FlairCSVSource, MaskCSVSource
from fundus_lit.data.sources.folder import IMAGE_SUFFIXES, ImageFolderSource
from fundus_lit.data.sources.synthetic import SyntheticSource

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
