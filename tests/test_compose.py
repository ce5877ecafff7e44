"""Recipe composition (issue 17): ``base:`` chains, named objectives, overlay needs, the resolved
config round trip, and configuration errors in one or two lines. Cheap: most tests only resolve
YAML; the CLI ones stop at --print_config or at the parse error, one fits two steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from fundus_lit.cli import main
from fundus_lit.commands.recipes import recipe_rows, render
from fundus_lit.core import compose

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TINY = RECIPES / "overlays" / "tiny.yaml"


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def objectives(config: dict) -> list:
    return config["model"]["init_args"]["objectives"]


def test_base_paths_are_relative_to_the_naming_file_lists_apply_in_order_and_nest(tmp_path):
    write(tmp_path / "a.yaml", {"x": 1, "y": {"p": 1, "q": 1}, "l": [1, 2]})
    write(tmp_path / "b.yaml", {"y": {"q": 2}, "z": 2})
    write(tmp_path / "sub" / "c.yaml", {"base": ["../a.yaml", "../b.yaml"], "x": 3, "l": [9]})
    write(tmp_path / "sub" / "deeper" / "d.yaml", {"base": "../c.yaml", "description": "d"})
    got = compose.resolve(tmp_path / "sub" / "deeper" / "d.yaml")
    assert got.config == {"x": 3, "y": {"p": 1, "q": 2}, "l": [9], "z": 2}  # lists replace
    assert got.description == "d" and got.bases == [(tmp_path / "sub" / "c.yaml").resolve()]
    assert got.source_of("y.q").endswith("b.yaml") and got.source_of("x").endswith("c.yaml")


def test_plus_appends_to_the_base_list_and_stays_plus_with_nothing_to_append_to(tmp_path):
    write(tmp_path / "a.yaml", {"trainer": {"callbacks": [1]}})
    write(tmp_path / "b.yaml", {"base": "a.yaml", "trainer": {"callbacks+": [2]}})
    write(tmp_path / "c.yaml", {"trainer": {"callbacks+": [3]}})
    assert compose.resolve(tmp_path / "b.yaml").config == {"trainer": {"callbacks": [1, 2]}}
    stacked = compose.compose([tmp_path / "c.yaml", tmp_path / "c.yaml", tmp_path / "b.yaml"])
    assert stacked.config == {"trainer": {"callbacks": [1, 2]}}  # a whole list replaces
    two = compose.compose(
        [tmp_path / "c.yaml", write(tmp_path / "d.yaml", {"trainer": {"callbacks+": [4]}})]
    )
    assert two.config == {"trainer": {"callbacks+": [3, 4]}}


@pytest.mark.parametrize("kind", ["missing", "cycle"])
def test_missing_base_and_cycle_exit_2_naming_the_file(tmp_path, capsys, kind):
    if kind == "missing":
        recipe = write(tmp_path / "r.yaml", {"base": "nope.yaml"})
        expected = [str(tmp_path / "r.yaml"), "nope.yaml", "does not exist"]
    else:
        write(tmp_path / "a.yaml", {"base": "r.yaml"})
        recipe = write(tmp_path / "r.yaml", {"base": "a.yaml"})
        expected = [str(tmp_path / "a.yaml"), "base cycle", "r.yaml -> ", "a.yaml -> "]
    with pytest.raises(SystemExit) as stop:
        main(["fit", f"--config={recipe}", "--print_config"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) <= 2, err
    assert all(e in err for e in expected), err


def test_an_ablation_names_one_field_and_follows_its_base(tmp_path):
    copy = tmp_path / "recipes"
    shutil.copytree(RECIPES, copy, ignore=shutil.ignore_patterns("eval"))
    ablation = copy / "ablations" / "g2d_q075.yaml"
    assert "class_path" not in ablation.read_text()  # the delta names only what it changes
    seg = objectives(compose.resolve(ablation).config)[1]["init_args"]
    assert seg["quantile"] == 0.75 and seg["fov"] is True
    base = copy / "g2d.yaml"  # edit the base: the ablation sees it
    base.write_text(base.read_text().replace("image_every: 500", "image_every: 7"))
    seg = objectives(compose.resolve(ablation).config)[1]["init_args"]
    assert seg == {
        "weight": 1.0,
        "preset": "paper",
        "fov": True,
        "image_every": 7,
        "quantile": 0.75,
    }


def test_objectives_are_removed_by_null_and_added_with_a_class_path():
    removed = compose.resolve(RECIPES / "ablations" / "keepfit_v2_no_gen.yaml")
    assert removed.objective_names == ["flair", "expert_clip"]
    assert [o["class_path"].rsplit(".", 1)[1] for o in objectives(removed.config)] == [
        "FLAIRObjective",
        "CLIPObjective",
    ]
    added = compose.resolve(RECIPES / "g2d.yaml")  # clip from the base + pseudo_seg
    assert added.objective_names == ["clip", "pseudo_seg"]


def test_unknown_objective_name_exits_2_naming_file_key_and_known_names(tmp_path, capsys):
    recipe = write(
        tmp_path / "r.yaml",
        {
            "base": str(RECIPES / "g2d.yaml"),
            "model": {"init_args": {"objectives": {"pseudoseg": {"init_args": {"quantile": 0.7}}}}},
        },
    )
    with pytest.raises(SystemExit) as stop:
        main(["fit", f"--config={recipe}", "--print_config"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) <= 2, err
    assert str(recipe) in err and "model.init_args.objectives.pseudoseg" in err
    assert "known: clip, pseudo_seg" in err and "did you mean pseudo_seg" in err


def test_tiny_needs_are_declared_by_the_recipe():
    files = [
        p.name
        for p in compose.compose([RECIPES / "ablations" / "keepfit_v2_no_gen.yaml", TINY]).files
    ]
    assert files[-3:] == ["tiny.yaml", "tiny_expert.yaml", "tiny_no_stage0.yaml"]
    files = [p.name for p in compose.compose([RECIPES / "keepfit_v2_text.yaml", TINY]).files]
    assert files == ["keepfit_v2_text.yaml", "tiny_text.yaml"]
    # the old, spelled-out stacks still give the same config
    old = compose.compose(
        [
            RECIPES / "flair.yaml",
            RECIPES / "keepfit_v1.yaml",
            TINY,
            RECIPES / "overlays" / "tiny_expert.yaml",
        ]
    )
    assert old.config == compose.compose([RECIPES / "keepfit_v1.yaml", TINY]).config


def test_no_comment_language_is_left():
    for path in RECIPES.rglob("*.yaml"):
        head = path.read_text().splitlines()[:3]
        assert not any(
            line.startswith(("# base:", "# tiny:", "# tiny-instead:")) for line in head
        ), path


@pytest.mark.parametrize(
    ("args", "yaml_delta", "expected"),
    [
        (
            ["--model.init_args.optim.lrr", "1e-3"],
            None,
            [
                "command line",
                "model.init_args.optim.lrr",
                "unknown key",
                "model.init_args.optim.lr",
            ],
        ),
        (
            ["--model.init_args.embed_dim=abc"],
            None,
            ["command line", "model.init_args.embed_dim", "expected int, got abc"],
        ),
        (
            [],
            {"model": {"init_args": {"embed_dim": "abc"}}},
            ["r.yaml", "model.init_args.embed_dim", "expected int, got abc"],
        ),
        (
            [],
            {"model": {"init_args": {"objectives": {"pseudo_seg": {"init_args": {"quantil": 1}}}}}},
            [
                "r.yaml",
                "model.init_args.objectives.pseudo_seg.init_args.quantil",
                "unknown key",
                "model.init_args.objectives.pseudo_seg.init_args.quantile",
            ],
        ),
        (
            [],
            {"data": {"init_args": {"batch_sise": 3}}},
            ["r.yaml", "data.init_args.batch_sise", "data.init_args.batch_size"],
        ),
        (
            ["--trainer.max_epochz=3"],
            None,
            ["command line", "trainer.max_epochz", "trainer.max_epochs"],
        ),
    ],
    ids=[
        "cli-nested-key",
        "cli-type",
        "yaml-type",
        "yaml-objective-key",
        "yaml-data-key",
        "cli-trainer",
    ],
)
def test_config_errors_exit_2_in_one_or_two_lines(tmp_path, capsys, args, yaml_delta, expected):
    recipe = write(tmp_path / "r.yaml", {"base": str(RECIPES / "g2d.yaml"), **(yaml_delta or {})})
    with pytest.raises(SystemExit) as stop:
        main(["fit", f"--config={recipe}", *args, "--print_config"])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert len(err.strip().splitlines()) <= 2, err
    assert all(e in err for e in expected), err


def test_saved_config_alone_reproduces_the_resolved_stack(tmp_path, capsys):
    keys = [
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.vision.name=test_resnet",
        "--data.init_args.image_size=64",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
    ]
    stack = ["--config", str(RECIPES / "ablations" / "g2d_q075.yaml"), "--config", str(TINY)]
    with pytest.raises(SystemExit):
        main(["fit", *stack, *keys, "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    main(["fit", *stack, *keys])
    saved = next((tmp_path / "runs").rglob("config.yaml"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", f"--config={saved}", "--print_config"])
    again = yaml.safe_load(capsys.readouterr().out)
    # the run records the weights-only default it applied (None means True, see cli.py)
    assert again.pop("weights_only") is True and resolved.pop("weights_only") in (None, True)
    assert again == resolved


def test_recipes_command_lists_every_recipe_and_matches_the_readme(capsys):
    main(["recipes"])
    out = capsys.readouterr().out
    rows = recipe_rows(RECIPES)
    assert len(rows) == len(compose.discover(RECIPES)) >= 18
    for row in rows:
        assert row["recipe"] in out and row["description"] in out and row["description"]
    g2d = next(r for r in rows if r["recipe"] == "recipes/ablations/g2d_q075.yaml")
    assert g2d["base"] == "recipes/g2d.yaml" and g2d["objectives"] == "clip, pseudo_seg"
    readme = (ROOT / "README.md").read_text()
    assert render(rows, "markdown") in readme, "regenerate: fundus-lit recipes --format markdown"


def test_an_overlay_file_or_a_flag_changes_an_objective_of_the_recipe_before_it(tmp_path, capsys):
    tune = {
        "model": {"init_args": {"objectives": {"pseudo_seg": {"init_args": {"quantile": 0.7}}}}}
    }
    overlay = write(tmp_path / "tune.yaml", tune)
    stacked = compose.compose([RECIPES / "g2d.yaml", overlay])
    assert objectives(stacked.config)[1]["init_args"]["quantile"] == 0.7
    assert stacked.source_of("model.init_args.objectives[1].init_args.quantile") == str(overlay)
    with pytest.raises(compose.ConfigError, match=r"tune.yaml: .*pseudo_seg.*known: clip"):
        compose.compose([RECIPES / "clip.yaml", overlay])  # nothing to change: the file is named
    flag = "--model.init_args.objectives.pseudo_seg.init_args"
    argv = ["fit", f"--config={RECIPES / 'g2d.yaml'}", f"{flag}.image_every=20", f"{flag}.fov"]
    resolved = yaml.safe_load(compose.resolve_cli_args([*argv, "false"])[1].split("=", 1)[1])
    seg = objectives(resolved)[1]["init_args"]
    assert seg["image_every"] == 20 and seg["fov"] is False
    removed = compose.resolve_cli_args(["fit", argv[1], "--model.init_args.objectives.clip=null"])
    assert "CLIPObjective" not in removed[1]
    with pytest.raises(SystemExit) as stop:
        main(["fit", f"--config={RECIPES / 'clip.yaml'}", f"{flag}.image_every=20"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "the command line" in err and "known: clip" in err, err
