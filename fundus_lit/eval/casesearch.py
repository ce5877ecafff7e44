"""Case search: a saved FAISS index of image embeddings with each record's metadata.

``fundus-lit index`` writes a folder (``index.faiss``, ``records.jsonl``, ``meta.json``) that
``fundus-lit search`` reads back; the checkpoint path and preprocessing go into ``meta.json`` so
a query photograph is embedded exactly as the indexed ones were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fundus_lit.core.errors import DataError
from fundus_lit.core.progress import progress
from fundus_lit.data.sources import read_rgb
from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.eval.features import default_device, extract_features
from fundus_lit.eval.loading import instantiate_for_model, load_encoder
from fundus_lit.models.dual_encoder import DualEncoder

INDEX_FILE, RECORDS_FILE, META_FILE = "index.faiss", "records.jsonl", "meta.json"


@dataclass
class CaseIndex:
    """A loaded case index: the FAISS index, one metadata dict per row, and how it was built."""

    index: object
    records: list[dict]
    meta: dict

    def __len__(self) -> int:
        return len(self.records)


def record_path(source, record) -> str:
    """Where a record's image lives, as a path a later ``search`` can open; in-memory sources
    (synthetic) keep their reference."""
    root = getattr(source, "root", None)
    if root is not None:
        return str((Path(root) / record.image).resolve())
    return record.image


def build_index(parser, cfg) -> CaseIndex:
    """Embed every image of ``cfg.split`` and save the index under ``cfg.out``."""
    import faiss

    ckpt = Path(cfg.ckpt).resolve()
    encoder, hp = load_encoder(ckpt)
    dm = instantiate_for_model(parser, cfg, hp).data
    dm.setup("test")
    items = dm.splits[cfg.split]
    if not items:
        raise DataError(f"the {cfg.split} split has no records; add data.{cfg.split} sources")
    records = [record for _, record in items]
    loader = dm.eval_dataloader(cfg.split)
    feats = extract_features(encoder, loader, records, desc=f"indexing {cfg.split}")
    # the records encoded: unreadable ones skipped by data.bad_input=skip are not indexed
    source_of = {id(record): source for source, record in items}
    encoded = [(source_of[id(record)], record) for record in feats.records]
    emb = np.ascontiguousarray(feats.image_emb.numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    rows = [
        {
            "path": record_path(source, record),
            "dataset": record.dataset,
            "categories": list(record.categories),
            "origin": record.origin,
        }
        for source, record in encoded
    ]
    meta = {
        "ckpt": str(ckpt),
        "embed_dim": int(emb.shape[1]),
        "image_size": int(hp["image_size"]),
        "crop_fov": bool(dm.crop_fov),
        "count": len(rows),
        "split": cfg.split,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(out / INDEX_FILE))
    with (out / RECORDS_FILE).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return CaseIndex(index, rows, meta)


def load_index(folder: str | Path) -> CaseIndex:
    import faiss

    folder = Path(folder)
    missing = [n for n in (INDEX_FILE, RECORDS_FILE, META_FILE) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder} is not a fundus-lit case index: missing {missing}")
    index = faiss.read_index(str(folder / INDEX_FILE))
    lines = (folder / RECORDS_FILE).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    meta = json.loads((folder / META_FILE).read_text())
    if index.ntotal != len(records):
        raise DataError(
            f"{folder}: {INDEX_FILE} holds {index.ntotal} vectors but {RECORDS_FILE} has "
            f"{len(records)} rows; rebuild the index"
        )
    return CaseIndex(index, records, meta)


@torch.no_grad()
def embed_image(encoder: DualEncoder, path: Path, image_size: int, crop_fov: bool) -> np.ndarray:
    pipeline = ImagePipeline(image_size, crop_fov, None)
    pixels = pipeline(read_rgb(path, "the query image")).unsqueeze(0)
    device = default_device()
    encoder.eval().to(device)
    emb = encoder.encode_image(pixels.to(device))["emb"].float().cpu().numpy()
    return np.ascontiguousarray(emb, dtype=np.float32)


def search(
    case_index: CaseIndex, image: str | Path, k: int = 10, ckpt: str | None = None
) -> list[dict]:
    """The ``k`` most similar indexed cases to ``image``: rank, score and the stored metadata,
    ties broken by lower index row as in the retrieval metrics."""
    from fundus_lit.eval.faiss_search import exact_search

    image = Path(image)
    if not image.is_file():
        raise DataError(f"query image {image} does not exist")
    meta = case_index.meta
    # one query, but a large checkpoint and index take a while: the bar names the stage
    with progress(total=3, desc="search", unit="stage") as bar:
        bar.set_postfix_str("loading the checkpoint")
        encoder, hp = load_encoder(ckpt or meta["ckpt"])
        if hp["embed_dim"] != meta["embed_dim"]:
            raise DataError(
                f"checkpoint embeds in {hp['embed_dim']} dimensions but the index holds "
                f"{meta['embed_dim']}-dimensional vectors; use the checkpoint the index was "
                "built with"
            )
        bar.update()
        bar.set_postfix_str("embedding the query")
        query = embed_image(encoder, image, meta["image_size"], meta["crop_fov"])
        bar.update()
        bar.set_postfix_str(f"searching {len(case_index)} cases")
        scores, ids = exact_search(case_index.index, query, min(k, len(case_index)))
        bar.update()
    return [
        {"rank": r + 1, "score": float(s), **case_index.records[int(i)]}
        for r, (s, i) in enumerate(zip(scores[0], ids[0]))
        if i >= 0
    ]


def format_hits(hits: list[dict]) -> str:
    lines = ["rank  score   categories | path"]
    for hit in hits:
        cats = ", ".join(hit["categories"]) or "-"
        lines.append(f"{hit['rank']:>4}  {hit['score']:.4f}  {cats} | {hit['path']}")
    return "\n".join(lines)


def write_grid(query: str | Path, hits: list[dict], out: str | Path, size: int = 160) -> Path:
    """A PNG strip: the query, then its neighbours captioned with rank, score and categories
    (cases whose image is not a readable file, such as synthetic ones, get a grey tile)."""
    from fundus_lit.eval.pictures import grid, tile

    tiles = [tile(str(query), size, "query\n" + Path(query).name)]
    for hit in hits:
        cats = ", ".join(hit["categories"]) or "-"
        tiles.append(tile(hit["path"], size, f"#{hit['rank']} {hit['score']:.3f}\n{cats}"))
    picture = grid([tiles[i : i + 6] for i in range(0, len(tiles), 6)], size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out
