"""``fundus-lit ablate``: statistics against hand computations, every committed study file parses,
and a 2-cell x 2-seed study of real (tiny) fit + evaluate runs survives an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fundus_lit.core.errors import ConfigError
from fundus_lit.study import load_study
from fundus_lit.study import runner as study_runner
from fundus_lit.study.stats import (
    balanced_accuracy,
    paired_difference,
    paired_difference_per_image,
    spread,
)

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "recipes" / "studies").glob("*.yaml"))


def test_spread_is_mean_and_sample_std():
    s = spread([0.5, 0.6, 0.7])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.n == 3
    assert spread([0.4]).std == 0.0


def test_seed_bootstrap_of_two_paired_differences():
    # diffs 0.1 and 0.3: resampled means are 0.1, 0.2, 0.3 with probabilities 1/4, 1/2, 1/4, so
    # the 2.5th and 97.5th percentiles are the extremes
    d = paired_difference([0.6, 0.8], [0.5, 0.5], n_boot=4000)
    assert d.mean == pytest.approx(0.2)
    assert (d.low, d.high) == (pytest.approx(0.1), pytest.approx(0.3))
    assert not d.per_image and d.seeds == 2


def test_balanced_accuracy_by_hand():
    targets = np.array([0, 0, 0, 1])
    # class 0: 2 of 3 right, class 1: right -> (2/3 + 1) / 2
    assert balanced_accuracy(targets, np.array([0, 0, 1, 1])) == pytest.approx(5 / 6)
    rows = balanced_accuracy(targets, np.array([[0, 0, 1, 1], [1, 1, 1, 1]]))
    assert rows.tolist() == pytest.approx([5 / 6, 0.5])


def test_image_bootstrap_is_exact_when_every_draw_agrees():
    targets = np.array([0, 1, 2, 0, 1, 2])
    right = np.tile(targets, (3, 1))
    wrong = (right + 1) % 3
    d = paired_difference_per_image(targets, right, wrong, n_boot=200)
    assert (d.mean, d.low, d.high) == (1.0, 1.0, 1.0) and d.per_image
    with pytest.raises(ValueError, match="same images"):
        paired_difference_per_image(targets, right[:, :4], wrong, n_boot=10)


def test_image_bootstrap_interval_holds_the_point_and_widens_with_noise():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 3, 300)
    base = np.where(rng.random((3, 300)) < 0.5, targets, (targets + 1) % 3)
    cell = np.where(rng.random((3, 300)) < 0.7, targets, (targets + 1) % 3)
    d = paired_difference_per_image(targets, cell, base, n_boot=500)
    assert d.low < d.mean < d.high and d.low > 0  # 0.7 vs 0.5 accuracy is clearly better
    assert 0.1 < d.mean < 0.3


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_study_file_parses_at_both_scales(path):
    study = load_study(path)
    assert {"bench", "paper"} <= set(study.scales), "a study documents both scales"
    assert study.baseline in {c.name for c in study.cells} and len(study.cells) >= 2
    assert study.metrics and study.evaluations and study.description


def test_the_four_claims_studies_exist():
    assert {p.stem for p in STUDIES} >= {
        "flair_knowledge",
        "vilref_wsc",
        "g2d_dense",
        "keepfit_expert",
    }


def test_a_bad_study_names_the_key(tmp_path):
    recipe = ROOT / "recipes" / "clip.yaml"
    study = {
        "baseline": "nope",
        "cells": [{"name": "clip", "recipe": str(recipe)}],
        "evaluations": [{"name": "main", "config": str(recipe)}],
        "metrics": [{"key": "zeroshot_main/aca"}],
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="baseline 'nope' is not a cell"):
        load_study(path)
    study["baseline"] = "clip"
    study["metrics"] = [{"key": "zeroshot/aca"}]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"metrics\[0\].*names no evaluation"):
        load_study(path)
    study["cells"][0]["recipe"] = "missing.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"cells\[0\]\.recipe.*missing.yaml"):
        load_study(path)


def _tiny_study(tmp_path: Path) -> Path:
    source = {"class_path": "fundus_lit.data.SyntheticSource"}
    eval_cfg = {
        "data": {
            "class_path": "fundus_lit.FundusDataModule",
            "init_args": {
                "test": [source | {"init_args": {"n": 24, "size": 64, "offset": 2000000}}],
                "num_workers": 0,
                "batch_size": 8,
            },
        },
        "classes": ["normal", "glaucoma", "proliferative diabetic retinopathy"],
        "tasks": "zeroshot",
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(eval_cfg))
    recipes = ROOT / "recipes"
    study = {
        "study": "tiny_pair",
        "description": "Two recipes, two seeds, a few steps: the runner's test.",
        "baseline": "clip",
        "seeds": [0, 1],
        "cells": [
            {"name": "clip", "recipe": str(recipes / "clip.yaml")},
            {"name": "flair", "recipe": str(recipes / "flair.yaml")},
        ],
        "scales": {
            "bench": {
                "overlays": [str(recipes / "overlays" / "tiny.yaml")],
                "args": [
                    "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=2",
                    "--trainer.limit_val_batches=1",
                    "--data.init_args.batch_size=4",
                    "--data.init_args.num_workers=0",
                    "--data.init_args.image_size=64",
                    "--model.init_args.vision.name=test_resnet",
                ],
            },
            "paper": {},
        },
        "evaluations": [{"name": "main", "config": "eval.yaml"}],
        "metrics": [{"key": "zeroshot_main/aca", "label": "zero-shot ACA"}],
    }
    path = tmp_path / "tiny_pair.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


class Killed(Exception):
    """Stands in for the study being killed (a real KeyboardInterrupt would stop pytest too)."""


def test_study_runs_resumes_after_an_interruption_and_reports(tmp_path, monkeypatch, capsys):
    from fundus_lit.commands import ablate

    study, out = _tiny_study(tmp_path), tmp_path / "out"
    calls: list[str] = []
    real = study_runner._execute

    kill_at = [4]  # the first invocation is killed before the second run's evaluation

    def counting(cmd, run, what):
        calls.append(f"{what} {run.label}")
        if len(calls) == kill_at[0]:
            raise Killed
        real(cmd, run, what)

    monkeypatch.setattr(study_runner, "_execute", counting)
    with pytest.raises(Killed):
        ablate.run(["--study", str(study), "--out", str(out)])
    assert calls == [
        "fit clip seed 0",
        "evaluate main clip seed 0",
        "fit flair seed 0",
        "evaluate main flair seed 0",
    ]
    calls.clear()
    kill_at[0] = 0
    ablate.run(["--study", str(study), "--out", str(out)])
    # finished work is skipped; the partial run gets only its missing evaluation
    assert calls == [
        "evaluate main flair seed 0",
        "fit clip seed 1",
        "evaluate main clip seed 1",
        "fit flair seed 1",
        "evaluate main flair seed 1",
    ]
    printed = capsys.readouterr().out
    assert "[4/4 runs done]" in printed and "about" in printed  # progress with a time estimate
    report = json.loads((out / "study.json").read_text())
    cells = report["metrics"]["zeroshot_main/aca"]["cells"]
    for name in ("clip", "flair"):
        assert cells[name]["seeds"] == [0, 1] and len(cells[name]["values"]) == 2
        assert cells[name]["mean"] == pytest.approx(np.mean(cells[name]["values"]))
    (diff,) = report["metrics"]["zeroshot_main/aca"]["differences"]
    assert (diff["cell"], diff["reference"]) == ("flair", "clip")
    assert diff["resampled"] == "seeds and test images" and diff["low"] <= diff["high"]
    assert "inconsistent_predictions" not in report
    assert report["commit"] and report["machine"]["cores"] >= 1 and report["runs_done"] == 4
    assert "| `flair` − `clip` |" in (out / "study.md").read_text()
    picture = np.asarray(Image.open(out / "study_zeroshot_main_aca.png").convert("L"))
    assert picture.shape[0] > 100 and picture.std() > 5  # drawn, not blank
    assert len(list((out / "hparams").glob("*/**/events.out.tfevents.*"))) >= 4
    for seed in (0, 1):  # each run is an ordinary run directory with its saved config
        run_dir = out / "flair" / f"seed{seed}" / "version_0"
        assert (run_dir / "config.yaml").exists() and (run_dir / "eval.json").exists()
    calls.clear()
    ablate.run(["--study", str(study), "--out", str(out)])  # all done: nothing reruns
    assert calls == []


def test_print_commands_shows_the_ordinary_cli(tmp_path, capsys):
    from fundus_lit.commands import ablate

    ablate.run(["--study", str(_tiny_study(tmp_path)), "--print_commands", "true", "--seeds", "1"])
    printed = capsys.readouterr().out
    assert printed.count(" fit ") == 2 and "--seed_everything=0" in printed
    assert "--ckpt_path=last" in printed and " evaluate " in printed


def test_a_cell_that_does_not_parse_fails_before_anything_trains(tmp_path):
    from fundus_lit.commands import ablate

    path = _tiny_study(tmp_path)
    study = yaml.safe_load(path.read_text())
    study["cells"][1]["args"] = ["--model.init_args.optim.lrr=1e-3"]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=r"cell 'flair' does not parse(.|\n)*lrr"):
        ablate.run(["--study", str(path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "clip").exists()  # nothing ran
