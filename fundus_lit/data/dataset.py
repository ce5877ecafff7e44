"""Map-style dataset over records from several sources, and the collate function that tokenises."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fundus_lit.core.errors import DataError
from fundus_lit.core.text_keys import text_keys
from fundus_lit.data.bad_input import NO_TEXT, BadInputPolicy, BadSample, InputScreen, image_reason
from fundus_lit.data.batch import Batch
from fundus_lit.data.records import FundusRecord
from fundus_lit.data.sources import Source
from fundus_lit.data.text import NoTextError, TextBuilder
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


def unpack_key(key: int | tuple[int, ...]) -> tuple[int, int, int]:
    """``(index, epoch, position)`` of a sampler key; a bare index is epoch 0, position index."""
    if not isinstance(key, tuple):
        return key, 0, key
    index, epoch = key[0], key[1] if len(key) > 1 else 0
    return index, epoch, key[2] if len(key) > 2 else index


def seed_of(key: str) -> int:
    """A 63-bit seed from a string key (``hash`` of a string changes between processes)."""
    return random.Random(key).getrandbits(63)


class RecordDataset(Dataset):
    """Records with the source that can open each one's image.

    Keys are an index, ``(index, epoch)`` or ``(index, epoch, position)`` from
    :class:`~fundus_lit.data.samplers.EpochSampler`; the text draw is seeded by
    ``(seed, epoch, index)`` and the augmentation by ``(stream, seed, epoch, position)``, so a
    sample is the same whichever worker, rank or resumed run loads it.
    """

    def __init__(
        self,
        items: list[tuple[Source, FundusRecord]],
        text: TextBuilder,
        images: ImagePipeline,
        seed: int = 0,
        stream: str = "public",
    ) -> None:
        self.items, self.text, self.images, self.seed = items, text, images, seed
        self.stream = stream

    def __len__(self) -> int:
        return len(self.items)

    @property
    def records(self) -> list[FundusRecord]:
        return [record for _, record in self.items]

    def __getitem__(self, key: int | tuple[int, ...]) -> Sample | BadSample:
        """The sample of ``key``, or a :class:`BadSample` saying why it has none (unusable text,
        unreadable image): the collate function applies the bad-input policy to it."""
        index, epoch, position = unpack_key(key)
        source, record = self.items[index]
        try:
            text, category = self.text.build(record, random.Random(f"{self.seed}/{epoch}/{index}"))
        except NoTextError:
            return self._bad(source, record, NO_TEXT)
        except DataError as err:
            return self._bad(source, record, f"no usable text: {err}")
        if not text.strip():  # e.g. a template of [CLS] alone on a record without categories
            return self._bad(source, record, NO_TEXT)
        try:
            # JPEGs of sources that can draft decode at the scale the pipeline resizes to
            drafts = getattr(source, "draft_decode", False)
            image = (
                source.open_image(record, self.images.size) if drafts else source.open_image(record)
            )
            image.load()  # a source that opens lazily must fail here, where the file is named
        except (DataError, OSError, SyntaxError) as err:
            return self._bad(source, record, image_reason(err))
        if self.images.augment is None:
            pixels = self.images(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_of(f"augment/{self.stream}/{self.seed}/{epoch}/{position}"))
                pixels = self.images(image)
        return Sample(
            image=pixels,
            text=text,
            category=category,
            dataset=record.dataset,
            index=index,
            labels=record.labels,
            record_categories=record.categories,
        )

    @staticmethod
    def _bad(source: Source, record: FundusRecord, reason: str) -> BadSample:
        return BadSample(source.locate(record), record.origin, reason)


class Tokenizing:
    """Holds a tokenizer by name and loads it on first use, in each loader worker: a loaded
    tokenizer is not sent to the workers (pickling one is slow, and some are not picklable)."""

    def __init__(self, tokenizer: str, max_length: int) -> None:
        self.tokenizer_name, self.max_length = tokenizer, max_length
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from fundus_lit.core.resolve import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_tokenizer": None}


class Collator(Tokenizing):
    """Stacks images and tokenises texts in the loader workers, never in the training step.

    Bad samples (:class:`~fundus_lit.data.bad_input.BadSample`) meet the ``bad_input`` policy
    here: ``error`` raises naming the file, ``skip`` leaves them out and lists them in
    ``batch.extra["skipped"]`` for the main process to count.
    """

    def __init__(
        self, tokenizer: str, max_length: int, bad_input: BadInputPolicy = "error"
    ) -> None:
        super().__init__(tokenizer, max_length)
        self.screen = InputScreen(bad_input)

    def __call__(self, samples: list[Sample | BadSample]) -> Batch:
        kept, skipped = self.screen([(s,) for s in samples])
        batch = self.batch_of([s for (s,) in kept])
        if skipped:
            batch.extra["skipped"] = skipped
        return batch

    def batch_of(self, samples: list[Sample]) -> Batch:
        """One batch of good samples, tokenised."""
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
            text_keys=text_keys(tokens["input_ids"], tokens["attention_mask"]),
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
        _, epoch, position = unpack_key(key)
        return random.Random(f"expert/{self.seed}/{epoch}/{position}").randrange(len(self.expert))

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[Sample, Sample]:
        _, epoch, position = unpack_key(key)
        return self.public[key], self.expert[(self.partner(key), epoch, position)]


class PairedCollator:
    """Collates the public batch and puts the expert batch in ``batch.extra["expert"]``.

    A pair with a bad sample on either side is left out whole under ``bad_input=skip`` (the two
    streams stay the same size and aligned); the bad samples of both streams are listed in the
    public batch's ``extra["skipped"]``.
    """

    def __init__(self, collate: Collator) -> None:
        self.collate = collate

    def __call__(self, pairs: list[tuple[Sample | BadSample, Sample | BadSample]]) -> Batch:
        kept, skipped = self.collate.screen(pairs)
        batch = self.collate.batch_of([public for public, _ in kept])
        batch.extra["expert"] = self.collate.batch_of([expert for _, expert in kept])
        if skipped:
            batch.extra["skipped"] = skipped
        return batch
