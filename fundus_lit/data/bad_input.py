"""The bad-input policy: what a run does with files that are missing, images that cannot be
decoded and records without usable text.

Real fundus collections hold a few broken files: a copy cut short, a placeholder written as
``.png``, an export with an empty report. Two moments catch them:

- **Before training** (``FundusDataModule(missing=...)``), every image reference is checked to
  exist. All missing files are gathered over every source and split into one summary (count per
  source, the first :data:`SHOWN` with their CSV file and line), so a user fixes the data in one
  pass. ``error`` stops the run with :class:`DataError`; ``drop`` removes those records, logs the
  same summary as a warning and goes on.
- **While loading** (``FundusDataModule(bad_input=...)``), an image that does not decode (zero
  bytes, not an image, truncated) or a record whose text is empty is marked by the dataset as a
  :class:`BadSample`; the collate function applies the policy. ``error`` raises
  :class:`BadInputError` naming the file, its record's origin and why; ``skip`` leaves the sample
  out of its batch (the batch gets smaller) and carries ``(path, origin, reason)`` in
  ``batch.extra["skipped"]``, because loader workers are separate processes and only the batch
  reaches the main process. There :class:`SkipLog` counts them, the data module logs the count
  as a metric and prints a summary at the end of the run.

A batch in which every sample is bad raises even under ``skip``: a map-style loader fixes a
batch's keys before loading them, so it cannot refill it, and an empty or ``None`` batch is no
safe stand-in (Lightning 2.6 skips a ``None`` training batch only on one device; validation steps
would get ``None``, and a rank skipping a step while the others run it breaks their collectives).
Data that bad needs fixing, not skipping.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from fundus_lit.core.errors import DataError

__all__ = [
    "BadInputError",
    "BadInputPolicy",
    "BadSample",
    "InputScreen",
    "MissingFiles",
    "MissingPolicy",
    "SkipLog",
    "Skipped",
    "textless_message",
]

logger = logging.getLogger(__name__)

MissingPolicy = Literal["error", "drop"]
BadInputPolicy = Literal["error", "skip"]

#: records listed by name in one message; the rest are counted
SHOWN = 10

_WORKER = re.compile(r"Caught \w+ (in DataLoader worker process \d+)\.\nOriginal Traceback")


class BadInputError(DataError):
    """An unreadable image or a record without usable text, under ``bad_input=error``.

    Raised in a loader worker, PyTorch re-raises it in the main process as
    ``BadInputError("Caught BadInputError in DataLoader worker process N. Original Traceback
    ...")``; the constructor cuts that back to the original message, so the CLI prints the file
    at fault instead of a worker's traceback. The type survives, so ``fundus-lit`` still exits
    with status 2.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_unwrap(message, f"{type(self).__module__}.{type(self).__qualname__}: "))


def _unwrap(message: str, marker: str) -> str:
    """The original message inside a DataLoader worker's re-raised traceback, else ``message``."""
    match = _WORKER.match(message)
    at = message.rfind(marker) if match else -1
    if match is None or at < 0:
        return message
    return f"{message[at + len(marker) :].rstrip()} (raised {match.group(1)})"


class Skipped(NamedTuple):
    """One sample left out under ``bad_input=skip``: a plain tuple of strings, so it travels from
    a loader worker to the main process inside the batch."""

    path: str
    origin: str
    reason: str

    def line(self) -> str:
        return f"{self.path} ({self.origin}): {self.reason}"


