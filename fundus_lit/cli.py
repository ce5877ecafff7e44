"""The ``fundus-lit`` command: LightningCLI verbs plus project subcommands.

Trainer verbs (fit, validate, test, predict) go to :class:`FundusLitCLI`; project verbs (``synth``,
and later evaluation/indexing tools) are plain functions registered in :data:`EXTRA_COMMANDS`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, dict_to_namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fundus_lit.commands.recipes import recipes_command
from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.core.compose import resolve_cli_args
from fundus_lit.core.config_errors import exit_on_parse_error
from fundus_lit.core.precision import cpu_precision, runs_on_cpu
from fundus_lit.core.quiet import quiet_library_warnings
from fundus_lit.data.errors import ConfigError, DataError
from fundus_lit.models.resolve import ModelNotFoundError
from fundus_lit.resume import (
    AtomicCheckpointIO,
    BestAndLastCheckpoint,
    ExactResume,
    PreemptionCheckpoint,
    StepCheckpoint,
    exit_if_preempted,
    find_last,
)


class ConciseParser(LightningArgumentParser):
    """Parse errors end with one line of usage: the full option list (hundreds of lines, printed
    before the message) hid the key at fault; ``--help`` still shows it."""

    def print_usage(self, file=None) -> None:
        prog = self.prog.replace(" [options]", "")
        print(f"usage: {prog} --config RECIPE.yaml [--config ...] [--KEY VALUE ...]", file=file)

    def error(self, message: str, ex: Exception | None = None):
        exit_on_parse_error(self, message, ex)  # one or two lines: file, full key, expected
        super().error(message, ex)


class FundusLitCLI(LightningCLI):
    """LightningCLI with the links that keep values stated once.

    ``data.image_size`` and ``data.batch_size`` feed the model; the text tower's name and length
    feed the tokenizer of the data module. A link whose key the chosen model or data class lacks
    (the text pretraining module has no image size) is skipped. Every ``fit`` also gets a
    checkpoint callback (keys under ``checkpoint.``) keeping the last and the best checkpoint by
    validation loss, a mid-epoch ``last.ckpt`` every ``step_checkpoint.every_n_train_steps``
    steps, a checkpoint on SIGTERM/SIGUSR1 (:class:`~fundus_lit.resume.PreemptionCheckpoint`)
    and the random state in every checkpoint, so ``--ckpt_path last`` resumes exactly.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("data.init_args.batch_size", "model.init_args.batch_size")
        parser.link_arguments("model.init_args.text.name", "data.init_args.tokenizer")
        parser.link_arguments("model.init_args.text.max_length", "data.init_args.max_length")
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.enable_version_counter": False,  # last.ckpt shared, see resume.py
            }
        )
        parser.add_lightning_class_args(StepCheckpoint, "step_checkpoint")

    def _prepare_subcommand_parser(
        self, klass: type, subcommand: str, **kwargs
    ) -> LightningArgumentParser:
        """``predict`` gets the writer of its embeddings (options under ``predictions.``, e.g.
        ``--predictions.path``): without it the verb computes them and shows nothing. Only that
        verb: a fit config must not carry an option that does nothing there."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            from fundus_lit.predict_writer import EmbeddingWriter

            parser.add_lightning_class_args(EmbeddingWriter, "predictions")
        return parser

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path``: the checkpoint's hyper-parameters become the init_args of the config's
        model class. Lightning passes them bare, and with the generic LightningModule base
        jsonargparse then reads a dict argument's dotted keys (``lr_multipliers: {encoder.text:
        0.1}``) as nested options and refuses them."""
        command = self.config.get("subcommand")
        if command and self.config[command].get("weights_only", False) is None:
            # tensors and plain values only: a checkpoint cannot run code when it is read
            self.config[command].weights_only = True
        if command and self.config[command].get("ckpt_path") == "last":
            self._resolve_last(self.config[command])
        ckpt_path = self.config[command].get("ckpt_path") if command else None
        if not ckpt_path or _lightning_ckpt_reference(str(ckpt_path)):
            return
        # a missing, truncated or tampered file: one line naming it, never a traceback
        hparams = read_checkpoint(ckpt_path).get("hyper_parameters", {})
        hparams = {k: v for k, v in hparams.items() if k not in ("_instantiator", "_class_path")}
        model = self.config[command].get("model")
        if not hparams or model is None or not model.get("class_path"):
            return super()._parse_ckpt_path()
        update = {"class_path": model["class_path"], "init_args": hparams}
        self.config = self.parser.parse_object({command: {"model": update}}, self.config)

    @staticmethod
    def _resolve_last(config) -> None:
        """``--ckpt_path last``: the newest last checkpoint of this recipe's earlier runs, and
        the run folder (logger version) it belongs to, so logs and checkpoints continue there.

        Lightning looks for ``last.ckpt`` only in the folder of the run it is starting, which
        for a versioned logger is a new, empty one. No checkpoint yet starts from scratch (the
        first submission of a requeued cluster job runs the same command)."""
        trainer = config.trainer
        root = Path(trainer.get("default_root_dir") or os.getcwd())
        logger = trainer.get("logger")
        if isinstance(logger, list):
            logger = logger[0] if logger else False
        run_dirs: list[Path] = []
        if logger is None or logger is True:  # Lightning's default TensorBoard logger
            trainer.logger = logger = dict_to_namespace(
                {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(root)},
                }
            )
        if logger:
            args = logger.get("init_args") or {}
            save_dir = Path(args.get("save_dir") or root)
            name = args.get("name", "lightning_logs")
            run_dirs.append(save_dir / name if name else save_dir)
        else:
            run_dirs.append(root)
        for group in ("checkpoint", "step_checkpoint"):
            dirpath = config.get(group, {}).get("dirpath")
            if dirpath:
                run_dirs.append(Path(dirpath).parent)
        found = find_last(run_dirs, extra=[root])
        if found is None:
            print(
                f"fundus-lit: no last checkpoint under {', '.join(map(str, run_dirs))}; "
                "starting from scratch",
                file=sys.stderr,
            )
            config.ckpt_path = None
            return
        print(f"fundus-lit: resuming from {found}", file=sys.stderr)
        config.ckpt_path = str(found)
        version = found.parent.parent.name
        if logger and found.parent.name == "checkpoints" and version.startswith("version_"):
            logger.init_args.version = version

    def before_instantiate_classes(self) -> None:
        """bf16 asked for on a CPU that only emulates it becomes fp32 (see
        :mod:`fundus_lit.core.precision`); the saved ``config.yaml`` records what ran."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        if trainer is None or not runs_on_cpu(trainer.get("accelerator")):
            return
        trainer.precision, message = cpu_precision(trainer.get("precision"))
        if message and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"fundus-lit: {message}", file=sys.stderr)

    def instantiate_classes(self) -> None:
        """A value a class refuses (``ValueError``/``TypeError`` from its constructor) becomes a
        :class:`ConfigError` naming the key; jsonargparse reports it as a traceback otherwise."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if _user_error(err) is not None:
                raise
            config = self.config.get(self.subcommand)
            raise ConfigError(_describe_config_error(err, config)) from err

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # `trainer.enable_checkpointing: false` must switch the built-in checkpoint off too,
        # instead of clashing with it. Under fast_dev_run Lightning skips checkpoints, except
        # the save_last one at train end (Lightning 2.6), which would land in the working
        # directory of a smoke run.
        if config.get("enable_checkpointing") is False or config.get("fast_dev_run"):
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        elif self.subcommand == "fit":
            given = [type(cb) for cb in [*callbacks, *(config.get("callbacks") or [])]]
            callbacks += [cls() for cls in (ExactResume, PreemptionCheckpoint) if cls not in given]
            plugins = config.get("plugins") or []
            plugins = plugins if isinstance(plugins, list) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, callbacks)


