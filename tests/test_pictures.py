"""Pictures (issue 23): retrieval examples framed by relevance, G2D pseudo masks over the image
with the aperture boundary, zero-shot per-class recall. A fixed case checks where green and red
frames go; a short G2D fit and an evaluate check every picture they write, as PNG files and
as TensorBoard images read back."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from fundus_lit.cli import cli_main, main
from fundus_lit.core.overlay import CYAN, mask_overlay
from fundus_lit.data import SyntheticSource
from fundus_lit.eval.pictures import GREEN, RED, examples_picture, tile_box
from fundus_lit.eval.retrieval_tasks import case_retrieval, example_queries, pair_retrieval
from fundus_lit.objectives.g2d_functional import fov_mask

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def frame(picture: Image.Image, row: int, col: int, size: int = 128) -> tuple[int, int, int]:
    """Colour of the middle of a tile's left frame edge."""
    left, top, _, bottom = tile_box(row, col, size)
    return picture.convert("RGB").getpixel((left + 1, (top + bottom) // 2))


def not_blank(picture: Image.Image, min_size: tuple[int, int]) -> np.ndarray:
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    assert picture.size[0] >= min_size[0] and picture.size[1] >= min_size[1], picture.size
    assert pixels.std() > 10.0, "a blank picture"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "a picture of a few colours"
    return pixels


def fixed_case():
    """Six synthetic photographs with categories set here (a a b b c a) and embeddings whose
    rankings are known: row 0's nearest image is row 2 (b: red), then row 1 (a: green)."""
    source = SyntheticSource(n=6, size=64, seed=0)
    cats = [("a",), ("a",), ("b",), ("b",), ("c",), ("a", "b")]
    items = [(source, replace(r, categories=c)) for r, c in zip(source.load(), cats)]
    emb = torch.zeros(6, 6)
    emb[0, :3] = torch.tensor([1.0, 0.2, 0.8])
    emb[1, :2] = torch.tensor([1.0, 1.0])
    emb[2, 0] = 1.0
    emb[3, 3] = 1.0
    emb[4, 4] = 1.0
    emb[5, 5] = 1.0
    emb = F.normalize(emb, dim=-1)
    # texts: row 0 shares its text with row 4 (one gallery item, embedded as row 0's);
    # row 3's text is nearest row 0's image, then row 0's own
    texts = ["own", "t1", "t2", "t3", "own", "t5"]
    text_emb = emb.clone()
    text_emb[0] = F.normalize(emb[0] + 0.5 * emb[3], dim=0)
    text_emb[3] = emb[0]
    return items, cats, emb, texts, text_emb


def test_frames_follow_the_metrics_relevance_on_a_fixed_case():
    items, cats, emb, texts, text_emb = fixed_case()
    picture = examples_picture(items, emb, cats, queries=1, k=2, text_emb=text_emb, texts=texts)
    not_blank(picture, (5 * 128, 128))
    # query, i2i #1 row 2 (b), i2i #2 row 1 (a), i2t #1 t3 (not its own), i2t #2 its own text
    assert frame(picture, 0, 0) not in (GREEN, RED)
    assert [frame(picture, 0, c) for c in range(1, 5)] == [RED, GREEN, RED, GREEN]
    # the frames count what R@1 counts, query by query
    every = examples_picture(items, emb, cats, queries=6, k=1, text_emb=text_emb, texts=texts)
    first_image = [frame(every, r, 1) == GREEN for r in range(6) if cats[r] != ("c",)]
    case = case_retrieval(emb, cats, ks=[1], device="cpu")
    assert np.mean(first_image) == case["R@1"] and case["queries"] == len(first_image)
    first_text = [frame(every, r, 2) == GREEN for r in range(6)]
    assert np.mean(first_text) == pair_retrieval(emb, text_emb, texts, [1], ["i2t"])["i2t"]["R@1"]


def test_class_relevance_and_a_gallery():
    items, cats, emb, texts, _ = fixed_case()
    # row 5 (a, b) against rows 0-3 as a gallery: by `categories` rows 0-3 all share one,
    # by `class` (first category a) rows 2 and 3 do not
    gallery = items[:4]
    common = {"queries": 6, "k": 4, "gallery": gallery, "gallery_emb": emb[:4] + emb[5]}
    shared = examples_picture(items, emb, cats, **common)
    first = examples_picture(items, emb, cats, relevance="class", **common)
    assert [frame(shared, 5, c) for c in range(1, 5)] == [GREEN] * 4
    assert sorted(frame(first, 5, c) for c in range(1, 5)) == sorted([GREEN, GREEN, RED, RED])


def test_example_queries_are_spread_and_stable():
    assert example_queries(100, 4) == [0, 33, 66, 99]
    assert example_queries(3, 4) == [0, 1, 2] and example_queries(0, 4) == []
    assert example_queries(10, 0) == []


def test_pseudo_mask_overlay_outlines_the_aperture():
    side = 64
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 24**2).float()
    images = torch.stack([disc * 200, disc * 90, disc * 40]) * (0.8 + 0.2 * torch.rand(side, side))
    images = images.to(torch.uint8).unsqueeze(0)
    masks = torch.zeros(1, 1, side, side)
    masks[..., 28:36, 28:36] = 1.0
    logits = torch.full((1, 1, side, side), -10.0)
    out = mask_overlay(images, masks, logits, fov_mask(images))
    assert out.shape == (1, 3, side, 3 * side) and out.std() > 0
    cyan = torch.tensor(CYAN).view(3, 1)
    for panel in range(3):
        x = out[0, :, :, panel * side : (panel + 1) * side]
        assert torch.allclose(x[:, 32, 8:10].max(dim=1).values, cyan.squeeze(), atol=1e-6)
        assert not torch.allclose(x[:, 32, 32], cyan.squeeze())  # centre: no edge
        assert x[:, 2, 2].abs().sum() < 1e-3  # outside the aperture: black, no edge
    mask_panel = out[0, :, 32, side + 32]
    assert mask_panel[0] > 0.5 and mask_panel[0] > 2 * mask_panel[1]  # red over the mask


def tensorboard_images(folder: Path) -> dict[str, Image.Image]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pictures = {}
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent), size_guidance={"images": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            last = acc.Images(tag)[-1]
            pictures[tag] = Image.open(io.BytesIO(last.encoded_image_string))
    return pictures


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One G2D step at 64 px with its pseudo masks drawn, one validation batch of 8."""
    from conftest import tiny_fit_args

    root = tmp_path_factory.mktemp("pictures")
    recipe = root / "g2d_pictures.yaml"
    objectives = {"pseudo_seg": {"init_args": {"image_every": 1}}}
    delta = {"model": {"init_args": {"objectives": objectives}}}
    recipe.write_text(yaml.safe_dump({"base": str(RECIPES / "g2d.yaml"), **delta}))
    # the tiny overlay without its zero-shot callback, which a picture of it does not need
    tiny = yaml.safe_load((RECIPES / "overlays" / "tiny.yaml").read_text())
    callbacks = tiny["trainer"]["callbacks+"]
    tiny["trainer"]["callbacks+"] = [c for c in callbacks if "ZeroShot" not in c["class_path"]]
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    args = tiny_fit_args(root, [str(recipe), str(root / "tiny.yaml")], overlays=())
    args += ["--data.init_args.batch_size=8", "--trainer.limit_train_batches=1"]
    args += ["--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false"]
    cli = cli_main(["fit", *args])
    return root, Path(cli.trainer.checkpoint_callback.last_model_path), cli.trainer


def test_fit_logs_mask_overlays_and_retrieval_examples(fitted):
    root, _, trainer = fitted
    callback = next(c for c in trainer.callbacks if type(c).__name__ == "RetrievalEvaluation")
    images = tensorboard_images(root / "runs")
    assert {"pseudo_seg/overlay", "val/retrieval/examples"} <= set(images), sorted(images)
    overlay = not_blank(images["pseudo_seg/overlay"], (3 * 64, 64))
    width, height = images["pseudo_seg/overlay"].size  # 64 px inputs, three panels each
    assert height % 64 == 0 and width % (3 * 64) == 0
    assert (np.abs(overlay - np.array(CYAN) * 255).sum(axis=-1) < 3).any()  # the aperture edge
    examples = images["val/retrieval/examples"]
    assert examples.size == callback.picture.size
    # 4 of the 8 validation images, each with 5 images and up to 5 texts (reports repeat)
    not_blank(examples, (6 * 128, 4 * 128))
    for row in range(4):  # every hit framed, the query not
        assert frame(examples, row, 0) not in (GREEN, RED)
        columns = range(1, (examples.size[0] + 4) // 132)
        framed = [c for c in columns if frame(examples, row, c) in (GREEN, RED)]
        assert framed == list(range(1, len(framed) + 1)) and len(framed) >= 6


def test_evaluate_writes_recall_bars_and_retrieval_examples(fitted, tmp_path):
    _, ckpt, _ = fitted
    test = SyntheticSource(n=12, size=64, seed=0, offset=2_000_000)
    counts: dict[str, int] = {}
    for record in test.load():
        counts[record.categories[0]] = counts.get(record.categories[0], 0) + 1
    classes = sorted(counts, key=counts.get, reverse=True)[:3]
    source = {"class_path": "fundus_lit.data.SyntheticSource"}
    data = {
        "train": [source | {"init_args": {"n": 8, "size": 64, "offset": 3_000_000}}],
        "test": [source | {"init_args": {"n": 12, "size": 64, "offset": 2_000_000}}],
        "num_workers": 0,
        "batch_size": 12,
    }
    config = tmp_path / "eval.yaml"
    evaluation = {"class_path": "fundus_lit.FundusDataModule", "init_args": data}
    settings = {"image_queries": 3, "image_k": 3}
    config.write_text(
        yaml.safe_dump({"data": evaluation, "classes": classes, "retrieval": settings})
    )
    out = tmp_path / "out"
    main(
        ["evaluate", f"--ckpt={ckpt}", f"--config={config}", f"--out={out}"]
        + ["--tasks=zeroshot,retrieval"]
    )
    written = {p.name: Image.open(p) for p in out.glob("*.png")}
    assert {"confusion_zeroshot.png", "recall_zeroshot.png", "retrieval_examples.png"} <= set(
        written
    )
    for picture in written.values():
        not_blank(picture, (200, 200))
    examples = written["retrieval_examples.png"]
    assert examples.size[0] >= 7 * 128 and examples.size[1] >= 3 * 128
    for row in range(3):
        assert frame(examples, row, 0) not in (GREEN, RED)
        assert all(frame(examples, row, c) in (GREEN, RED) for c in range(1, 5))
    images = tensorboard_images(out)
    assert {"eval/confusion/zeroshot", "eval/recall/zeroshot", "eval/retrieval/examples"} <= set(
        images
    )
    assert images["eval/retrieval/examples"].size == examples.size
    for picture in images.values():
        not_blank(picture, (200, 200))
