"""The sections of an evaluation config (``recipes/eval/*.yaml``), defined once.

Every verb that reads an evaluation config (``evaluate``, ``zeroshot``, ``index``) adds them all,
so one file serves each verb: a verb ignores the sections it has no use for, but they are still
parsed and checked, so a misspelled key or a bad value is reported by every verb instead of
surfacing only when ``evaluate`` finally reads it. A key no section knows is an error naming it.
Run options whose meaning differs between verbs (``--ckpt``, ``--split``, ``--out``) stay with
each verb's parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from jsonargparse import ArgumentParser, Namespace

from fundus_lit.core.errors import ConfigError, DataError
from fundus_lit.data.datamodule import FundusDataModule
from fundus_lit.eval.fewshot import FewShotConfig
from fundus_lit.eval.probe import ProbeConfig
from fundus_lit.eval.segmentation import SegmentationConfig

TASKS = ("zeroshot", "probe", "fewshot", "retrieval", "segmentation")
DEFAULT_TASKS = ("zeroshot", "probe", "fewshot", "retrieval")


@dataclass
class PromptConfig:
    """How class prompts are written for zero-shot and the adapters' prototypes.

    Args:
        knowledge: Extra knowledge YAML files over the built-in dictionary.
        renormalize: L2-normalise each class prototype.
        template: Prompt with a ``[CLS]`` placeholder.
    """

    knowledge: list[str] = field(default_factory=list)
    renormalize: bool = True
    template: str = "A fundus photograph of [CLS]"


@dataclass
class RetrievalConfig:
    """Retrieval tasks of the evaluation.

    Args:
        ks: Cut-offs of R@k and mAP@k.
        tasks: ``i2t`` and ``t2i`` (pair relevance: an image's own text; identical texts count as
            one text), ``i2i`` (case retrieval: evaluation images against the training split, or
            leave-one-out within the evaluation split when there is no training split).
        case_relevance: ``categories``: a case is relevant when it shares any category with the
            query; ``class``: only when the first categories match.
        device: Where FAISS searches: ``auto`` uses a GPU index when FAISS and CUDA allow.
        image_queries: Queries drawn in ``retrieval_examples.png`` (evenly spaced over the
            split, the same every run), each with its top images (i2i) and texts (i2t), framed
            green when relevant as the metrics count it and red when not; 0 draws none.
        image_k: Hits drawn per query and task.
    """

    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    tasks: list[Literal["i2t", "t2i", "i2i"]] = field(default_factory=lambda: ["i2t", "t2i", "i2i"])
    case_relevance: Literal["categories", "class"] = "categories"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    image_queries: int = 4
    image_k: int = 5


def parse_tasks(tasks: str | list[str] | None) -> list[str]:
    if tasks is None:
        return list(DEFAULT_TASKS)
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    names = [t.strip() for t in names if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise DataError(f"unknown evaluation task(s) {unknown or names}; choose from {TASKS}")
    return names


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


def require_data(args: list[str], command: str) -> None:
    """Stop with one line when neither an evaluation config nor ``--data`` is given: the
    parser's own answer, a page of usage ending in "required: data", does not say that the test
    images come from an evaluation config, nor where the shipped ones are."""
    given = ("--config", "-c", "--data", "-h", "--help", "--print_config")
    if any(a in given or a.startswith(("--config=", "--data.", "--data=")) for a in args):
        return
    from fundus_lit.core.compose import recipes_dir

    shipped = sorted(p.name for p in (recipes_dir() / "eval").glob("*.yaml"))
    listed = f" (recipes/eval/: {', '.join(shipped)})" if shipped else ""
    raise ConfigError(
        f"{command}: no test data: add an evaluation config, e.g. "
        f"--config recipes/eval/synthetic.yaml{listed}; its data: section names the images "
        "and its classes: the zero-shot prompts"
    )