def cli_main(args: list[str] | None = None, run: bool = True) -> FundusLitCLI:
    """Run (or, with ``run=False``, only build) the trainer CLI; tests call this in-process."""
    # Any LightningModule / DataModule: recipes name theirs (PretrainModule + FundusDataModule, or
    # the text pretraining pair of keepfit_v2_text); links skip keys a class does not have.
    args = resolve_cli_args(args)  # `base:` chains, named objectives, overlay needs -> one config
    return FundusLitCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_class=ConciseParser,
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
    from fundus_lit.eval.config import add_evaluation_config

    parser = ArgumentParser(prog=prog, description=evaluate_parser.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="evaluation YAML")
    parser.add_argument("--ckpt", type=str, required=True, help="PretrainModule checkpoint")
    parser.add_argument(
        "--split", type=Literal["val", "test"], default="test", help="split evaluated"
    )
    parser.add_argument("--out", type=str | None, default=None, help="output directory")
    add_evaluation_config(parser)
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


def export_command(args: list[str]) -> None:
    from fundus_lit.export import export_command as run

    run(args)


def index_parser() -> ArgumentParser:
    """Build a case-search index: embed every image of a data split with a checkpoint and save a
    FAISS index with each record's path and categories under --out. The config is an evaluation
    config (or any YAML with data:); its other sections are checked but not used."""
    from fundus_lit.eval.config import add_evaluation_config

    parser = ArgumentParser(prog="fundus-lit index", description=index_parser.__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="evaluation YAML with data:")
    parser.add_argument("--ckpt", type=str, required=True, help="PretrainModule checkpoint")
    parser.add_argument("--out", type=str, required=True, help="index directory")
    parser.add_argument("--split", type=Literal["train", "val", "test"], default="test")
    add_evaluation_config(parser)
    return parser


