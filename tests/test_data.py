"""Data layer: text draws, transforms, samplers under DDP, the DataModule end to end."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from fundus_lit.data import DataError, FundusDataModule, FundusRecord, SyntheticSource
from fundus_lit.data.samplers import EpochSampler
from fundus_lit.data.text import TemplateTextBuilder
from fundus_lit.data.transforms import ImagePipeline, fov_bbox, pad_resize
from tests.conftest import MINILM


def test_template_prompt_draws_category_and_attribute():
    record = FundusRecord("a/b.png", "a", ("glaucoma", "drusen"), ("noisy",))
    seen = {TemplateTextBuilder().build(record, random.Random(i)) for i in range(40)}
    assert seen == {
        ("A noisy fundus photograph of glaucoma", "glaucoma"),
        ("A noisy fundus photograph of drusen", "drusen"),
    }
    empty = TemplateTextBuilder().build(FundusRecord("a/b.png", "a"), random.Random(0))
    assert empty == ("A fundus photograph of", "")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        TemplateTextBuilder("a photo")


def test_pad_resize_keeps_aspect_and_pads_with_black():
    img = Image.new("RGB", (200, 100), (200, 100, 50))
    out = np.asarray(pad_resize(img, 64))
    assert out.shape == (64, 64, 3)
    assert out[0, 0].tolist() == [0, 0, 0] and out[32, 32].tolist() == [200, 100, 50]
    assert (out[:, :, 0] > 0).sum(0).max() == 32  # 200x100 -> 64x32 band


def test_fov_crop_finds_the_aperture():
    canvas = Image.new("RGB", (300, 200))
    canvas.paste(Image.new("RGB", (100, 100), (180, 80, 40)), (150, 50))
    left, top, right, bottom = fov_bbox(canvas)
    assert abs(left - 150) <= 2 and abs(top - 50) <= 2
    assert abs(right - 250) <= 2 and abs(bottom - 150) <= 2
    tensor = ImagePipeline(32, crop_fov=True)(canvas)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 32, 32)
    assert (tensor[0] > 100).float().mean() > 0.95  # the retina fills the frame


def test_epoch_sampler_gives_each_rank_a_distinct_reproducible_share(monkeypatch):
    import fundus_lit.data.samplers as samplers

    shares = []
    for rank in range(2):
        monkeypatch.setattr(samplers, "world", lambda rank=rank: (rank, 2))
        sampler = EpochSampler(10, seed=3)
        sampler.set_epoch(1)
        shares.append(list(sampler))
    a, b = ([i for i, *_ in share] for share in shares)
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert all(epoch == 1 for share in shares for _, epoch, _ in share)
    positions = sorted(position for share in shares for *_, position in share)
    assert positions == list(range(10))  # rank r holds positions r, r + 2, ... of one stream
    monkeypatch.setattr(samplers, "world", lambda: (0, 2))
    again = EpochSampler(10, seed=3)
    again.set_epoch(1)
    assert [i for i, *_ in again] == a
    again.set_epoch(2)
    assert [i for i, *_ in again] != a


def make_dm(**kwargs):
    defaults = dict(
        train=[SyntheticSource(n=40, size=96, seed=1)],
        image_size=64,
        batch_size=8,
        num_workers=0,
        pin_memory=False,
        tokenizer=MINILM,
        max_length=24,
    )
    return FundusDataModule(**(defaults | kwargs))


def test_datamodule_split_batches_and_reproducible_text():
    dm = make_dm(val_fraction=0.25)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 30 and len(dm.splits["val"]) == 10
    train_keys = {r.image for _, r in dm.splits["train"]}
    assert not train_keys & {r.image for _, r in dm.splits["val"]}
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape == (8, 3, 64, 64) and batch.images.dtype == torch.uint8
    assert batch.input_ids.shape[0] == 8 and batch.input_ids.shape[1] <= 24
    assert all(c in t for c, t in zip(batch.categories, batch.texts))
    ds = dm.dataset("train")
    assert ds[(3, 5)].text == ds[(3, 5)].text
    texts = {ds[(3, e)].text for e in range(30)}
    record = ds.items[3][1]
    assert len(texts) == len(record.categories) * max(1, len(record.attributes))
    assert torch.equal(dm.dataset("val")[0].image, dm.dataset("val")[0].image)  # no augmentation


def test_datamodule_rejects_bad_settings():
    with pytest.raises(DataError, match="at least one source"):
        make_dm(train=[])
    with pytest.raises(DataError, match="fit needs data.train"):
        make_dm(train=None, test=[SyntheticSource(n=4)]).setup("fit")
    dm = make_dm(batch_size=64)
    dm.setup("fit")
    with pytest.raises(DataError, match="fewer than one batch"):
        dm.train_dataloader()
    with pytest.raises(DataError, match="n > 0"):
        make_dm(train=[SyntheticSource(n=0)]).setup("fit")


def test_synthetic_source_caches_drawn_images_but_not_in_pickles():
    import pickle

    source = SyntheticSource(n=3, size=48, seed=4)
    record = source.load()[1]
    first = source.open_image(record)
    assert source.open_image(record) is first  # drawn once per worker
    assert pickle.loads(pickle.dumps(source))._images == {}
    uncached = SyntheticSource(n=3, size=48, seed=4, cache=False)
    assert np.array_equal(np.asarray(uncached.open_image(record)), np.asarray(first))
    assert uncached._images == {}
