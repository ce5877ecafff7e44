"""The trainer verbs ``fit``, ``validate``, ``test`` and ``predict``: :class:`FundusLitCLI`, the
LightningCLI that owns their parsing (links, checkpoint callbacks, ``--ckpt_path``, precision) and
maps a value a class refuses to a :class:`~fundus_lit.core.errors.ConfigError` naming its key.
"""

from __future__ import annotations

import os
import re
import sys

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from fundus_lit.callbacks.progress_bar import logging_step_bar
from fundus_lit.callbacks.projector import EmbeddingProjector
from fundus_lit.commands.errors import user_error
from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.core.compose import resolve_cli_args
from fundus_lit.core.config_errors import exit_on_parse_error
from fundus_lit.core.errors import ConfigError
from fundus_lit.core.precision import cpu_precision, runs_on_cpu
from fundus_lit.core.quiet import quiet_library_warnings
from fundus_lit.resume import (
    AtomicCheckpointIO,
    BestAndLastCheckpoint,
    ExactResume,
    PreemptionCheckpoint,
    StepCheckpoint,
    resolve_last,
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
    and the random state in every checkpoint, so ``--ckpt_path last`` resumes exactly. A
    ``fit`` with validation ends by writing the validation images' embeddings for TensorBoard's
    projector (:class:`~fundus_lit.callbacks.EmbeddingProjector`, keys under ``projector.``).
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
        # every verb parses the group, so a fit's saved config.yaml serves validate too; the
        # callback writes at the end of fit only
        parser.add_lightning_class_args(EmbeddingProjector, "projector")

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
            resolve_last(self.config[command])
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
            if user_error(err) is not None:
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
        every = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(cb, ProgressBar) for cb in every
        ):  # Lightning's default bar reads the logged values on the host every step
            callbacks = [*callbacks, logging_step_bar()]
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


def run(args: list[str] | None = None) -> None:
    """``fundus-lit fit|validate|test|predict ...``: ``args`` starts with the verb; ``None`` reads
    ``sys.argv`` (LightningCLI reads it itself, and warns when handed it as well)."""
    verb = (sys.argv[1:] if args is None else args)[:1]
    quiet_library_warnings(verb[0] if verb else "fit")
    cli_main(args)


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
