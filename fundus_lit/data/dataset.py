"""Map-style dataset over records from several sources, and the collate function that tokenises."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fundus_lit.data.batch import Batch
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import Source
from fundus_lit.data.text import TextBuilder
from fundus_lit.data.transforms import ImagePipeline


@dataclass
class Sample:
    image: Tensor
    text: str
    category: str
    dataset: str
    index: int
    labels: tuple[float, ...] | None
    record_categories: tuple[str, ...] = ()


class RecordDataset(Dataset):
    """Records with the source that can open each one's image.

    Keys are an index or ``(index, epoch)`` from :class:`~fundus_lit.data.samplers.EpochSampler`;
    the text draw is seeded by ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        items: list[tuple[Source, FundusRecord]],
        text: TextBuilder,
        images: ImagePipeline,
        seed: int = 0,
    ) -> None:
        self.items, self.text, self.images, self.seed = items, text, images, seed

    def __len__(self) -> int:
        return len(self.items)

    @property
    def records(self) -> list[FundusRecord]:
        return [record for _, record in self.items]

    def __getitem__(self, key: int | tuple[int, ...]) -> Sample:
        index, epoch = key[:2] if isinstance(key, tuple) else (key, 0)
        source, record = self.items[index]
        text, category = self.text.build(record, random.Random(f"{self.seed}/{epoch}/{index}"))
        # JPEGs of sources that can draft decode at the scale the pipeline resizes to
        drafts = getattr(source, "draft_decode", False)
        image = source.open_image(record, self.images.size) if drafts else source.open_image(record)
        return Sample(
            image=self.images(image),
            text=text,
            category=category,
            dataset=record.dataset,
            index=index,
            labels=record.labels,
            record_categories=record.categories,
        )


class Tokenizing:
    """Holds a tokenizer by name and loads it on first use, in each loader worker: a loaded
    tokenizer is not sent to the workers (pickling one is slow, and some are not picklable)."""

    def __init__(self, tokenizer: str, max_length: int) -> None:
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from fundus_lit.models.text import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_tokenizer": None}


class Collator(Tokenizing):
    """Stacks images and tokenises texts in the loader workers, never in the training step."""

    def __call__(self, samples: list[Sample]) -> Batch:
        texts = [s.text for s in samples]
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        labels = None
        if all(s.labels is not None for s in samples):
            labels = torch.tensor([s.labels for s in samples], dtype=torch.float32)
        return Batch(
            images=torch.stack([s.image for s in samples]),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            texts=texts,
            categories=[s.category for s in samples],
            datasets=[s.dataset for s in samples],
            indices=torch.tensor([s.index for s in samples]),
            labels=labels,
            record_categories=[s.record_categories for s in samples],
        )


class PairedDataset(Dataset):
    """Two-stream training (KeepFIT): each public sample comes with an expert sample drawn
    uniformly with replacement from the expert records.

    The draw depends only on ``(seed, epoch, position)`` of the public sample in the epoch's
    global stream, so pairs are the same for any number of workers and ranks, and two draws of
    one public record (dataset balancing samples with replacement) get independent partners.
    """

    def __init__(self, public: RecordDataset, expert: RecordDataset, seed: int = 0) -> None:
        if len(expert) == 0:
            raise ValueError("the expert stream has no records")
        self.public, self.expert, self.seed = public, expert, seed

    def __len__(self) -> int:
        return len(self.public)

    def partner(self, key: int | tuple[int, ...]) -> int:
        index, epoch, position = (key + (key[0],))[:3] if isinstance(key, tuple) else (key, 0, key)
        return random.Random(f"expert/{self.seed}/{epoch}/{position}").randrange(len(self.expert))

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[Sample, Sample]:
        epoch = key[1] if isinstance(key, tuple) else 0
        return self.public[key], self.expert[(self.partner(key), epoch)]


class PairedCollator:
    """Collates the public batch and puts the expert batch in ``batch.extra["expert"]``."""

    def __init__(self, collate: Collator) -> None:
        self.collate = collate

    def __call__(self, pairs: list[tuple[Sample, Sample]]) -> Batch:
        batch = self.collate([public for public, _ in pairs])
        batch.extra["expert"] = self.collate([expert for _, expert in pairs])
        return batch
