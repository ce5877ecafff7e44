"""Gradient cache (``grad_cache=<chunk>``): the loss, gradients and optimiser steps of the whole
batch at once, through the Trainer, on one process and on two gloo ranks; recipes it cannot serve
exactly are refused."""

import os
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor
from torch.utils.data import DataLoader

import fundus_lit.grad_cache as gc
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.batch import Batch
from fundus_lit.models import TextConfig, VisionConfig
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.module import PretrainModule
from fundus_lit.objectives import (
    CaptionObjective,
    CLIPObjective,
    FLAIRObjective,
    PseudoSegObjective,
    RevisionObjective,
    WSCObjective,
)
from fundus_lit.optim import OptimConfig
from tests.conftest import MINILM
from tests.test_distributed import _free_port

B, CHUNK = 8, 3  # chunks of 3, 3 and 2 rows
CLIP_NORM = 0.5  # below the gradient norms of these models: clipping acts on every step
STEPS = 2  # the second step starts from weights the first (clipped, scheduled) step produced
WORDS = ["glaucoma", "drusen", "normal", "myopia", "haemorrhage", "exudates", "cataract", "oedema"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on two shared cores a second thread mostly waits for the first (a
    tiny MiniLM forward takes 10x longer), and the two DDP ranks below get one core each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def batches() -> tuple[Batch, ...]:
    """Two batches; four categories shared between rows (FLAIR soft targets), multi-hot labels
    (WSC), distinct texts."""
    tokenizer = load_tokenizer(MINILM)
    out = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        categories = [WORDS[(3 * i + step) % 4] for i in range(B)]
        texts = [
            f"a fundus photograph of {c} and {WORDS[(i + step) % 8]}"
            for i, c in enumerate(categories)
        ]
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        out.append(
            Batch(
                images=torch.randint(0, 256, (B, 3, 64, 64), generator=g, dtype=torch.uint8),
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                texts=texts,
                categories=categories,
                datasets=["synthetic"] * B,
                indices=torch.arange(B),
                labels=(torch.rand(B, 4, generator=g) > 0.6).float(),
            )
        )
    return tuple(out)


def rows_of(batch: Batch, rows: slice) -> Batch:
    return Batch(
        batch.images[rows],
        batch.input_ids[rows],
        batch.attention_mask[rows],
        batch.texts[rows],
        batch.categories[rows],
        batch.datasets[rows],
        batch.indices[rows],
        batch.labels[rows],
    )


def all_objectives() -> list:
    """CLIP, FLAIR and WSC with momentum keys and a queue (16 = 2 global batches) in one recipe."""
    return [CLIPObjective(), FLAIRObjective(), WSCObjective(momentum=0.9, queue_size=16)]


def make_module(
    grad_cache: int | None = None,
    objectives: list | None = None,
    vision: str = "test_vit",
    trainable_text: bool = False,
) -> PretrainModule:
    """The same initial weights for every call. ``test_vit`` has no batch statistics, so chunks
    compute exactly the full batch; a trainable text tower keeps dropout (p = 0.1) active and is
    cut to one layer with fixed word embeddings to stay fast on two cores."""
    torch.manual_seed(0)
    module = PretrainModule(
        VisionConfig(vision, drop_path_rate=0.2 if vision == "test_resnet" else 0.0),
        TextConfig(MINILM, pooling="mean", max_length=16, freeze=not trainable_text),
        objectives=objectives or all_objectives(),
        embed_dim=16,
        image_size=64,
        batch_size=B,
        optim=OptimConfig(lr=1e-3, warmup=1),
        grad_cache=grad_cache,
    )
    if trainable_text:
        text = module.encoder.text.model
        text.encoder.layer = text.encoder.layer[:1]
        text.embeddings.requires_grad_(False)
    return module


class Spy(L.Callback):
    """Each step's loss and its gradients as the optimiser receives them (before clipping)."""

    def __init__(self) -> None:
        self.losses: list[Tensor] = []
        self.grads: list[dict[str, Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        named = pl_module.named_parameters()
        self.grads.append({n: p.grad.clone() for n, p in named if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def fit(module: PretrainModule, data: list[Batch], **trainer_args) -> dict:
    spy = Spy()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=len(data),
        gradient_clip_val=CLIP_NORM,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[spy],
        **trainer_args,
    )
    torch.manual_seed(1)  # the same random draws (dropout, stochastic depth) in both runs
    trainer.fit(module, DataLoader(data, batch_size=None, collate_fn=lambda b: b))
    assert trainer.global_step == len(data)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return {"losses": spy.losses, "grads": spy.grads, "state": state}


@cache
def full_batch_run() -> dict:
    """The automatic path on whole batches, the recipe of :func:`all_objectives`."""
    return fit(make_module(), list(batches()))


def assert_same_training(got: dict, ref: dict, losses: bool = True) -> None:
    """Losses, every gradient (relative to the step's largest: some exact gradients are 0, such
    as attention key biases', and hold only rounding noise), and the weights and buffers after the
    optimiser steps."""
    if losses:
        torch.testing.assert_close(got["losses"], ref["losses"], rtol=1e-6, atol=0)
    assert len(got["grads"]) == len(ref["grads"]) == STEPS
    for step, (grads, expected) in enumerate(zip(got["grads"], ref["grads"])):
        assert grads.keys() == expected.keys()
        top = max(g.abs().max() for g in expected.values())
        assert torch.sqrt(sum((g**2).sum() for g in expected.values())) > CLIP_NORM
        for name, grad in grads.items():
            torch.testing.assert_close(
                grad, expected[name], rtol=1e-5, atol=1e-5 * top, msg=f"step {step}: {name}"
            )
    assert got["state"].keys() == ref["state"].keys()
    for name, value in got["state"].items():
        torch.testing.assert_close(value, ref["state"][name], rtol=1e-5, atol=1e-5, msg=name)


def test_chunks_cover_the_batch():
    assert gc.chunk_slices(8, 3) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert gc.chunk_slices(2, 8) == [slice(0, 2)]
    with pytest.raises(ValueError, match="chunk size"):
        gc.chunk_slices(8, 0)


def test_equals_the_full_batch_step():
    """CLIP + FLAIR + WSC (momentum keys, queue) with the frozen, cached text tower: two clipped,
    scheduled AdamW steps equal the automatic full-batch path, queues and momentum copy included."""
    module = make_module(grad_cache=CHUNK)
    got = fit(module, list(batches()))
    assert not module.automatic_optimization
    assert_same_training(got, full_batch_run())
    assert int(got["state"]["objectives.2.queue_fill"]) == 16


def chunked_reference(module: PretrainModule) -> PretrainModule:
    """The automatic path forwarding the grad cache's chunks one after the other, with one graph:
    the same dropout draws and BatchNorm chunk statistics, each chunk updating the running
    statistics once."""

    def forward(batch: Batch) -> ModelOutputs:
        outs = [
            module.encoder(batch.images[r], batch.input_ids[r], batch.attention_mask[r])
            for r in gc.chunk_slices(len(batch), CHUNK)
        ]
        return ModelOutputs(
            image_emb=torch.cat([o.image_emb for o in outs]),
            text_emb=torch.cat([o.text_emb for o in outs]),
            scale=module.encoder.scale(),
        )

    module.forward = forward
    return module


def test_replays_dropout_and_updates_batchnorm_once(monkeypatch):
    """Trainable text tower with dropout, a BatchNorm ResNet with stochastic depth: the replay
    draws what the first pass drew, and running statistics move once per chunk."""
    args = {"objectives": [FLAIRObjective()], "vision": "test_resnet", "trainable_text": True}
    ref = fit(chunked_reference(make_module(**args)), list(batches()))
    got = fit(make_module(CHUNK, **args), list(batches()))
    assert_same_training(got, ref)
    counts = [v for k, v in got["state"].items() if k.endswith("num_batches_tracked")]
    assert counts and all(int(c) == STEPS * 3 for c in counts)

    # control: without the RNG replay the gradients belong to other dropout masks
    monkeypatch.setattr(gc, "restore_rng", lambda state: None)
    bad = fit(make_module(CHUNK, **args), list(batches())[:1])
    top = max(g.abs().max() for g in ref["grads"][0].values())
    worst = max((bad["grads"][0][k] - g).abs().max() for k, g in ref["grads"][0].items())
    assert worst > 1e-2 * top


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    # what torchrun sets: Lightning then joins these processes instead of launching its own
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world)}
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    share = B // world
    data = [rows_of(b, slice(rank * share, (rank + 1) * share)) for b in batches()]
    result = fit(
        make_module(grad_cache=CHUNK),
        data,
        devices=world,
        strategy="ddp",
        use_distributed_sampler=False,
    )
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def test_two_gloo_ranks_equal_one_process(tmp_path):
    """Each rank caches 4 rows in chunks of 3 and 1; the objectives gather across ranks, the
    chunk backwards run without DDP's all-reduce and gradients are averaged once per step."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    ref = full_batch_run()
    for res in ranks:  # each rank logs the loss of its rows against every rank's columns
        assert_same_training(res, ref, losses=False)
    mean = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    torch.testing.assert_close(mean, ref["losses"], rtol=1e-6, atol=0)


def test_recipe_runs_from_the_cli_with_trainer_clipping(tmp_path):
    from fundus_lit.cli import cli_main

    root = Path(__file__).resolve().parents[1] / "recipes"
    cli = cli_main(
        [
            "fit",
            f"--config={root / 'flair.yaml'}",
            f"--config={root / 'overlays' / 'tiny.yaml'}",
            "--trainer.fast_dev_run=2",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
            "--data.init_args.image_size=64",
            "--model.init_args.vision.name=test_resnet",
            "--model.init_args.grad_cache=4",
        ]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    assert cli.trainer.gradient_clip_val == 1.0 and not cli.model.automatic_optimization
    assert bool(cli.trainer.callback_metrics["train/loss"].isfinite())


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        (PseudoSegObjective(), r"'pseudo_seg' \(PseudoSegObjective\) requires \['attention'"),
        (CaptionObjective(stream="public"), r"'caption' .* requires \['feature_map'\]"),
        (RevisionObjective(), r"'revision' .* uses the 'expert' stream"),
    ],
    ids=["dense", "dense-public-caption", "expert-stream"],
)
def test_refuses_objectives_beyond_the_global_embeddings(objective, message):
    with pytest.raises(ValueError, match=message):  # before any tower is loaded
        PretrainModule(objectives=[CLIPObjective(), objective], grad_cache=4)


def test_refuses_what_it_cannot_make_exact():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    with pytest.raises(ValueError, match="chunk size"):
        PretrainModule(grad_cache=-1)
    for strategy, message in [
        (FSDPStrategy(), "not FSDPStrategy"),
        (DDPStrategy(static_graph=True), "static_graph"),
    ]:
        with pytest.raises(ValueError, match=message):
            gc.check_trainer(SimpleNamespace(accumulate_grad_batches=1, strategy=strategy))
    module = make_module(grad_cache=CHUNK)
    with pytest.raises(ValueError, match="accumulate_grad_batches=2.*raise data.batch_size"):
        fit(module, list(batches()), accumulate_grad_batches=2)
