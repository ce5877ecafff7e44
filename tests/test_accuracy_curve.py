"""The time-to-accuracy curve: validation time is not training time, and the files say when the
target was first reached."""

import json
from types import SimpleNamespace

import torch

from fundus_lit import callbacks
from fundus_lit.callbacks import AccuracyCurve


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_curve_counts_training_seconds_only_and_reports_the_first_crossing(tmp_path, monkeypatch):
    import time

    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    curve = AccuracyCurve(target=0.7)
    trainer = SimpleNamespace(
        sanity_checking=True, global_step=0, callback_metrics={}, log_dir=None
    )
    curve.on_validation_start(trainer, None)  # the sanity check runs before training starts
    clock.now += 50.0
    curve.on_validation_end(trainer, None)
    trainer.sanity_checking = False
    curve.on_train_start(trainer, None)
    for step, value in ((10, 0.4), (20, 0.72), (30, 0.71)):
        clock.now += 30.0  # training
        trainer.global_step = step
        curve.on_validation_start(trainer, None)
        clock.now += 100.0  # validation: not counted
        trainer.callback_metrics = {"val/zeroshot/aca": torch.tensor(value)}
        curve.on_validation_end(trainer, None)
    clock.now += 5.0
    curve.on_train_end(trainer, None)
    assert [p["seconds"] for p in curve.points] == [30.0, 60.0, 90.0]
    assert curve.reached() == {"step": 20, "seconds": 60.0, "value": curve.points[1]["value"]}
    assert curve.summary()["train_seconds"] == 95.0

    trainer.log_dir = str(tmp_path)
    curve.on_fit_end(trainer, None)
    saved = json.loads((tmp_path / "accuracy_curve.json").read_text())
    assert saved["reached"]["step"] == 20 and len(saved["points"]) == 3
    assert (tmp_path / "accuracy_curve.png").stat().st_size > 0


def test_a_resumed_curve_continues_from_its_checkpointed_state(monkeypatch):
    import time

    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    first = AccuracyCurve()
    trainer = SimpleNamespace(
        sanity_checking=False, global_step=5, callback_metrics={}, log_dir=None
    )
    first.on_train_start(trainer, None)
    clock.now += 12.0
    trainer.callback_metrics = {"val/zeroshot/aca": 0.5}
    first.on_validation_start(trainer, None)
    first.on_validation_end(trainer, None)
    clock.now += 3.0
    state = first.state_dict()  # saved mid-training: the running seconds are included
    assert state["seconds"] == 15.0

    second = AccuracyCurve()
    second.load_state_dict(state)
    second.on_train_start(trainer, None)
    clock.now += 10.0
    trainer.global_step = 9
    second.on_validation_start(trainer, None)
    second.on_validation_end(trainer, None)
    assert [p["seconds"] for p in second.points] == [12.0, 25.0]
    assert callbacks.AccuracyCurve is AccuracyCurve


def test_demo_overlay_writes_its_curve_and_summary_reads_it(tmp_path, capsys):
    from fundus_lit.cli import cli_main, main
    from tests.conftest import tiny_fit_args

    args = tiny_fit_args(tmp_path, ["flair.yaml"], overlays=("tiny.yaml", "demo.yaml"))
    args = [a for a in args if not a.startswith("--trainer.max_epochs")]
    cli = cli_main(["fit", *args, "--trainer.max_epochs=2"])
    curve = next(cb for cb in cli.trainer.callbacks if isinstance(cb, AccuracyCurve))
    run = tmp_path / "runs" / "flair" / "version_0"
    saved = json.loads((run / "accuracy_curve.json").read_text())
    assert [p["step"] for p in saved["points"]] == [4]  # validated every 2nd epoch of 2 steps
    assert saved["points"] == curve.points and saved["train_seconds"] > 0
    # the clock ran on after validation (Lightning's trainer.training is False there)
    assert saved["train_seconds"] > saved["points"][0]["seconds"]
    assert (run / "accuracy_curve.png").is_file()
    assert "val/zeroshot/aca curve:" in capsys.readouterr().out
    main(["summary", str(run)])
    out = capsys.readouterr().out
    assert "val/zeroshot/aca >= 0.7" in out and str(run / "accuracy_curve.png") in out
