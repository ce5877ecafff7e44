"""The sections of an evaluation config (``recipes/eval/*.yaml``), defined once.

Every verb that reads an evaluation config (``evaluate``, ``zeroshot``, ``index``) adds them all,
so one file serves each verb: a verb ignores the sections it has no use for, but they are still
parsed and checked, so a misspelled key or a bad value is reported by every verb instead of
surfacing only when ``evaluate`` finally reads it. A key no section knows is an error naming it.
Run options whose meaning differs between verbs (``--ckpt``, ``--split``, ``--out``) stay with
each verb's parser.
"""

from __future__ import annotations

from jsonargparse import ArgumentParser, Namespace

from fundus_lit.data.datamodule import FundusDataModule
from fundus_lit.eval.evaluate import PromptConfig, RetrievalConfig, parse_tasks
from fundus_lit.eval.fewshot import FewShotConfig
from fundus_lit.eval.probe import ProbeConfig
from fundus_lit.eval.segmentation import SegmentationConfig


def add_evaluation_config(parser: ArgumentParser) -> None:
    """Add ``data``, ``tasks``, ``classes``, ``tag`` and the per-task sections to ``parser``:
    everything an evaluation config may hold besides the verbs' own run options."""
    parser.add_argument(
        "--tasks",
        type=str | list[str] | None,
        default=None,
        help="comma-separated: zeroshot,probe,fewshot,retrieval (default) and segmentation",
    )
    parser.add_argument(
        "--tag", type=str | None, default=None, help="suffix of the JSON sections and files"
    )
    parser.add_argument(
        "--classes",
        type=list[str] | None,
        default=None,
        help="class names; a sample's class is the first category of its record",
    )
    parser.add_subclass_arguments(FundusDataModule, "data", required=True)
    parser.add_class_arguments(PromptConfig, "zeroshot")
    parser.add_class_arguments(ProbeConfig, "probe")
    parser.add_class_arguments(FewShotConfig, "fewshot")
    parser.add_class_arguments(RetrievalConfig, "retrieval")
    parser.add_class_arguments(SegmentationConfig, "segmentation")


def check_evaluation_config(cfg: Namespace) -> None:
    """Checks of the sections that parsing cannot do, for verbs that otherwise skip them: a
    misspelled task name in a shared file must fail under ``index`` as it would under
    ``evaluate``."""
    parse_tasks(cfg.tasks)
