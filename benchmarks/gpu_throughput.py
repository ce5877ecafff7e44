"""Throughput and model-FLOPs utilisation of `recipes/flair.yaml` at paper scale (ResNet-50 at
512 px, a BERT-base text tower like Bio_ClinicalBERT, batch 128, bf16-mixed) through the real
Lightning training step, against the bf16 matmul peak measured on the same device in the same
run (the issue's goal: >= 35 % on a GPU), plus peak memory.

Nothing is downloaded: the towers are built from their configurations (random weights do not
change the arithmetic), the text tower from a BERT-base config written to a temporary folder.
On a CPU it runs with small settings as a smoke check; the figures that matter are GPU figures.

    python benchmarks/gpu_throughput.py                  # GPU: the paper-scale FLAIR step
    python benchmarks/gpu_throughput.py --batch 64 --size 448
    python benchmarks/gpu_throughput.py --quick          # small settings (CPU smoke check)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import transformers
from harness import bare_trainer, repeat_loader  # sibling modules: benchmarks run as scripts
from results import report
from torch.utils.flop_counter import FlopCounterMode

from fundus_lit.data.batch import Batch
from fundus_lit.models.outputs import full_precision
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.module import PretrainModule
from fundus_lit.objectives import FLAIRObjective
from fundus_lit.optim import OptimConfig

CATEGORIES = ["normal", "glaucoma", "diabetic retinopathy", "drusen", "cataract", "myopia"]


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, module, batch, idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def bert_base_folder(root: Path, layers: int, hidden: int) -> str:
    """A BERT config (Bio_ClinicalBERT's shape by default) the text tower builds from."""
    config = transformers.BertConfig(
        vocab_size=28996,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
    )
    config.save_pretrained(root)
    return str(root)


def make_batch(
    n: int, size: int, length: int, vocab: int, device: torch.device | str = "cpu"
) -> Batch:
    """A deterministic batch of random pixels and token ids (the arithmetic does not care what
    they show). ``device`` draws it there: a batch of 4,096 images at 512 px is 3 GiB, which
    the host would draw slowly and then copy."""
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(1000, vocab, (n, length), generator=g, device=device)
    ids[:, 0], ids[:, -1] = 101, 102
    images = torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g, device=device
    )
    return Batch(
        images=images,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        texts=[""] * n,
        categories=[CATEGORIES[i % len(CATEGORIES)] for i in range(n)],
        datasets=["bench"] * n,
        indices=torch.arange(n, device=device),
    )


def step_flops(module: PretrainModule, batch: Batch, device: torch.device, dtype) -> int:
    """Forward + backward FLOPs of one training step (matmuls and convolutions)."""
    module = module.to(device).train()
    batch = batch_to(batch, device)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        outputs = full_precision(module(batch))
        loss = sum(o(outputs, batch).losses["loss"] * o.weight for o in module.objectives)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def batch_to(batch: Batch, device: torch.device) -> Batch:
    fields = {k: getattr(batch, k) for k in batch.__dataclass_fields__}
    return Batch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in fields.items()})


