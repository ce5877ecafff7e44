"""What ``fundus-lit predict`` leaves behind: the embeddings of the predict split in one file.

Lightning's predict loop only returns its outputs to the caller, and a command line has no
caller, so without a writer the verb computed every embedding and threw them away. One parquet
file holds each image's row with the record it came from: a researcher loads it with pandas in
one line, and the embeddings cannot drift out of step with their paths and categories the way a
tensor file and a separate sidecar can.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter

from fundus_lit.core.errors import ConfigError, DataError

PREDICTIONS_FILE = "predictions.parquet"
EMBEDDINGS = ("image_emb", "text_emb")


class EmbeddingWriter(BasePredictionWriter):
    """Write the image and text embeddings of ``predict`` to one parquet file, a row per image.

    Columns: ``index`` (the record's position in the predict split, the order of the rows),
    ``path``, ``dataset``, ``categories``, ``text`` (what the text tower embedded), ``origin``
    (file and line of the record), ``image_emb`` and ``text_emb`` (float32, L2-normalised by the
    model; under ``bf16-mixed`` in bf16, so norms are 1 within about 0.5 %). The checkpoint and
    split are in the file's metadata under ``fundus_lit``.

    Under DDP every rank predicts its share of the split; the shares are gathered on rank 0,
    which writes the file in split order (a record predicted by several ranks appears once).

    Args:
        path: Output file. Default: ``predictions.parquet`` in the checkpoint's run directory
            (``RUN`` for ``RUN/checkpoints/last.ckpt``, where ``evaluate`` writes ``eval.json``),
            or in the logger's directory when no ``--ckpt_path`` is given. A directory (one
            that exists, or a path ending in ``/``) gets ``predictions.parquet`` inside.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Once per predict run, with every batch: rows are sorted and deduplicated by their
        record index, which the sampler's ``batch_indices`` cannot do for skipped samples."""
        parts = gather_to_rank_zero(local_rows(predictions))
        if not trainer.is_global_zero:
            return
        items = predict_items(trainer)
        rows = merge_rows(parts)
        path = self.output_path(trainer)
        meta = {
            "checkpoint": str(Path(trainer.ckpt_path).resolve()) if trainer.ckpt_path else None,
            "split": split_name(trainer, items),
            "records": len(items),
        }
        write_table(embedding_table(rows, items, meta), path)
        left_out = len(items) - len(rows["index"])
        note = f"; {left_out} unreadable record(s) left out" if left_out else ""
        print(f"predict: wrote {len(rows['index'])} rows ({meta['split']} split{note}) to {path}")

    def output_path(self, trainer: L.Trainer) -> Path:
        """Next to the checkpoint's other evaluation outputs unless told otherwise."""
        from fundus_lit.eval.evaluate import default_out

        if self.path:
            path = Path(self.path).expanduser()
            folder = path.is_dir() or self.path.endswith(("/", os.sep))
            return path / PREDICTIONS_FILE if folder else path
        if trainer.ckpt_path:
            return default_out(Path(trainer.ckpt_path)) / PREDICTIONS_FILE
        return Path(trainer.log_dir or trainer.default_root_dir) / PREDICTIONS_FILE


def local_rows(predictions: Sequence[Any]) -> dict[str, Any]:
    """This rank's predictions as plain arrays (cheap to pickle for the gather)."""
    if predictions and isinstance(predictions[0], list):
        raise ConfigError("predict writes embeddings of one predict dataloader, not several")
    batches = [p for p in predictions if p is not None]
    if any(not isinstance(p, dict) or "image_emb" not in p for p in batches):
        raise ConfigError(
            "predict writes image embeddings: the model's predict_step must return a dict with "
            "image_emb, text_emb and indices (fundus_lit.PretrainModule does)"
        )
    index = [np.asarray(p["indices"], dtype=np.int64).reshape(-1) for p in batches]
    rows: dict[str, Any] = {"index": np.concatenate(index or [np.zeros(0, np.int64)]), "text": []}
    for p, ids in zip(batches, index):
        rows["text"].extend(p.get("texts") or [""] * len(ids))
    for key in EMBEDDINGS:
        if batches and all(p.get(key) is not None for p in batches):
            rows[key] = np.concatenate([p[key].float().numpy() for p in batches])
    return rows


def gather_to_rank_zero(part: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's rows on rank 0 (an empty list elsewhere). Ranks hold uneven shares (the
    predict sampler never pads), which a tensor all-gather cannot take; objects can."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [part]
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(part, parts, dst=0)
    return list(parts or [])


def merge_rows(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' rows in split order, each record once: without a distributed sampler every
    rank predicts the whole split. A rank whose share was empty contributes nothing."""
    parts = [part for part in parts if len(part["index"])]
    if not parts:
        raise DataError("predict embedded no image: the predict split has no readable record")
    index = np.concatenate([part["index"] for part in parts])
    _, first = np.unique(index, return_index=True)  # sorted by index, first occurrence kept
    texts = [text for part in parts for text in part["text"]]
    merged: dict[str, Any] = {"index": index[first], "text": [texts[i] for i in first]}
    for key in EMBEDDINGS:
        if all(key in part for part in parts):
            merged[key] = np.concatenate([part[key] for part in parts])[first]
    return merged


def predict_items(trainer: L.Trainer) -> list:
    """The (source, record) pairs the predict loader reads, which the batch indices point into."""
    loaders = trainer.predict_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if len(loaders) == 1 else None
    items = getattr(getattr(loaders, "dataset", None), "items", None)
    if items is None:
        raise ConfigError(
            "predict writes the records of a FundusDataModule's predict loader; this data "
            "module's loader does not expose them"
        )
    return items


def split_name(trainer: L.Trainer, items: list) -> str | None:
    """Which split of the data module was predicted (``test``, or ``val`` when the config
    lists no test sources and the test split falls back to it)."""
    splits = getattr(trainer.datamodule, "splits", None) or {}
    return next((name for name, split in splits.items() if split is items), None)


def embedding_table(rows: dict[str, Any], items: list, meta: dict[str, Any]):
    """One parquet row per predicted image: the record's fields, then its embeddings."""
    import pyarrow as pa

    from fundus_lit.eval.casesearch import record_path

    records = [items[i] for i in rows["index"].tolist()]
    columns = {
        "index": pa.array(rows["index"], pa.int64()),
        "path": pa.array([record_path(source, record) for source, record in records]),
        "dataset": pa.array([record.dataset for _, record in records], pa.string()),
        "categories": pa.array(
            [list(record.categories) for _, record in records], pa.list_(pa.string())
        ),
        "text": pa.array(rows["text"], pa.string()),
        "origin": pa.array([record.origin for _, record in records], pa.string()),
    }
    for key in EMBEDDINGS:
        if key in rows:
            emb = np.ascontiguousarray(rows[key], dtype=np.float32)
            columns[key] = pa.FixedSizeListArray.from_arrays(emb.reshape(-1), emb.shape[1])
    table = pa.table(columns)
    return table.replace_schema_metadata({"fundus_lit": json.dumps(meta)})


def write_table(table, path: Path) -> None:
    """Write through a temporary file: an interrupted write never leaves a truncated file that
    looks like a finished one."""
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise DataError(
            f"cannot write the predictions to {path}: {err}; choose another file with "
            "--predictions.path"
        ) from err
