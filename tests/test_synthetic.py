"""The synthetic fundus generator: determinism, label structure, masks and the FLAIR layout."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fundus_lit.synthetic import (
    CATEGORIES,
    Finding,
    FundusSynth,
    SynthSample,
    write_flair_dataset,
)

DR = {c for c in CATEGORIES if "diabetic retinopathy" in c}
LESION_CATEGORIES = DR | {"age related macular degeneration", "retinal vein occlusion"}


@pytest.fixture(scope="module")
def synth() -> FundusSynth:
    return FundusSynth(seed=3, size=64, sites=3)


def _first(synth: FundusSynth, wanted: str, single: bool = True) -> int:
    for i in range(2000):
        cats = synth.categories_of(i)
        if cats[0] == wanted and (len(cats) == 1 or not single):
            return i
    raise AssertionError(f"no {wanted!r} in 2000 indices")


def test_same_seed_and_index_give_identical_samples_in_any_order() -> None:
    a, b = FundusSynth(seed=7, size=64), FundusSynth(seed=7, size=64)
    forward = [a.sample(i, with_mask=True) for i in range(6)]
    backward = [b.sample(i, with_mask=True) for i in reversed(range(6))][::-1]
    for x, y in zip(forward, backward):
        assert x.image.tobytes() == y.image.tobytes()
        assert np.array_equal(x.lesion_mask, y.lesion_mask)
        assert (x.categories, x.attributes, x.findings, x.eye, x.site) == (
            y.categories,
            y.attributes,
            y.findings,
            y.eye,
            y.site,
        )
    assert a.sample(4).image.tobytes() == forward[4].image.tobytes()  # repeat call


def test_different_seeds_differ() -> None:
    x, y = FundusSynth(seed=0, size=64).sample(0), FundusSynth(seed=1, size=64).sample(0)
    assert x.image.tobytes() != y.image.tobytes()


def test_cheap_accessors_agree_with_sample(synth: FundusSynth) -> None:
    for i in range(12):
        s = synth.sample(i)
        assert isinstance(s, SynthSample) and s.index == i
        assert s.categories == synth.categories_of(i)
        assert s.site == synth.site_of(i)
        assert s.attributes == synth.attributes_of(i)


def test_image_looks_like_a_fundus(synth: FundusSynth) -> None:
    for i in range(8):
        img = synth.sample(i).image
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        for corner in (img[:4, :4], img[:4, -4:], img[-4:, :4], img[-4:, -4:]):
            assert corner.max() <= 10
    clean = [i for i in range(40) if synth.sample(i).attributes == ["clean"]][:8]
    centre = np.stack([synth.sample(i).image[24:40, 24:40] for i in clean]).reshape(-1, 3)
    r, g, b = centre.astype(float).mean(0)
    assert r > g > b


def test_label_structure_over_many_indices() -> None:
    synth = FundusSynth(seed=0, size=64, sites=2)
    seen: set[str] = set()
    n_two = 0
    for i in range(300):
        cats = synth.categories_of(i)
        assert 1 <= len(cats) <= 2 and len(set(cats)) == len(cats)
        assert set(cats) <= set(CATEGORIES)
        if len(cats) == 2:
            n_two += 1
            assert "normal" not in cats
            assert len(DR & set(cats)) <= 1
        seen.update(cats)
        assert synth.site_of(i) in ("synth_a", "synth_b")
    assert seen == set(CATEGORIES)
    assert n_two > 10
    for i in range(40):
        s = synth.sample(i)
        assert s.attributes in (["clean"], ["noisy"])
        assert s.eye in ("left", "right")
        assert all(isinstance(f, Finding) and f.count >= 1 for f in s.findings)
        assert (s.categories == ["normal"]) == (not s.findings)


def test_probabilities_are_respected() -> None:
    never = FundusSynth(seed=0, size=64, p_two_conditions=0.0, p_noisy=0.0)
    for i in range(100):
        assert len(never.categories_of(i)) == 1
        assert never.attributes_of(i) == ["clean"]


def test_disc_is_on_the_nasal_side() -> None:
    synth = FundusSynth(seed=0, size=128, p_noisy=0.0)
    for i in range(6):
        s = synth.sample(i)
        lum = s.image.astype(float).sum(2)
        right_half_brighter = lum[:, 64:].max() > lum[:, :64].max()
        assert right_half_brighter == (s.eye == "right")


def test_lesion_mask(synth: FundusSynth) -> None:
    normal = synth.sample(_first(synth, "normal"), with_mask=True)
    assert normal.lesion_mask is not None and not normal.lesion_mask.any()
    assert synth.sample(0).lesion_mask is None
    for cat in sorted(LESION_CATEGORIES):
        s = synth.sample(_first(synth, cat), with_mask=True)
        mask = s.lesion_mask
        assert mask is not None and mask.shape == (64, 64) and mask.dtype == bool
        assert 0 < mask.mean() < 0.10, (cat, mask.mean())


def test_findings_follow_categories(synth: FundusSynth) -> None:
    def kinds(cat: str) -> set[str]:
        return {f.kind for f in synth.sample(_first(synth, cat)).findings}

    assert kinds("mild non proliferative diabetic retinopathy") == {"microaneurysm"}
    assert {"haemorrhage", "hard_exudate"} <= kinds(
        "moderate non proliferative diabetic retinopathy"
    )
    assert "cotton_wool_spot" in kinds("severe non proliferative diabetic retinopathy")
    assert "new_vessels" in kinds("proliferative diabetic retinopathy")
    assert kinds("glaucoma") == {"enlarged_cup"}
    assert kinds("age related macular degeneration") == {"drusen"}
    assert kinds("retinal vein occlusion") == {"flame_haemorrhage"}
    assert kinds("pathologic myopia") == {"tessellation", "peripapillary_atrophy"}


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_write_flair_dataset(tmp_path: Path, image_format: str) -> None:
    paths = write_flair_dataset(tmp_path, n=12, size=48, seed=1, sites=2, image_format=image_format)
    assert [p.name for p in paths] == ["synth_a.csv", "synth_b.csv"]
    synth = FundusSynth(seed=1, size=48, sites=2)
    total = 0
    for path in paths:
        assert path.read_text().splitlines()[0] == ",image,atributes,categories"
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for k, row in enumerate(rows):
            assert row[""] == str(k)
            rel = Path(row["image"])
            assert not rel.is_absolute() and rel.parts[0] == path.stem
            assert rel.suffix == f".{image_format}"
            index = int(rel.stem)
            assert ast.literal_eval(row["categories"]) == synth.categories_of(index)
            assert ast.literal_eval(row["atributes"]) in (["clean"], ["noisy"])
            with Image.open(tmp_path / rel) as img:
                assert img.size == (48, 48) and img.mode == "RGB"
        total += len(rows)
    assert total == 12


def test_two_category_cells_are_quoted(tmp_path: Path) -> None:
    synth = FundusSynth(seed=0, size=32, sites=1)
    n = next(i for i in range(200) if len(synth.categories_of(i)) == 2) + 1
    (path,) = write_flair_dataset(tmp_path, n=n, size=32, seed=0, sites=1)
    last = path.read_text().splitlines()[-1]
    assert f'"{synth.categories_of(n - 1)!r}"' in last