def matmul_peak(device: torch.device, dtype, n: int, repeats: int) -> float:
    """Sustained FLOP/s of a square matmul in ``dtype``: the achievable peak of this device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def build_flair(
    vision: str,
    size: int,
    batch: int,
    length: int,
    layers: int,
    hidden: int,
    channels_last: bool = False,
    grad_cache: int | None = None,
) -> PretrainModule:
    """`recipes/flair.yaml`'s module at this scale, both towers built from their configurations
    (random weights, nothing downloaded): what this script and `gpu_check.py` time."""
    with tempfile.TemporaryDirectory() as tmp:  # the config is read while the tower is built
        text = TextConfig(
            name=bert_base_folder(Path(tmp), layers, hidden),
            pooling="flair",
            max_length=length,
            pretrained=False,
        )
        return PretrainModule(
            vision=VisionConfig(name=vision, channels_last=channels_last),
            text=text,
            objectives=[FLAIRObjective()],
            embed_dim=512,
            image_size=size,
            batch_size=batch,
            optim=OptimConfig(lr=1e-4, weight_decay=1e-5, warmup=0),
            grad_cache=grad_cache,
        )


def measure(
    vision: str = "resnet50",
    size: int = 512,
    batch: int = 128,
    length: int = 77,
    layers: int = 12,
    hidden: int = 768,
    steps: int = 30,
    warmup: int = 5,
    precision: str = "bf16-mixed",
    channels_last: bool = False,
    device: str | None = None,
    peak_size: int | None = None,
) -> dict[str, float | str]:
    """Time the FLAIR training step through the Trainer and relate it to the matmul peak.

    Returns the median step (s), samples/s, the step's model FLOPs, achieved and peak FLOP/s,
    MFU, the peak allocated memory (GiB, NaN on a CPU) and the device's name; separate from
    printing so that `gpu_check.py` can set its own figures beside these. ``device`` ("cuda" or
    "cpu") defaults to CUDA where present; `gpu_check.py --dry-run` forces the CPU.
    ``peak_size`` is the side of the peak's square matmul (8192 on CUDA, 1024 on a CPU by
    default; a CPU that emulates bf16 takes seconds for each 1024 one).
    """
    cuda = torch.cuda.is_available() if device is None else device == "cuda"
    where = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = build_flair(vision, size, batch, length, layers, hidden, channels_last)
    data = make_batch(batch, size, length, 28996)
    flops = step_flops(module, data, where, dtype)
    clock = StepClock()
    trainer = bare_trainer(
        warmup + steps,
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision=precision,
        gradient_clip_val=1.0,
        callbacks=[clock],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # the batch lives on the device already: host-to-device copies are the loader's cost
    trainer.fit(module, repeat_loader(batch_to(data, where), warmup + steps))
    step = statistics.median(clock.times[warmup:])
    peak = matmul_peak(where, dtype, peak_size or (8192 if cuda else 1024), 20 if cuda else 3)
    return {
        "step_s": step,
        "samples_per_s": batch / step,
        "flops": float(flops),
        "achieved_flops": flops / step,
        "peak_flops": peak,
        "mfu": flops / step / peak,
        "memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "device": torch.cuda.get_device_name(0) if cuda else "CPU",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision", default="resnet50")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=77, help="text tokens")
    parser.add_argument("--layers", type=int, default=12, help="text tower layers")
    parser.add_argument("--hidden", type=int, default=768, help="text tower width")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny settings (CPU smoke check)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.quick or not cuda:
        args.vision, args.size, args.batch, args.layers, args.hidden = "resnet18", 128, 8, 2, 128
        args.length, args.steps, args.warmup = 32, 4, 1
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float32
    r = measure(
        args.vision,
        args.size,
        args.batch,
        args.length,
        args.layers,
        args.hidden,
        args.steps,
        args.warmup,
        args.precision,
        args.channels_last,
    )
    print(
        f"\nFLAIR step on {r['device']}: {args.vision} @ {args.size} px + BERT {args.layers}x"
        f"{args.hidden} ({args.length} tokens), batch {args.batch}, {args.precision}"
        f"{', channels-last' if args.channels_last else ''}; median of {args.steps} steps"
    )
    print(f"  step time           {r['step_s'] * 1000:10.1f} ms")
    print(f"  samples/s           {r['samples_per_s']:10.1f}")
    print(f"  model FLOPs/step    {r['flops'] / 1e12:10.3f} TFLOP (forward + backward)")
    print(f"  achieved            {r['achieved_flops'] / 1e12:10.2f} TFLOP/s")
    print(f"  matmul peak         {r['peak_flops'] / 1e12:10.2f} TFLOP/s ({dtype}, measured now)")
    print(f"  MFU                 {100 * r['mfu']:10.1f} %  (goal >= 35 % on a GPU)")
    print(
        f"  peak memory         {r['memory_gib']:10.2f} GiB" if cuda else "  peak memory: GPU only"
    )
    report("FLAIR MFU", r["mfu"], f"achieved / {dtype} matmul FLOP/s", ">= 0.35 on GPU")


if __name__ == "__main__":
    main()
