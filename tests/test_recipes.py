"""Every recipe YAML is a test: parsed with --print_config and smoke-run on synthetic data with the
tiny overlay. Recipes are discovered, so a new recipe is covered without a new test."""

from pathlib import Path

import pytest
import yaml

from fundus_lit.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "overlays" / "tiny.yaml")
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "overlays" not in p.parts)


def test_recipes_exist():
    assert any(p.name == "clip.yaml" for p in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_prints_config_alone_and_with_overlay(recipe, capsys):
    for extra in ([], ["--config", TINY]):
        with pytest.raises(SystemExit) as stop:
            cli_main(["fit", "--config", str(recipe), *extra, "--print_config"])
        assert stop.value.code in (0, None)
        config = yaml.safe_load(capsys.readouterr().out)
        assert config["model"]["class_path"] and config["data"]["class_path"]
        assert config["model"]["init_args"]["objectives"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_smoke_runs_on_synthetic_data(recipe, tmp_path):
    cli = cli_main(
        [
            "fit",
            "--config",
            str(recipe),
            "--config",
            TINY,
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
        ]
    )
    assert cli.trainer.state.finished
    logged = cli.trainer.callback_metrics
    assert "train/loss" in logged and bool(logged["train/loss"].isfinite())