@dataclass(frozen=True)
class BadSample:
    """Stands in for a sample whose image cannot be decoded or whose text is unusable.

    The dataset returns it instead of raising, so the collate function decides what happens
    (the policy lives there, one object per data module). Code that indexes the dataset
    directly and reads a sample field (``.image``, ``.text``, ...) gets the
    :class:`BadInputError`, never an unexplained ``AttributeError``.
    """

    path: str
    origin: str
    reason: str

    def skipped(self) -> Skipped:
        return Skipped(self.path, self.origin, self.reason)

    def error(self) -> BadInputError:
        return BadInputError(
            f"{self.skipped().line()}; set data.init_args.bad_input=skip to leave such samples "
            "out (they are counted and listed at the end of the run)"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # pickle, copy and friends probe for optional dunders
            raise AttributeError(name)
        raise self.error()


def image_reason(err: BaseException) -> str:
    """Why an image is unreadable, in PIL's words where PIL gave them: the sources wrap the
    decoder's error in a :class:`DataError` naming the file, which the skip list names already."""
    cause = err.__cause__ if isinstance(err, DataError) and err.__cause__ is not None else err
    return f"unreadable image: {cause}"


NO_TEXT = "no usable text (the report or caption is empty or whitespace only)"


def textless_message(refused: Sequence[tuple[str, Any]]) -> str:
    """One message for every ``(split, record)`` without usable text, found before training."""
    lines = [f"{split}: {record.image} ({record.origin})" for split, record in refused]
    return (
        f"{len(refused)} record(s) have an empty or whitespace-only report or caption, and "
        "data.init_args.bad_input=error refuses them:\n"
        + _listing(lines)
        + "\nfill in the text, or set data.init_args.bad_input=skip to leave them out (they "
        "are counted and listed at the end of the run)"
    )


class InputScreen:
    """The run-time policy, applied by the collate function in the loader workers.

    Items are tuples of samples that stay together (one sample, or a public sample and its
    expert partner); an item with any :class:`BadSample` is left out whole, so paired streams
    keep their pairing.

    Args:
        policy: ``error`` raises on the first bad sample, ``skip`` leaves it out.
    """

    def __init__(self, policy: BadInputPolicy = "error") -> None:
        if policy not in ("error", "skip"):
            raise DataError(f"data.bad_input must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self._warned: set[tuple[str, str]] = set()

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_warned": set()}

    def __call__(self, items: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list]:
        """``(good items, skipped)``; raises :class:`BadInputError` under ``error``, and under
        ``skip`` when nothing of the batch is left."""
        kept: list[tuple[Any, ...]] = []
        skipped: list[Skipped] = []
        for item in items:
            bad = [s for s in item if isinstance(s, BadSample)]
            if not bad:
                kept.append(item)
                continue
            if self.policy == "error":
                raise bad[0].error()
            skipped.extend(s.skipped() for s in bad)
        if skipped and not kept:
            raise BadInputError(_all_bad_message(skipped))
        for entry in skipped:
            self._warn(entry)
        return kept, skipped

    def _warn(self, entry: Skipped) -> None:
        """Once per record and worker: the main process counts every occurrence, but code that
        iterates a loader without a Trainer (feature extraction) must not skip silently."""
        key = (entry.path, entry.origin)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("skipped %s", entry.line())


def _all_bad_message(skipped: list[Skipped]) -> str:
    return (
        f"every sample of a batch is unreadable or has no usable text ({len(skipped)}), so no "
        "step can be made from it; data.bad_input=skip leaves bad samples out of their batch "
        "but needs one good sample per batch. Fix or remove these records:\n"
        + _listing([s.line() for s in skipped])
    )


def _listing(lines: list[str]) -> str:
    """The first :data:`SHOWN` lines, indented, and how many more there are."""
    shown = "\n".join(f"  {line}" for line in lines[:SHOWN])
    more = f"\n  ... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
    return shown + more


class SkipLog:
    """Samples skipped so far in this process, fed from ``batch.extra["skipped"]`` in the main
    process. Counts every occurrence (a bad record is skipped again each epoch) per Trainer stage,
    and remembers each distinct record once for the summary."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.records: dict[tuple[str, str], Skipped] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, skipped: Sequence[Sequence[str]], stage: str) -> int:
        """Count the skipped samples of one batch; returns how many there were."""
        for entry in skipped:
            entry = Skipped(*entry)
            self.records.setdefault((entry.path, entry.origin), entry)
        self.counts[stage] += len(skipped)
        return len(skipped)

    def summary(self) -> str:
        """``skipped N samples ... : path (origin): reason ...``, or "" when nothing was skipped."""
        if not self.total:
            return ""
        stages = ", ".join(f"{stage}: {n}" for stage, n in self.counts.items())
        lines = [entry.line() for entry in self.records.values()]
        return (
            f"skipped {self.total} sample(s) with an unreadable image or no usable text "
            f"({len(lines)} distinct record(s); {stages}):\n" + _listing(lines)
        )

    def reset(self) -> None:
        self.counts.clear()
        self.records.clear()


@dataclass
class _SourceMissing:
    split: str
    source: str
    records: int
    missing: list[str]  # "path (origin)"


class MissingFiles:
    """Missing files of every source and split, gathered before training so one message lists
    them all.

    Args:
        policy: ``error`` raises :class:`DataError` with the summary; ``drop`` logs it as a
            warning (the data module has already left those records out).
    """

    def __init__(self, policy: MissingPolicy = "error") -> None:
        if policy not in ("error", "drop"):
            raise DataError(f"data.missing must be 'error' or 'drop', got {policy!r}")
        self.policy = policy
        self.sources: list[_SourceMissing] = []

    @property
    def total(self) -> int:
        return sum(len(s.missing) for s in self.sources)

    def add(self, split: str, source: object, records: int, missing: list[tuple[Any, str]]) -> None:
        """Note the ``(record, path)`` pairs of one source whose files are absent."""
        if missing:
            lines = [f"{path} ({record.origin})" for record, path in missing]
            self.sources.append(_SourceMissing(split, repr(source), records, lines))

    def summary(self) -> str:
        """Count, count per source, and the first :data:`SHOWN` files with their CSV and line."""
        per_source = "\n".join(
            f"  {s.split}: {len(s.missing)} of {s.records} in {s.source}" for s in self.sources
        )
        lines = [line for s in self.sources for line in s.missing]
        return (
            f"{self.total} listed image file(s) are missing:\n{per_source}\nmissing:\n"
            + _listing(lines)
        )

    def resolve(self) -> None:
        """Raise (``error``) or warn (``drop``) when anything is missing; no-op otherwise."""
        if not self.total:
            return
        if self.policy == "error":
            raise DataError(
                self.summary() + "\nfix the paths or the data root, or set "
                "data.init_args.missing=drop to train without these records"
            )
        logger.warning("dropped the records of missing files; %s", self.summary())
