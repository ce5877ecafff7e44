"""The ``fundus-lit evaluate`` verb: one checkpoint, one evaluation config, every task.

Each split is encoded once (:mod:`fundus_lit.eval.features`); zero-shot, linear probe, few-shot
adapters and retrieval then work on those rows. Results go to ``eval.json`` (a section per task),
a markdown report, TensorBoard scalars next to the training curves, and pictures (confusion
matrices, zero-shot per-class recall, retrieval examples) as PNG files and TensorBoard images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.core.errors import DataError
from fundus_lit.data.records import FundusRecord
from fundus_lit.eval.config import parse_tasks
from fundus_lit.eval.features import Features, extract_features
from fundus_lit.eval.loading import instantiate_for_model, load_encoder
from fundus_lit.eval.report import (
    confusion_figure,
    confusion_matrix,
    markdown,
    recall_figure,
    scalars,
    update_json,
)
from fundus_lit.eval.zeroshot import ZeroShot
from fundus_lit.knowledge import category_key

logger = logging.getLogger(__name__)


def default_out(ckpt: Path) -> Path:
    """The run directory of a checkpoint (``RUN/checkpoints/x.ckpt`` -> ``RUN``); an export
    folder is its own."""
    ckpt = ckpt.resolve()
    if ckpt.is_dir():
        return ckpt
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def check_classes(classes: list[str], records: list[FundusRecord], split: str) -> None:
    """Name the configured classes that no record of ``split`` has as its first category, before
    any image is encoded: a typo would otherwise become a class with zero recall."""
    present = {category_key(r.categories[0]) for r in records if r.categories}
    absent = [c for c in classes if category_key(c) not in present]
    if absent:
        found = sorted({r.categories[0] for r in records if r.categories})
        shown = ", ".join(found[:15]) + (" ..." if len(found) > 15 else "")
        raise DataError(
            f"class(es) {absent} of the evaluation config are absent from the {split} split "
            f"({len(records)} records; first categories found: {shown})"
        )


class Evaluation:
    """State shared by the tasks of one ``evaluate`` run: encoder, data, features, outputs."""

    def __init__(self, parser, cfg) -> None:
        self.tasks = parse_tasks(cfg.tasks)
        self.ckpt = Path(cfg.ckpt)
        # read once: encoder, step, decoder; an export folder holds the encoder only
        exported = self.ckpt.is_dir()
        self.checkpoint = {"state_dict": {}} if exported else read_checkpoint(self.ckpt)
        self.encoder, self.hp = load_encoder(self.ckpt, self.checkpoint)
        self.cfg = cfg = instantiate_for_model(parser, cfg, self.hp)
        self.dm = cfg.data
        self.dm.setup("test")
        self.split = cfg.split
        self.out = Path(cfg.out) if cfg.out else default_out(self.ckpt)
        self.classes = list(cfg.classes or [])
        self.figures: dict[str, object] = {}  # "confusion_probe" -> confusion_probe.png
        self.pictures: dict[str, object] = {}  # PIL images, e.g. retrieval_examples.png
        self.encoded: Features | None = None  # the evaluated split's rows, for the projector

    # -- data --------------------------------------------------------------------------------
    def needs_classes(self) -> bool:
        return any(t in self.tasks for t in ("zeroshot", "probe", "fewshot"))

    def needs_train(self) -> bool:
        if "probe" in self.tasks or "fewshot" in self.tasks:
            return True
        return "retrieval" in self.tasks and "i2i" in self.cfg.retrieval.tasks

    def validate(self) -> None:
        records = self.records(self.split)
        if not records:
            raise DataError(f"the {self.split} split has no records; add data.{self.split} sources")
        if self.needs_classes():
            if len(self.classes) < 2:
                raise DataError(
                    f"tasks {self.tasks} need `classes:` (at least 2) in the evaluation config"
                )
            check_classes(self.classes, records, self.split)
            p = self.cfg.zeroshot
            self.zeroshot = ZeroShot(self.classes, p.knowledge, p.renormalize, p.template)
            if "probe" in self.tasks or "fewshot" in self.tasks:
                train = self.records("train")
                if not train:
                    raise DataError(
                        "probe and fewshot train on the train split; add data.train sources"
                    )
                check_classes(self.classes, train, "train")

    def records(self, split: str) -> list[FundusRecord]:
        return [record for _, record in self.dm.splits[split]]

    def features(self, split: str, text: bool) -> Features:
        pooled = "probe" in self.tasks and self.cfg.probe.features == "pooled"
        logger.info("encoding the %s split (%d records)", split, len(self.records(split)))
        loader, records = self.dm.eval_dataloader(split), self.records(split)
        return extract_features(
            self.encoder, loader, records, pooled=pooled, text=text, desc=f"encoding {split}"
        )

    def targets(self, feats: Features) -> np.ndarray:
        """Class index of each record (its first category), -1 when it is not a class."""
        return self.zeroshot.targets([r.categories for r in feats.records]).numpy()

    # -- tasks -------------------------------------------------------------------------------
    def prototypes(self) -> torch.Tensor:
        tokenizer, length = self.dm.collate.tokenizer, self.hp["text"]["max_length"]
        return self.zeroshot.prototypes(self.encoder, tokenizer, length).float().cpu()

    def confusion(self, name: str, logits, targets: np.ndarray, title: str) -> None:
        preds = np.asarray(torch.as_tensor(logits).argmax(dim=1))
        cm = confusion_matrix(preds, targets, len(self.classes))
        self.figures[f"confusion_{name}"] = confusion_figure(cm, self.classes, title)

    def run_zeroshot(self, test: Features, protos: torch.Tensor) -> dict:
        y = self.targets(test)
        scale = self.encoder.scale().detach().cpu()
        result = self.zeroshot.evaluate(test.image_emb, torch.from_numpy(y), protos, scale)
        known = y >= 0
        logits = scale * test.image_emb[known] @ protos.t()
        self.confusion("zeroshot", logits, y[known], f"zero-shot ({self.split})")
        title = f"zero-shot per-class recall ({self.split})"
        self.figures["recall_zeroshot"] = recall_figure(result["per_class_recall"], title)
        return result

    def run_probe(self, train: Features, test: Features) -> dict:
        from fundus_lit.eval.probe import linear_probe

        cfg = self.cfg.probe
        pick = (lambda f: f.pooled) if cfg.features == "pooled" else (lambda f: f.image_emb)
        ytr, yte = self.targets(train), self.targets(test)
        xtr, xte = pick(train)[ytr >= 0].numpy(), pick(test)[yte >= 0].numpy()
        ytr, yte = ytr[ytr >= 0], yte[yte >= 0]
        result = linear_probe(xtr, ytr, xte, yte, len(self.classes), cfg)
        summary = dict(result.summary)
        if result.logits:
            largest = max(result.logits, key=lambda s: summary[s]["n_train"])
            self.confusion("probe", result.logits[largest], yte, f"linear probe, {largest}")
        summary |= {"features": cfg.features, "n_test": len(yte), "classes": self.classes}
        return summary

    def run_fewshot(self, train: Features, test: Features, protos: torch.Tensor) -> dict:
        from fundus_lit.eval.fewshot import fewshot_eval

        ytr, yte = self.targets(train), self.targets(test)
        result = fewshot_eval(
            train.image_emb[ytr >= 0],
            ytr[ytr >= 0],
            test.image_emb[yte >= 0],
            yte[yte >= 0],
            protos,
            float(self.encoder.scale().detach()),
            self.cfg.fewshot,
        )
        for method, logits in result.logits.items():
            self.confusion(f"fewshot_{method}", logits, yte[yte >= 0], f"few-shot {method}")
        return dict(result.summary)

    def run_retrieval(self, test: Features, train: Features | None) -> dict:
        from fundus_lit.eval.retrieval_tasks import case_retrieval, pair_retrieval

        cfg = self.cfg.retrieval
        result: dict = {}
        if {"i2t", "t2i"} & set(cfg.tasks):
            result |= pair_retrieval(
                test.image_emb, test.text_emb, test.texts, cfg.ks, cfg.tasks, cfg.device
            )
        if "i2i" in cfg.tasks:
            cats = [r.categories for r in test.records]
            if train is not None:
                gallery = [r.categories for r in train.records]
                r = case_retrieval(
                    test.image_emb,
                    cats,
                    train.image_emb,
                    gallery,
                    cfg.ks,
                    cfg.case_relevance,
                    cfg.device,
                )
                r["gallery_split"] = "train"
            else:
                r = case_retrieval(
                    test.image_emb, cats, None, None, cfg.ks, cfg.case_relevance, cfg.device
                )
                r["gallery_split"] = f"{self.split} (leave-one-out)"
            result["i2i"] = r
        if cfg.image_queries > 0:
            from fundus_lit.eval.pictures import split_examples

            picture = split_examples(cfg, self.dm, self.split, test, train)
            self.pictures["retrieval_examples"] = picture
        return result

    def run(self) -> dict[str, dict]:
        self.validate()
        retrieval = "retrieval" in self.tasks
        text = retrieval and bool({"i2t", "t2i"} & set(self.cfg.retrieval.tasks))
        if not set(self.tasks) - {"segmentation"}:
            return {"segmentation": self.run_segmentation()}
        test = self.features(self.split, text=text)
        self.encoded = test
        train = None
        if self.needs_train() and self.records("train") and self.split != "train":
            train = self.features("train", text=False)
        protos = None
        if "zeroshot" in self.tasks or "fewshot" in self.tasks:
            protos = self.prototypes()
        results: dict[str, dict] = {}
        if "zeroshot" in self.tasks:
            results["zeroshot"] = self.run_zeroshot(test, protos)
        if "probe" in self.tasks:
            results["probe"] = self.run_probe(train, test)
        if "fewshot" in self.tasks:
            results["fewshot"] = self.run_fewshot(train, test, protos)
        if retrieval:
            results["retrieval"] = self.run_retrieval(test, train)
        if "segmentation" in self.tasks:
            results["segmentation"] = self.run_segmentation()
        return results

    def run_segmentation(self) -> dict:
        from fundus_lit.eval.segmentation import run_segmentation

        train = self.dm.splits["train"]
        if not train:
            raise DataError("segmentation trains a decoder on the train split; add data.train")
        return run_segmentation(
            self.encoder,
            train,
            self.dm.splits[self.split],
            self.hp["image_size"],
            self.dm.crop_fov,
            self.cfg.segmentation,
            self.checkpoint,
            min(self.dm.num_workers, 2),
        )

    # -- outputs -----------------------------------------------------------------------------
    def write_projector(self, tag: str) -> None:
        """The evaluated images for TensorBoard's projector (:mod:`fundus_lit.eval.projector`)."""
        from fundus_lit.eval.projector import project_split

        test, step = self.encoded, int(self.checkpoint.get("global_step", 0))
        if test is None:  # segmentation alone encodes no split
            return
        name = f"evaluate_{self.split}{tag}_step{step}"
        split, options = self.dm.splits[self.split], self.cfg.projector
        folder = project_split(
            self.out, name, test.image_emb, test.records, split, options, self.dm.crop_fov
        )
        if folder is not None:
            print(f"wrote the {self.split} images' embeddings for the projector to {folder}")

    def write(self, results: dict[str, dict]) -> None:
        tag = f"_{self.cfg.tag}" if self.cfg.tag else ""
        sections = {f"{task}{tag}": result for task, result in results.items()}
        self.out.mkdir(parents=True, exist_ok=True)
        json_path = self.out / "eval.json"
        update_json(json_path, sections)
        title = f"fundus-lit evaluate: {self.ckpt.name}, {self.split} split{tag.replace('_', ' ')}"
        report = markdown(results, title)
        md_path = self.out / f"eval{tag}.md"
        md_path.write_text(report + "\n")
        step = int(self.checkpoint.get("global_step", 0))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.out))
        for section, result in sections.items():
            for name, value in scalars(result, f"eval/{section}"):
                writer.add_scalar(name, value, step)
        for name, fig in self.figures.items():  # eval/confusion/probe, eval/recall/zeroshot
            fig.savefig(self.out / f"{name}{tag}.png", dpi=110)
            writer.add_figure(f"eval/{name.replace('_', '/', 1)}{tag}", fig, step)
        for name, picture in self.pictures.items():  # eval/retrieval/examples
            picture.save(self.out / f"{name}{tag}.png")
            tb_tag = f"eval/{name.replace('_', '/', 1)}{tag}"
            writer.add_image(tb_tag, np.asarray(picture), step, dataformats="HWC")
        writer.close()
        self.write_projector(tag)
        print(report)
        print(f"wrote {json_path}, {md_path}, TensorBoard scalars in {self.out}")


def run_evaluate(parser, cfg) -> dict[str, dict]:
    evaluation = Evaluation(parser, cfg)
    results = evaluation.run()
    evaluation.write(results)
    return results
