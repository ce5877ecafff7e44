"""The time-to-accuracy curve of a run: a validation metric against training seconds and steps."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class AccuracyCurve(L.Callback):
    """Records a validation metric against training seconds and steps: the time-to-accuracy
    curve, written as ``<name>.json`` and ``<name>.png`` into the run's log directory.

    Seconds are wall-clock of the training loop (data loading included) with validation and the
    sanity check taken out, so the curve does not depend on how often it is sampled. The state
    travels in checkpoints: a resumed run continues its curve.

    Args:
        monitor: Logged metric to record (default: the zero-shot ACA of
            :class:`ZeroShotEvaluation`, which must come before this callback).
        target: Value whose first crossing is reported (seconds and step); None = no target.
        name: File stem of the outputs.
    """

    def __init__(
        self,
        monitor: str = "val/zeroshot/aca",
        target: float | None = 0.7,
        name: str = "accuracy_curve",
    ) -> None:
        self.monitor, self.target, self.name = monitor, target, name
        self.points: list[dict[str, float]] = []
        self.seconds = 0.0  # training seconds before this process's fit (from a checkpoint)
        self._since: float | None = None
        self._fitting = False  # between on_train_start and on_train_end
        self.paths: dict[str, str] = {}

    def state_dict(self) -> dict:
        return {"points": self.points, "seconds": self._elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.points, self.seconds = list(state["points"]), float(state["seconds"])

    def _elapsed(self) -> float:
        import time

        return self.seconds + (time.perf_counter() - self._since if self._since else 0.0)

    def _pause(self) -> None:
        self.seconds, self._since = self._elapsed(), None

    def _resume(self) -> None:
        import time

        self._since = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._fitting = True
        self._resume()

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if self._since is not None:
            self._pause()

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            point = {"step": trainer.global_step, "seconds": round(self.seconds, 3)}
            self.points.append(point | {"value": float(value)})
        if self._fitting:  # trainer.training is False here: the stage is validation
            self._resume()

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._fitting = False
        if self._since is not None:
            self._pause()

    def reached(self) -> dict[str, float] | None:
        """The first recorded point at or above the target."""
        if self.target is None:
            return None
        return next((p for p in self.points if p["value"] >= self.target), None)

    def summary(self) -> dict:
        return {
            "monitor": self.monitor,
            "target": self.target,
            "reached": self.reached(),
            "train_seconds": round(self.seconds, 3),
            "points": self.points,
        }

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        import json
        from pathlib import Path

        from fundus_lit.eval.report import curve_figure

        if not self.points or trainer.log_dir is None:
            return
        out = Path(trainer.log_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, png_path = out / f"{self.name}.json", out / f"{self.name}.png"
        json_path.write_text(json.dumps(self.summary(), indent=2) + "\n")
        fig = curve_figure(self.points, self.monitor, self.target)
        fig.savefig(png_path, dpi=120)
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.paths = {"json": str(json_path), "png": str(png_path)}
        hit = self.reached()
        when = (
            f"{self.target:g} reached at step {hit['step']}, {hit['seconds']:.0f} s of training"
            if hit
            else f"{self.target:g} not reached (best {max(p['value'] for p in self.points):.3f})"
            if self.target is not None
            else ""
        )
        print(f"\n{self.monitor} curve: {png_path}" + (f" ({when})" if when else ""), flush=True)
