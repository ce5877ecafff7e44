"""``torch.compile`` of both towers (``model.vision.compile``, ``model.text.compile``, inductor on
the CPU) trains as eager does: the same loss at each of three optimiser steps of a tiny CLIP run
through the Trainer, the same weights after them, and no graph break in either tower.

Inductor builds C++ kernels with the system compiler, so the towers are the smallest that still
have every kind of layer (a one-block ViT, a one-layer BERT): a cold build took 73 s on two busy
AVX2 cores, and inductor's on-disk cache brings later runs down to about 11 s. A missing compiler
or a failed build fails this test; it never skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import pytest
import torch
import torch._dynamo
import transformers
from torch import Tensor
from torch._inductor import config as inductor_config
from torch.utils.data import DataLoader

from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.batch import Batch
from fundus_lit.models import TextConfig, VisionConfig
from fundus_lit.module import PretrainModule
from fundus_lit.optim import OptimConfig
from tests.conftest import MINILM

B, STEPS = 8, 3
#: Per-step losses of compiled and eager runs agree to this relative tolerance. Inductor fuses
#: ops and reorders float32 sums in the towers (layer norms, softmax, the pooling mean; the
#: loss itself runs eagerly) and packs matmul weights for oneDNN, so each op differs from eager by a
#: few ulp (float32 eps is 1.2e-7); through the forward and two updates the losses here differ
#: by at most 2e-7 relative (measured). 1e-4 leaves a 500x margin over that and still catches
#: what a wrong kernel or a lost gradient does to a loss: without the image tower's gradient the
#: second loss moves by 8%, with the text tower's gradients at half size by 0.8% (measured).
LOSS_RTOL = 1e-4
#: Weights after the three steps agree to this absolute tolerance. Each update is about lr x the
#: gradient (see ``train``), so a few-ulp gradient difference moves a weight by about 1e-8 (6e-8
#: measured); 1e-5 is a 150x margin and still below what the three steps move 85% of the weights.
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: inductor's kernels are built for the thread count and split their
    sums by it, so one thread keeps both runs' summation order fixed; and on two shared cores a
    second OpenMP thread mostly waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-layer BERT config (built untrained, ``pretrained: false``) with MiniLM's vocabulary.
    Dropout is off: inductor draws its own random numbers, so compiled dropout masks differ from
    eager's and the losses could only agree in distribution."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ).save_pretrained(folder)
    return str(folder)


def batches() -> list[Batch]:
    """``STEPS`` batches with texts padded to one length. Training pads each batch to its longest
    text, and the compiled text tower then recompiles once for a dynamic length (see
    ``TextConfig.compile``); one length keeps this test to one graph per tower, which cuts the
    cold build by a third (134 s -> 84 s measured), and makes any recompile a failure."""
    tokenizer = load_tokenizer(MINILM)
    out = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(step)
        texts = [
            f"a fundus photograph of case {i + B * step}" + " with drusen" * (i % 3)
            for i in range(B)
        ]
        tokens = tokenizer(texts, padding="max_length", max_length=24, return_tensors="pt")
        out.append(
            Batch(
                images=torch.randint(0, 256, (B, 3, 64, 64), generator=g, dtype=torch.uint8),
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                texts=texts,
                categories=[""] * B,
                datasets=["synthetic"] * B,
                indices=torch.arange(B),
            )
        )
    return out


class Losses(L.Callback):
    """The loss of every training step."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(outputs["loss"].item())


def train(compiled: bool, text: str, data: list[Batch]) -> tuple[list[float], dict[str, Tensor]]:
    """Per-step losses and final weights of ``STEPS`` steps from the same initial weights.

    AdamW's epsilon is 1 here: its update is then about lr x gradient for gradients well below 1,
    continuous in the gradient. With the default 1e-6 the first update is lr x sign(gradient), so
    a near-zero gradient whose sign the reordered sums flip would move its weight by 2 lr, and a
    backward with the wrong magnitude would go unseen.
    """
    torch.manual_seed(0)
    module = PretrainModule(
        VisionConfig("test_vit", model_kwargs={"depth": 1}, compile=compiled),
        TextConfig(text, pooling="mean", pretrained=False, compile=compiled),
        embed_dim=16,
        image_size=64,
        batch_size=B,
        optim=OptimConfig(lr=1e-2, eps=1.0, warmup=1),
    )
    losses = Losses()
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[losses],
    )
    trainer.fit(module, DataLoader(data, batch_size=None, collate_fn=lambda b: b))
    weights = {k: v.detach().clone() for k, v in module.encoder.state_dict().items()}
    return losses.values, weights


def test_compiled_towers_train_like_eager(tiny_bert: str) -> None:
    data = batches()
    eager_losses, eager_weights = train(False, tiny_bert, data)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    # compile in this process: a pool of compile workers (each a fresh interpreter importing
    # torch) costs more than it saves on two cores (cold build measured once: 87 s, 114 s with)
    with inductor_config.patch(compile_threads=1):
        compiled_losses, compiled_weights = train(True, tiny_bert, data)
    frames = counters["stats"]["unique_graphs"]
    breaks = dict(counters["graph_break"])
    assert len(eager_losses) == len(compiled_losses) == STEPS
    # not eager twice, and neither split nor recaptured: one graph per tower for all steps
    assert not breaks, f"graph breaks in the towers: {breaks}"
    assert frames == 2, f"torch.compile captured {frames} graphs, expected one per tower"
    torch.testing.assert_close(
        torch.tensor(compiled_losses, dtype=torch.float64),
        torch.tensor(eager_losses, dtype=torch.float64),
        rtol=LOSS_RTOL,
        atol=0.0,
    )
    assert compiled_weights.keys() == eager_weights.keys()
    for name, value in eager_weights.items():
        torch.testing.assert_close(
            compiled_weights[name],
            value,
            rtol=0.0,
            atol=WEIGHT_ATOL,
            msg=lambda m, n=name: f"{n}: {m}",
        )
