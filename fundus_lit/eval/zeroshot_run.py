"""The ``fundus-lit zeroshot`` verb's work: checkpoint + data config -> table + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fundus_lit.data.errors import DataError
from fundus_lit.eval.loading import load_encoder
from fundus_lit.eval.zeroshot import format_table


def update_json(path: Path, section: str, result: dict) -> None:
    """Write ``result`` under ``section``, keeping other sections (other evaluation tasks)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[section] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def run_zeroshot(parser, cfg) -> dict:
    encoder, hp = load_encoder(cfg.ckpt)
    # the model decides how images and texts are prepared, not the data config
    cfg.data.init_args.tokenizer = hp["text"]["name"]
    cfg.data.init_args.max_length = hp["text"]["max_length"]
    cfg.data.init_args.image_size = hp["image_size"]
    init = parser.instantiate_classes(cfg)
    dm, zeroshot = init.data, init.zeroshot
    dm.setup("validate" if cfg.split == "val" else "test")
    loader = dm.val_dataloader() if cfg.split == "val" else dm.test_dataloader()
    if not loader:
        raise DataError(f"the {cfg.split} split has no records; add data.{cfg.split} sources")
    embeddings, targets = [], []
    with torch.no_grad():
        for batch in loader:
            embeddings.append(encoder.encode_image(batch.images)["emb"])
            targets.append(zeroshot.targets(batch.record_categories))
    prototypes = zeroshot.prototypes(encoder, dm.collate.tokenizer, hp["text"]["max_length"])
    result = zeroshot.evaluate(
        torch.cat(embeddings), torch.cat(targets), prototypes, encoder.scale()
    )
    if result["n"] == 0:
        raise DataError(f"no {cfg.split} record has a first category among {zeroshot.classes}")
    print(format_table(result, f"{cfg.section} ({cfg.split} split)"))
    out = Path(cfg.out) if cfg.out else Path(cfg.ckpt).resolve().parent.parent / "eval.json"
    update_json(out, cfg.section, result)
    print(f"wrote {out}")
    return result
