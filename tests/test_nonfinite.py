"""Non-finite guard: a NaN loss skips its step (no update), is counted, and N in a row stop the
run with a message naming the step and the loss terms."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor

from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.nonfinite import NonFiniteLossError
from fundus_lit.objectives import CLIPObjective
from tests.test_distributed import _free_port
from tests.test_grad_cache import B, batches, make_module, rows_of


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


def fit(module, steps: int, callbacks=(), rows: slice = slice(None), **kwargs) -> L.Trainer:
    data = [rows_of(batches()[i % len(batches())], rows) for i in range(steps)]
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        **kwargs,
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


@pytest.mark.parametrize(
    ("grad_cache", "precision"),
    [(None, "32-true"), (None, "bf16-mixed"), (2, "32-true")],
    ids=["whole-batch", "whole-batch-bf16", "grad-cache"],
)
def test_nan_steps_are_skipped_counted_and_training_goes_on(grad_cache, precision):
    module = make_module(grad_cache=grad_cache, objectives=[NaNAt({1, 2})], vision="test_resnet")
    snapshots = Snapshots()
    with pytest.warns(UserWarning, match=r"step 1: the loss is not finite \(nan_clip=nan\)"):
        trainer = fit(module, 5, [snapshots], precision=precision)
    assert module.nonfinite.steps == 2
    # both optimisation modes count the dropped steps: the optimiser ran and changed nothing
    assert trainer.global_step == 5
    before = snapshots.before
    assert not same(before[0], before[1])  # a good step moves the weights
    assert same(before[1], before[2]) and same(before[2], before[3])  # NaN steps do not
    assert not same(before[3], before[4])
    finite = [torch.isfinite(v.float()).all() for v in module.encoder.state_dict().values()]
    assert all(finite)
    # the fused optimiser dropped the steps whole: its step counts saw the 3 good ones only
    counts = {int(state["step"]) for state in trainer.optimizers[0].state.values()}
    assert counts == {3}


def test_nan_steps_in_a_row_stop_the_run_naming_step_and_terms():
    module = make_module(objectives=[NaNAt({1, 2, 3, 4})], vision="test_resnet")
    module.nonfinite.max_steps = 3
    expected = r"3 steps in a row, the last at step 3: nan_clip=nan"
    with pytest.raises(NonFiniteLossError, match=expected), pytest.warns(UserWarning):
        fit(module, 6)


def test_the_guard_can_be_switched_off():
    module = make_module(objectives=[NaNAt({0})], vision="test_resnet")
    module.nonfinite.max_steps = 0
    fit(module, 1)
    assert module.nonfinite.steps == 0
    assert not all(torch.isfinite(p).all() for p in module.encoder.parameters() if p.requires_grad)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world)}
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    # only rank 1 sees a NaN, on its second step: both ranks must skip it together
    module = make_module(objectives=[NaNAt({1} if rank == 1 else set())], vision="test_resnet")
    share = B // world
    fit(
        module,
        3,
        rows=slice(rank * share, (rank + 1) * share),
        devices=world,
        strategy="ddp",
        use_distributed_sampler=False,
    )
    params = {k: v.detach().clone() for k, v in module.encoder.named_parameters()}
    torch.save({"skipped": module.nonfinite.steps, "params": params}, Path(out_dir) / f"{rank}.pt")


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert [r["skipped"] for r in ranks] == [1, 1]
    assert same(ranks[0]["params"], ranks[1]["params"])  # DDP replicas still agree
    assert all(torch.isfinite(v).all() for v in ranks[0]["params"].values())
