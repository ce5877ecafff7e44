"""Non-finite guard: a NaN loss skips its step (no update), is counted, and N in a row stop the
run with a message naming the step and the loss terms."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import Tensor

from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.module import NonFiniteLossError
from fundus_lit.objectives import CLIPObjective
from tests.test_grad_cache import batches, make_module


class NaNAt(CLIPObjective):
    """CLIP whose loss is NaN on the listed training calls (fault injection)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__(name="nan_clip")
        self.bad, self.calls = bad, 0

    def forward(self, outputs: ModelOutputs, batch: Batch):
        result = super().forward(outputs, batch)
        if self.training:
            if self.calls in self.bad:
                result.losses["loss"] = result.losses["loss"] * float("nan")
            self.calls += 1
        return result


class Snapshots(L.Callback):
    """The weights before every training batch, and whether the batch's step was taken."""

    def __init__(self) -> None:
        self.before: list[dict[str, Tensor]] = []

    def on_train_batch_start(self, trainer, module, batch, idx) -> None:
        # parameters: a skipped step's forward still updates BatchNorm statistics, as any
        # forward in train mode does
        self.before.append({k: v.detach().clone() for k, v in module.encoder.named_parameters()})


def fit(module, steps: int, callbacks=()) -> L.Trainer:
    data = [batches()[i % len(batches())] for i in range(steps)]
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    loader = torch.utils.data.DataLoader(data, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, loader)
    return trainer


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("grad_cache", [None, 2], ids=["whole-batch", "grad-cache"])
def test_nan_steps_are_skipped_counted_and_training_goes_on(grad_cache):
    module = make_module(grad_cache=grad_cache, objectives=[NaNAt({1, 2})], vision="test_resnet")
    snapshots = Snapshots()
    with pytest.warns(UserWarning, match=r"step 1 .*not finite \(nan_clip=nan\)"):
        trainer = fit(module, 5, [snapshots])
    assert module.nonfinite_steps == 2
    # automatic optimisation counts the dropped steps too (the optimiser ran, on no gradients)
    assert trainer.global_step == (5 if grad_cache is None else 3)
    before = snapshots.before
    assert not same(before[0], before[1])  # a good step moves the weights
    assert same(before[1], before[2]) and same(before[2], before[3])  # NaN steps do not
    assert not same(before[3], before[4])
    finite = [torch.isfinite(v.float()).all() for v in module.encoder.state_dict().values()]
    assert all(finite)


def test_nan_steps_in_a_row_stop_the_run_naming_step_and_terms():
    module = make_module(objectives=[NaNAt({1, 2, 3, 4})], vision="test_resnet")
    module.max_nonfinite_steps = 3
    expected = r"3 steps in a row.*step 3 .*nan_clip=nan"
    with pytest.raises(NonFiniteLossError, match=expected), pytest.warns(UserWarning):
        fit(module, 6)


def test_the_guard_can_be_switched_off():
    module = make_module(objectives=[NaNAt({0})], vision="test_resnet")
    module.max_nonfinite_steps = 0
    fit(module, 1)
    assert module.nonfinite_steps == 0
    assert not all(torch.isfinite(p).all() for p in module.encoder.parameters() if p.requires_grad)
