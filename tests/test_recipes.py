"""Every recipe YAML is a test: parsed with --print_config and smoke-run on synthetic data with the
tiny overlay. Recipes are discovered, so a new recipe is covered without a new test. Every recipe
runs with one --config: a delta names its base with a top-level ``base:`` key and declares what it
needs with the tiny overlay (``overlays: {tiny: ...}``), both read by fundus_lit.core.compose."""

from pathlib import Path

import pytest
import yaml

from fundus_lit.cli import cli_main
from fundus_lit.commands.evaluate import build_parser as evaluate_parser
from fundus_lit.core import compose

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "overlays" / "tiny.yaml")
RECIPES = compose.discover(ROOT / "recipes")


def configs(recipe: Path) -> list[str]:
    """The --config arguments that run a recipe: the recipe alone."""
    return ["--config", str(recipe)]


def tiny(recipe: Path) -> list[str]:
    """The tiny overlay; what a recipe needs on top of it, or instead of it, is in the recipe."""
    return ["--config", TINY]


def text_only(recipe: Path) -> bool:
    return compose.resolve(recipe).config["model"]["class_path"] == "fundus_lit.TextPretrainModule"


def test_recipes_exist():
    names = {str(p.relative_to(ROOT)) for p in RECIPES}
    assert {
        "recipes/clip.yaml",
        "recipes/flair.yaml",
        "recipes/ablations/flair_naive.yaml",
    } <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_prints_config_alone_and_with_overlay(recipe, capsys):
    for extra in ([], tiny(recipe)):
        with pytest.raises(SystemExit) as stop:
            cli_main(["fit", *configs(recipe), *extra, "--print_config"])
        assert stop.value.code in (0, None)
        config = yaml.safe_load(capsys.readouterr().out)
        assert config["model"]["class_path"] and config["data"]["class_path"]
        if config["model"]["class_path"] == "fundus_lit.PretrainModule":
            assert config["model"]["init_args"]["objectives"]


# Scale overlays and callback stacks go on any recipe; the tiny overlays are exercised with every
# recipe by the smoke test below.
OVERLAYS = [ROOT / "recipes" / "overlays" / n for n in ("ddp.yaml", "fsdp.yaml", "speed.yaml")]
OVERLAYS += sorted((ROOT / "callbacks").glob("*.yaml"))


def applies(overlay: Path, recipe: Path) -> bool:
    """Overlays that set the image tower or add evaluation callbacks are for dual-encoder
    recipes; text pretraining (no image tower) takes the trainer-level ones."""
    touches = yaml.safe_load(overlay.read_text()) or {}
    model = (touches.get("model") or {}).get("init_args") or {}
    image_keys = "vision" in model or "callbacks+" in touches.get("trainer", {})
    return not (image_keys and text_only(recipe))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_overlay_parses_with_every_recipe(overlay, capsys):
    parsed = 0
    for recipe in RECIPES:
        if not applies(overlay, recipe):
            continue
        with pytest.raises(SystemExit) as stop:
            cli_main(["fit", *configs(recipe), "--config", str(overlay), "--print_config"])
        assert stop.value.code in (0, None), recipe
        config = yaml.safe_load(capsys.readouterr().out)
        assert config["trainer"] and config["model"]["class_path"], recipe
        parsed += 1
    assert parsed >= len(RECIPES) // 2


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_smoke_runs_on_synthetic_data(recipe, tmp_path):
    cli = cli_main(
        [
            "fit",
            *configs(recipe),
            *tiny(recipe),
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
        ]
    )
    assert cli.trainer.state.finished
    logged = cli.trainer.callback_metrics
    assert "train/loss" in logged and bool(logged["train/loss"].isfinite())


@pytest.mark.parametrize(
    "config", sorted((ROOT / "recipes" / "eval").glob("*.yaml")), ids=lambda p: p.name
)
def test_evaluation_configs_parse_and_instantiate(config):
    parser = evaluate_parser()
    cfg = parser.parse_args([f"--config={config}", "--ckpt=unused.ckpt"])
    init = parser.instantiate_classes(cfg)
    assert init.data.sources["test"]
    assert init.tasks == "segmentation" or len(init.classes) >= 6


MAIN_RECIPES = [p for p in RECIPES if "ablations" not in p.parts]


@pytest.mark.parametrize("recipe", MAIN_RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_main_recipe_resumes_from_its_last_checkpoint(recipe, tmp_path):
    """Every module and data module a recipe uses survives its own checkpoint: state that a
    weights-only load refuses, lazily sized buffers, extra state, the loader's position."""
    common = [
        "fit",
        *configs(recipe),
        *tiny(recipe),
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false",
        "--step_checkpoint.every_n_train_steps=1",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
    ]
    if not text_only(recipe):  # an image model: the smallest one
        common += ["--model.init_args.vision.name=test_resnet", "--data.init_args.image_size=64"]
    first = cli_main([*common, "--trainer.max_epochs=1"])
    assert first.trainer.global_step == 2
    resumed = cli_main([*common, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert resumed.trainer.state.finished
    assert resumed.trainer.global_step == 4  # two more steps, not four from scratch
    assert len(list((tmp_path / "runs").glob("*/version_*"))) == 1  # one run folder
