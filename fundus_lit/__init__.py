"""fundus-lit: retinal fundus vision-language pretraining where a method is a configuration."""

from fundus_lit.core.version import __version__
from fundus_lit.data.datamodule import FundusDataModule
from fundus_lit.module import PretrainModule
from fundus_lit.pretrained import PretrainedDualEncoder, load_pretrained
from fundus_lit.text_pretrain import TextPretrainModule

__all__ = [
    "FundusDataModule",
    "PretrainModule",
    "PretrainedDualEncoder",
    "TextPretrainModule",
    "__version__",
    "load_pretrained",
]
