"""Configuration errors exit with status 2 and name the key at fault, in a few lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from fundus_lit.cli import main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def fit_fails(tmp_path, capsys, *args: str, recipe: str = "clip.yaml") -> str:
    command = [
        "fit",
        f"--config={RECIPES / recipe}",
        f"--config={RECIPES / 'overlays' / 'tiny.yaml'}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.fast_dev_run=1",
        *args,
    ]
    with pytest.raises(SystemExit) as stop:
        main(command)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err[-2000:]
    return err


@pytest.mark.parametrize(
    ("args", "recipe", "expected"),
    [
        # a value the class refuses: the full key and the class's reason
        (
            ["--model.init_args.max_nonfinite_steps=-1"],
            "clip.yaml",
            "error: model.init_args.max_nonfinite_steps: max_nonfinite_steps must be >= 0",
        ),
        (
            ["--model.init_args.grad_cache=-4"],
            "clip.yaml",
            "error: model.init_args.grad_cache: grad_cache is a chunk size",
        ),
        (
            ["--data.init_args.val_fraction=1.5"],
            "clip.yaml",
            "data.val_fraction must be in [0, 1), got 1.5",
        ),
        # the parser's own checks, in one line (issue 17.4): unknown option, wrong type
        (
            ["--model.init_args.embed_dimm=3"],
            "clip.yaml",
            "command line: model.init_args.embed_dimm: unknown key; nearest valid: "
            "model.init_args.embed_dim",
        ),
        (
            ["--model.init_args.embed_dim=abc"],
            "clip.yaml",
            "command line: model.init_args.embed_dim: expected int, got abc",
        ),
        (["--trainer.max_epochz=3"], "clip.yaml", "trainer.max_epochz"),
    ],
    ids=["refused-value", "refused-grad-cache", "refused-data-value", "unknown", "type", "trainer"],
)
def test_config_error_exits_2_naming_the_key(tmp_path, capsys, args, recipe, expected):
    err = fit_fails(tmp_path, capsys, *args, recipe=recipe)
    assert expected in err
    assert "Traceback" not in err
    # one line of usage, not the hundreds of options
    assert len(err.strip().splitlines()) < 25, err


def test_refused_objective_value_names_its_place_in_the_list(tmp_path, capsys):
    err = fit_fails(
        tmp_path,
        capsys,
        "--model.init_args.objectives=[{class_path: fundus_lit.objectives.WSCObjective, "
        "init_args: {queue_size: -1}}]",
        recipe="vilref.yaml",
    )
    assert "model.init_args.objectives[0].init_args.queue_size: queue_size must be >= 0" in err
