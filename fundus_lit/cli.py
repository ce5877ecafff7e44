"""The ``fundus-lit`` command: LightningCLI verbs plus project subcommands.

Trainer verbs (fit, validate, test, predict) go to :class:`FundusLitCLI`; project verbs (``synth``,
and later evaluation/indexing tools) are plain functions registered in :data:`EXTRA_COMMANDS`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from fundus_lit.data.datamodule import FundusDataModule
from fundus_lit.data.errors import DataError
from fundus_lit.models.resolve import ModelNotFoundError


class FundusLitCLI(LightningCLI):
    """LightningCLI with the links that keep values stated once.

    ``data.image_size`` and ``data.batch_size`` feed the model; the text tower's name and length
    feed the tokenizer of the data module. A link whose key the chosen model or data class lacks
    (the text pretraining module has no image size) is skipped. Every ``fit`` also gets a
    checkpoint callback (keys under ``checkpoint.``) keeping the last and the best checkpoint by
    validation loss.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("data.init_args.batch_size", "model.init_args.batch_size")
        parser.link_arguments("model.init_args.text.name", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.text.max_length", "data.init_args.max_length")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
            }
        )

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path``: the checkpoint's hyper-parameters become the init_args of the config's
        model class. Lightning passes them bare, and with the generic LightningModule base
        jsonargparse then reads a dict argument's dotted keys (``lr_multipliers: {encoder.text:
        0.1}``) as nested options and refuses them."""
        command = self.config.get("subcommand")
        ckpt_path = self.config[command].get("ckpt_path") if command else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get(
            "hyper_parameters", {}
        )
        hparams = {k: v for k, v in hparams.items() if k not in ("_instantiator", "_class_path")}
        model = self.config[command].get("model")
        if not hparams or model is None or not model.get("class_path"):
            return super()._parse_ckpt_path()
        update = {"class_path": model["class_path"], "init_args": hparams}
        self.config = self.parser.parse_object({command: {"model": update}}, self.config)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # `trainer.enable_checkpointing: false` must switch the built-in checkpoint off too,
        # instead of clashing with it. Under fast_dev_run Lightning skips checkpoints, except
        # the save_last one at train end (Lightning 2.6), which would land in the working
        # directory of a smoke run.
        if config.get("enable_checkpointing") is False or config.get("fast_dev_run"):
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)


def cli_main(args: list[str] | None = None, run: bool = True) -> FundusLitCLI:
    """Run (or, with ``run=False``, only build) the trainer CLI; tests call this in-process."""
    # Any LightningModule / DataModule: recipes name theirs (PretrainModule + FundusDataModule, or
    # the text pretraining pair of keepfit_v2_text); links skip keys a class does not have.
    return FundusLitCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def synth(
    out: str,
    n: int = 1000,
    size: int = 512,
    seed: int = 0,
    sites: int = 2,
    image_format: str = "png",
    reports: bool = False,
    masks: bool = False,
    atlas: bool = False,
) -> None:
    """Write a synthetic fundus dataset in the FLAIR CSV layout (one CSV per site) under ``out``,
    or with ``--reports`` one report CSV (``image,report,labels``) over the same images.

    Args:
        out: Output folder (the data root).
        n: Number of images.
        size: Image side in pixels.
        seed: Generator seed; the same seed writes the same dataset.
        sites: Number of camera styles, each written as its own dataset.
        image_format: ``png`` or ``jpg``.
        reports: Write ``reports.csv`` with a free-text report per image instead of the per-site
            FLAIR CSVs.
        masks: Write each image's lesion mask and ``masks.csv`` (``image,mask,categories``)
            instead, for dense transfer evaluation.
        atlas: Write ``atlas.csv`` (``image,caption``: a long atlas-style caption per image)
            instead, the expert image-caption set of two-stream recipes (KeepFIT).
    """
    from fundus_lit.data.synthetic import write_flair_dataset, write_report_dataset

    if atlas:
        from fundus_lit.data.synthetic import write_atlas_dataset

        print(write_atlas_dataset(out, n=n, size=size, seed=seed, sites=sites))
        return
    if masks:
        from fundus_lit.data.synthetic.masks import write_mask_dataset

        print(write_mask_dataset(out, n=n, size=size, seed=seed, sites=sites))
        return
    if reports:
        print(
            write_report_dataset(
                out, n=n, size=size, seed=seed, sites=sites, image_format=image_format
            )
        )
        return
    csvs = write_flair_dataset(
        out, n=n, size=size, seed=seed, sites=sites, image_format=image_format
    )
    for path in csvs:
        print(path)


def synth_command(args: list[str]) -> None:
    parser = ArgumentParser(prog="fundus-lit synth", description=synth.__doc__)
    parser.add_function_arguments(synth, as_group=False)
    synth(**parser.parse_args(args).as_dict())


def evaluate_parser(prog: str = "fundus-lit evaluate") -> ArgumentParser:
    """Evaluate a trained checkpoint: zero-shot, linear probe, few-shot adapters and retrieval on
    the data of an evaluation config. Writes eval.json (a section per task), a markdown report,
    TensorBoard scalars and confusion matrices into --out (the checkpoint's run directory by
    default)."""
    from fundus_lit.eval.evaluate import PromptConfig, RetrievalConfig
    from fundus_lit.eval.fewshot import FewShotConfig
    from fundus_lit.eval.probe import ProbeConfig
    from fundus_lit.eval.segmentation import SegmentationConfig

    parser = ArgumentParser(prog=prog, description=evaluate_parser.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="evaluation YAML")
    parser.add_argument("--ckpt", type=str, required=True, help="PretrainModule checkpoint")
    parser.add_argument(
        "--tasks",
        type=str | list[str] | None,
        default=None,
        help="comma-separated: zeroshot,probe,fewshot,retrieval (default) and segmentation",
    )
    parser.add_argument(
        "--split", type=Literal["val", "test"], default="test", help="split evaluated"
    )
    parser.add_argument("--out", type=str | None, default=None, help="output directory")
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
    return parser


def labels_command(args: list[str]) -> None:
    from fundus_lit.labels_cli import labels_command as run

    run(args)


def evaluate_command(args: list[str], tasks: str | None = None) -> None:
    from fundus_lit.eval.evaluate import run_evaluate

    parser = evaluate_parser("fundus-lit zeroshot" if tasks else "fundus-lit evaluate")
    if tasks:
        parser.set_defaults(tasks=tasks)
    run_evaluate(parser, parser.parse_args(args))


def prepare_command(args: list[str]) -> None:
    from fundus_lit.prepare_cli import prepare_command as run

    run(args)


def caption_command(args: list[str]) -> None:
    from fundus_lit.captioning import caption_command as run

    run(args)


def index_parser() -> ArgumentParser:
    """Build a case-search index: embed every image of a data split with a checkpoint and save a
    FAISS index with each record's path and categories under --out."""
    parser = ArgumentParser(prog="fundus-lit index", description=index_parser.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with data:")
    parser.add_argument("--ckpt", type=str, required=True, help="PretrainModule checkpoint")
    parser.add_argument("--out", type=str, required=True, help="index directory")
    parser.add_argument("--split", type=Literal["train", "val", "test"], default="test")
    parser.add_subclass_arguments(FundusDataModule, "data", required=True)
    return parser


def index_command(args: list[str]) -> None:
    from fundus_lit.eval.casesearch import build_index

    parser = index_parser()
    cfg = parser.parse_args(args)
    case_index = build_index(parser, cfg)
    print(f"indexed {len(case_index)} images of the {cfg.split} split into {cfg.out}")


def search_parser() -> ArgumentParser:
    """Find the indexed cases most similar to a fundus photograph."""
    parser = ArgumentParser(prog="fundus-lit search", description=search_parser.__doc__)
    parser.add_argument("--index", type=str, required=True, help="directory from fundus-lit index")
    parser.add_argument("--image", type=str, required=True, help="query image")
    parser.add_argument("--k", type=int, default=10, help="number of cases")
    parser.add_argument("--grid", type=str | None, default=None, help="write a PNG grid here")
    parser.add_argument(
        "--ckpt", type=str | None, default=None, help="checkpoint (default: the index's own)"
    )
    return parser


def search_command(args: list[str]) -> None:
    from fundus_lit.eval.casesearch import format_hits, load_index, search, write_grid

    cfg = search_parser().parse_args(args)
    if cfg.k < 1:
        raise DataError(f"--k must be at least 1, got {cfg.k}")
    hits = search(load_index(cfg.index), cfg.image, cfg.k, cfg.ckpt)
    print(format_hits(hits))
    if cfg.grid:
        print(f"wrote {write_grid(cfg.image, hits, cfg.grid)}")


EXTRA_COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "synth": synth_command,
    "evaluate": evaluate_command,
    "zeroshot": lambda args: evaluate_command(args, tasks="zeroshot"),
    "index": index_command,
    "labels": labels_command,
    "search": search_command,
    "caption": caption_command,
    "prepare": prepare_command,
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: fundus-lit {" + ",".join((*TRAINER_COMMANDS, *EXTRA_COMMANDS)) + "} ...")
        print("  trainer verbs: fundus-lit fit --config recipes/clip.yaml [--config ...]")
        print("  project verbs: " + ", ".join(EXTRA_COMMANDS) + " (fundus-lit VERB --help)")
        sys.exit(0 if argv else 2)
    try:
        if argv[0] in EXTRA_COMMANDS:
            EXTRA_COMMANDS[argv[0]](argv[1:])
        else:
            cli_main(argv)
    except Exception as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"fundus-lit: error: {cause}", file=sys.stderr)
        sys.exit(2)


def _user_error(err: BaseException | None) -> BaseException | None:
    """The bad-input error behind ``err``; jsonargparse wraps errors raised while instantiating."""
    while err is not None:
        if isinstance(err, (DataError, ModelNotFoundError)):
            return err
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