def index_command(args: list[str]) -> None:
    from fundus_lit.eval.casesearch import build_index
    from fundus_lit.eval.config import check_evaluation_config

    parser = index_parser()
    cfg = parser.parse_args(args)
    check_evaluation_config(cfg)
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
    "export": export_command,
    "recipes": recipes_command,
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
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
            # Lightning ends a SIGTERMed run with SIGTERMException, a SystemExit of status 0
            quiet_library_warnings(argv[0])
            with contextlib.suppress(SIGTERMException):
                # LightningCLI reads sys.argv itself, and warns when handed both
                cli_main(None if from_command_line else argv)
            exit_if_preempted()
    except Exception as err:
        cause = _user_error(err)
        if cause is None:
            raise
        print(f"fundus-lit: error: {cause}", file=sys.stderr)
        sys.exit(2)


def _lightning_ckpt_reference(ckpt_path: str) -> bool:
    """Values of ``--ckpt_path`` that Lightning resolves itself: a checkpoint of the run
    (``best``, ``last``, ``hpc``), a model registry entry or a remote URL."""
    return (
        ckpt_path in ("best", "last", "hpc")
        or ckpt_path.startswith("registry")
        or ("://" in ckpt_path)
    )


def _describe_config_error(err: BaseException, config) -> str:
    """``KEY: reason`` for an error raised while instantiating ``config``'s classes.

    The innermost exception is the class's own message; jsonargparse's outer one holds the
    failing class path, which locates the group (``model``, ``data``, ``model.init_args.
    objectives[0]``...); a message that starts with one of its parameters names the key."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    root = chain[-1]
    reason = str(root).strip().splitlines()[0] if str(root).strip() else type(root).__name__
    found = next((m for e in chain if (m := re.search(r"class_path='([\w.]+)'", str(e)))), None)
    key = _find_class(config, found.group(1)) if found and config is not None else None
    if key is None:
        return f"invalid configuration: {reason}"
    args = _get(config, key).get("init_args") or {}
    first = re.match(r"[\w.]+", reason)
    if first and first.group(0) in args:
        return f"{key}.init_args.{first.group(0)}: {reason}"
    return f"{key} ({found.group(1)}): {reason}"


def _find_class(node, class_path: str, prefix: str = "") -> str | None:
    """The dotted key of the first value configured with ``class_path`` under ``node``."""
    if isinstance(node, list):
        children = [(f"{prefix}[{i}]", item) for i, item in enumerate(node)]
    elif isinstance(node, (dict, Namespace)):
        fields = node if isinstance(node, dict) else vars(node)  # one level, not flattened
        if fields.get("class_path") == class_path:
            return prefix
        children = [(f"{prefix}.{k}" if prefix else k, v) for k, v in fields.items()]
    else:
        return None
    for key, child in children:
        found = _find_class(child, class_path, key)
        if found is not None:
            return found
    return None


def _get(node, key: str):
    for part in re.findall(r"[^.\[\]]+", key):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def _user_error(err: BaseException | None) -> BaseException | None:
    """The bad-input error behind ``err``; jsonargparse wraps errors raised while instantiating."""
    while err is not None:
        if isinstance(err, (DataError, ConfigError, ModelNotFoundError)):
            return err
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
