"""Data layer: records, sources, text builders, transforms, samplers and the DataModule."""

from fundus_lit.core.errors import DataError
from fundus_lit.data.batch import Batch
from fundus_lit.data.corpus import (
    KnowledgeText,
    RecordText,
    TextCorpusDataModule,
    TextFile,
    TextSource,
)
from fundus_lit.data.datamodule import FundusDataModule
from fundus_lit.data.prepared import PreparedSource
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import (
    FlairCSVSource,
    ImageFolderSource,
    MaskCSVSource,
    Source,
    SyntheticSource,
)
from fundus_lit.data.sources.captions import CaptionCSVSource
from fundus_lit.data.sources.hf import HFDatasetSource
from fundus_lit.data.sources.reports import ReportCSVSource
from fundus_lit.data.text import (
    KnowledgePromptBuilder,
    ReportTextBuilder,
    TemplateTextBuilder,
    TextBuilder,
)
from fundus_lit.data.transforms import AugmentConfig

__all__ = [
    "AugmentConfig",
    "Batch",
    "CaptionCSVSource",
    "DataError",
    "FlairCSVSource",
    "FundusDataModule",
    "FundusRecord",
    "HFDatasetSource",
    "ImageFolderSource",
    "KnowledgePromptBuilder",
    "KnowledgeText",
    "MaskCSVSource",
    "PreparedSource",
    "RecordText",
    "ReportCSVSource",
    "ReportTextBuilder",
    "Source",
    "SyntheticSource",
    "TemplateTextBuilder",
    "TextBuilder",
    "TextCorpusDataModule",
    "TextFile",
    "TextSource",
]
