"""One GPU check of issue 22's compass figures, sized to finish within 8 minutes on one GPU (an
H200), writing every figure to one JSON file:

a. ``flair_step``: the FLAIR recipe step (ResNet-50 @ 512 px + a BERT-base text tower built from
   its config, batch 128, bf16-mixed) through the real Lightning training step, as
   `gpu_throughput.py` times it: samples/s and MFU against the bf16 matmul peak measured in the
   same run, AGAINST a plain PyTorch loop written here to do what the published FLAIR training loop
   does each step (jusiro/FLAIR, ``flair/modeling/model.py``, ``train_epoch``): tokenise the
   batch's strings, build the soft targets in NumPy, fp16 autocast with a GradScaler, gradient
   clipping, ``loss.item()``, and ``torch.cuda.empty_cache()``. Same GPU, same batch, same tower
   sizes. Goals: ours / theirs >= 3x in samples/s, our MFU >= 35 %.
b. ``wsc_queue``: WSC's step with K = 65,536 queued keys / the CLIP step, timed by
   `queue_cost.py`'s ``step_time`` at its default scale (ResNet-18 @ 128 px, batch 32, D 512,
   90 labels) with a MiniLM-shaped text tower (6 x 384) built from its config. Goal <= 1.15x.
c. ``grad_cache``: peak GPU memory of the FLAIR step with the gradient cache at batch 4,096 and
   512 px (chunk 128), measured per step as `grad_cache_memory.py` measures it.
d. ``strategies``: one-process DDP and FSDP through Lightning, each strategy built from its
   overlay (``recipes/overlays/{ddp,fsdp}.yaml``) with the recipe's gradient clipping: a few
   steps run and the loss is finite.

Each section is timed; a failing section is recorded with its error and the others still run;
the JSON is rewritten after every section (a run stopped by the time limit keeps what finished)
and the exit status is 0 only when every section ran. Goals are reported, not enforced.

Nothing is downloaded: the towers are built from configurations, the FLAIR loop's tokenizer from
a WordPiece vocabulary written to a temporary folder, and nothing imports faiss. On the GPU
machine (torch, lightning, timm and transformers preinstalled, no network):

    pip install --no-deps -e . && bash benchmarks/gpu_check.sh      # ~5-8 min on one H200
    python benchmarks/gpu_check.py --dry-run --out /tmp/check.json  # CPU, tiny shapes, < 1 min
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import timm
import torch
import torch.nn.functional as F
import transformers
import yaml
from gpu_throughput import (  # sibling modules: benchmarks run as scripts
    CATEGORIES,
    batch_to,
    bert_base_folder,
    build_flair,
    make_batch,
    measure,
)
from grad_cache_memory import _status_kib
from harness import bare_trainer, repeat_loader
from lightning.pytorch.strategies import Strategy
from queue_cost import step_time
from torch import Tensor, nn

from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.module import PretrainModule
from fundus_lit.objectives import CLIPObjective, WSCObjective

HERE = Path(__file__).resolve().parent
OVERLAYS = HERE.parent / "recipes" / "overlays"
DEFAULT_OUT = HERE / "results" / "gpu_check.json"
DRY_RUN_OUT = Path(tempfile.gettempdir()) / "gpu_check_dry_run.json"
VOCAB = 28996  # Bio_ClinicalBERT's, as gpu_throughput.py's BERT config


@dataclass(frozen=True)
class Scale:
    """Every size the check uses; the GPU figures come from ``GPU``, ``--dry-run`` runs ``DRY``
    through the same code on a CPU."""

    vision: str  # (a) and (d): the FLAIR recipe's towers
    size: int
    batch: int
    length: int  # text tokens (every text fills them on both sides of (a))
    layers: int
    hidden: int
    steps: int
    warmup: int
    queue_vision: str  # (b): queue_cost.py's scale
    queue_size: int
    queue_batch: int
    queue_length: int
    queue_layers: int
    queue_hidden: int
    queue_k: int
    queue_labels: int
    queue_steps: int
    queue_rounds: int
    cache_batch: int  # (c)
    cache_size: int
    cache_chunk: int
    cache_steps: int
    cache_warmup: int
    smoke_batch: int  # (d)
    smoke_steps: int
    precision: str  # Lightning's, for (a), (c) and (d)
    peak_size: int | None  # side of the peak's matmul; None: gpu_throughput.py's default


GPU = Scale(
    "resnet50", 512, 128, 77, 12, 768, 20, 5,
    "resnet18", 128, 32, 16, 6, 384, 65536, 90, 5, 3,
    4096, 512, 128, 2, 1,
    16, 2, "bf16-mixed", None,
)  # fmt: skip
DRY = Scale(
    "test_resnet", 32, 4, 12, 2, 64, 1, 1,
    "test_resnet", 32, 4, 12, 2, 64, 16, 90, 1, 1,
    8, 32, 4, 1, 1,
    4, 2, "bf16-mixed", 256,
)  # fmt: skip


def sync(device: torch.device) -> None:
    """Wait for the device, so that wall-clock times cover the work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only; a CPU section reports its own measure)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak allocated CUDA memory since :func:`reset_peak`; NaN on a CPU (written as null)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


# --------------------------------------------------------------------------------------------
# (a) the published FLAIR training loop, rewritten: what it costs per step beyond the model


FINDINGS = (
    "optic disc cup ratio enlarged rim thinning macula fovea drusen soft hard exudates haemorrhages"
    " microaneurysms cotton wool spots vessels tortuous narrowed neovascularisation peripapillary"
    " atrophy tessellated fundus lens opacity blurred view retina detachment laser scars scattered"
    " dot blot flame shaped mild moderate severe proliferative non signs of the with and no in"
)
WORDS = FINDINGS.split()


def local_tokenizer(folder: Path) -> Any:
    """A real BERT WordPiece tokenizer, built without downloading Bio_ClinicalBERT's: the FLAIR
    loop tokenises strings each step, and what that costs is what (a) must include.

    Its vocabulary (BERT's special tokens, then every word the texts use) is written as
    ``vocab.txt`` beside a BERT ``config.json`` and loaded with ``AutoTokenizer``, as FLAIR
    loads its tokenizer; transformers 5 ignores ``BertTokenizerFast(vocab_file=...)``."""
    words = {w for text in CATEGORIES for w in text.split()} | set(WORDS) | {"a", "photograph"}
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *sorted(words)]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    if not (folder / "config.json").exists():
        transformers.BertConfig().save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def report_texts(categories: list[str], length: int) -> list[str]:
    """One prompt-plus-findings text per sample, just long enough (every word is one token)
    that truncation at ``length`` tokens fills every row: both loops then run the text tower on
    the same number of tokens, and the tokenizer reads no more than it must."""
    rng = random.Random(0)
    body = [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in categories]
    return [f"a fundus photograph of {c}. {b}." for c, b in zip(categories, body)]


def normalise_then_project(x: Tensor, head: nn.Linear) -> Tensor:
    """FLAIR's projection: L2-normalise the features, project, L2-normalise again."""
    x = x / x.norm(dim=-1, keepdim=True)
    x = head(x)
    return x / x.norm(dim=-1, keepdim=True)


class PublishedFLAIR(nn.Module):
    """FLAIR's model as its repository builds it, at our tower sizes: a timm backbone without
    classifier, a transformers text encoder pooled over hidden layers 1, 2 and the last, then
    over every position, bias-free projections to 512 and a clamped learnable logit scale."""

    def __init__(self, vision: str, text_folder: str, dim: int = 512) -> None:
        super().__init__()
        self.vision = timm.create_model(vision, pretrained=False, num_classes=0)
        self.vision_head = nn.Linear(self.vision.num_features, dim, bias=False)
        config = transformers.AutoConfig.from_pretrained(text_folder)
        self.text = transformers.AutoModel.from_config(config)
        self.text_head = nn.Linear(config.hidden_size, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, pixels: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Logits per image (B, B)."""
        image = normalise_then_project(self.vision(pixels), self.vision_head)
        states = self.text(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        layers = states.hidden_states
        pooled = torch.stack([layers[1], layers[2], layers[-1]]).mean(0).mean(1)
        text = normalise_then_project(pooled, self.text_head)
        self.logit_scale.data = torch.clamp(self.logit_scale.data, 0, 4.6052)
        return image @ text.t() * self.logit_scale.exp()


def published_loop_times(
    model: PublishedFLAIR,
    tokenizer: Any,
    images: Tensor,
    texts: list[str],
    categories: list[str],
    length: int,
    steps: int,
) -> tuple[list[float], int, int]:
    """Seconds of each training step of the published loop's shape, the tokens per text, and
    how many of them were unknown to the vocabulary (0, or the texts are not what they seem).

    Per step, as ``train_epoch`` does: tokenise the Python strings, build the soft targets from
    category equality in NumPy on the host, forward and loss under fp16 autocast, scaled
    backward, unscale, clip to norm 1, scaled optimiser step, scheduler step, ``loss.item()``
    (twice: the running mean and the progress bar) and ``torch.cuda.empty_cache()``. The images
    start on the device as uint8, as in our step (the host-to-device copy is the loader's cost in
    both), and are converted to float32 in the loop. On a CPU (``--dry-run``) autocast, the
    scaler and the cache flush are off: the same code, without the CUDA-only parts.
    """
    device = images.device
    cuda = device.type == "cuda"
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / 100))
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    times, tokens, unknown, running = [], 0, 0, 0.0
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        encoded = tokenizer(
            texts, truncation=True, max_length=length, padding=True, return_tensors="pt"
        )
        ids = encoded["input_ids"].to(device).to(torch.long)
        mask = encoded["attention_mask"].to(device).to(torch.long)
        same = np.array([[a == b for a in categories] for b in categories], np.float32)
        target = torch.tensor(same / same.sum(-1)).to(device).to(torch.float32)
        pixels = images.to(torch.float32) / 255
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            per_text = model(pixels, ids, mask).t()
            loss = (F.cross_entropy(per_text, target) + F.cross_entropy(per_text.t(), target)) / 2
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        running += loss.item()
        if cuda:
            torch.cuda.empty_cache()
        _ = f"loss_value: {round(loss.item(), 3)}"  # the progress bar's description
        schedule.step()
        sync(device)
        times.append(time.perf_counter() - start)
        tokens = ids.shape[1]
        unknown = int((encoded["input_ids"] == tokenizer.unk_token_id).sum())
    return times, tokens, unknown


def flair_step(s: Scale, device: torch.device) -> dict[str, Any]:
    """(a): our Lightning step (`gpu_throughput.measure`) against the published loop's shape."""
    precision = s.precision
    ours = measure(
        s.vision, s.size, s.batch, s.length, s.layers, s.hidden, s.steps, s.warmup, precision,
        device=device.type, peak_size=s.peak_size,
    )  # fmt: skip
    gc.collect()
    data = batch_to(make_batch(s.batch, s.size, s.length, VOCAB), device)  # measure()'s batch
    categories = data.categories
    texts = report_texts(categories, s.length)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = PublishedFLAIR(s.vision, bert_base_folder(folder, s.layers, s.hidden))
        tokenizer = local_tokenizer(folder)
    model.to(device)
    reset_peak(device)
    times, tokens, unknown = published_loop_times(
        model, tokenizer, data.images, texts, categories, s.length, s.warmup + s.steps
    )
    step = statistics.median(times[s.warmup :])
    theirs = {
        "step_s": step,
        "samples_per_s": s.batch / step,
        "mfu": ours["flops"] / step / ours["peak_flops"],  # same towers: the same model FLOPs
        "memory_gib": peak_gib(device),
        "tokens": tokens,
        "unknown_tokens": unknown,
        "precision": "fp16 autocast + GradScaler" if device.type == "cuda" else "32",
    }
    return {
        "settings": {
            "vision": s.vision,
            "size": s.size,
            "batch": s.batch,
            "text": f"BERT {s.layers} x {s.hidden}",
            "tokens": s.length,
            "steps": s.steps,
            "warmup": s.warmup,
            "ours": precision,
        },
        "ours": {k: v for k, v in ours.items() if k != "device"},
        "published_loop": theirs,
        "speedup": ours["samples_per_s"] / theirs["samples_per_s"],
        "mfu": ours["mfu"],
    }


# --------------------------------------------------------------------------------------------
# (b) WSC's momentum encoder and queue against CLIP


def wsc_queue(s: Scale, device: torch.device) -> dict[str, Any]:
    """(b): `queue_cost.py`'s measurement (its ``step_time``, rounds alternating the variants,
    medians) at its default scale, with a MiniLM-shaped text tower built from its config."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = bert_base_folder(Path(tmp), s.queue_layers, s.queue_hidden)
        text = TextConfig(folder, pooling="mean", max_length=s.queue_length, pretrained=False)

        def build(objective: nn.Module) -> PretrainModule:
            torch.manual_seed(0)
            return PretrainModule(
                VisionConfig(s.queue_vision),
                text,
                objectives=[objective],
                embed_dim=512,
                image_size=s.queue_size,
                batch_size=s.queue_batch,
            )

        wsc = f"wsc K={s.queue_k}"
        variants = {
            "clip": build(CLIPObjective()),
            wsc: build(WSCObjective(momentum=0.995, queue_size=s.queue_k)),
        }
    for module in variants.values():
        module.to(device)
    data = make_batch(s.queue_batch, s.queue_size, s.queue_length, VOCAB)
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(s.queue_batch, s.queue_labels, generator=g) < 0.05).float()
    data = batch_to(dataclasses.replace(data, labels=labels), device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(s.queue_rounds):
        for name, module in variants.items():
            times[name].append(step_time(copy.deepcopy(module), data, s.queue_steps))
    clip, queue = statistics.median(times["clip"]), statistics.median(times[wsc])
    return {
        "settings": {
            "vision": s.queue_vision,
            "size": s.queue_size,
            "batch": s.queue_batch,
            "text": f"BERT {s.queue_layers} x {s.queue_hidden}, {s.queue_length} tokens",
            "K": s.queue_k,
            "labels": s.queue_labels,
            "steps": s.queue_steps,
            "rounds": s.queue_rounds,
            "precision": "32 (plain loop, as queue_cost.py)",
        },
        "clip_step_s": clip,
        "wsc_step_s": queue,
        "ratio": queue / clip,
    }


# --------------------------------------------------------------------------------------------
# (c) gradient cache at a contrastive batch of 4,096


class MemoryMeter(L.Callback):
    """Memory and time of each step after the warm-up, measured as `grad_cache_memory.py` does:
    CUDA's peak allocated memory with the peak reset at the step's start (absolute, and growth
    over the step's start), or on a CPU the resident set's high-water mark reset at the start."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.step_gib: list[float] = []
        self.peak_gib: list[float] = []
        self.times: list[float] = []
        self.start = self.t0 = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS
            self.start = _status_kib("VmRSS") * 1024
        self.t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        cuda = module.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self.t0
        peak = torch.cuda.max_memory_allocated() if cuda else _status_kib("VmHWM") * 1024
        if idx >= self.warmup:
            self.step_gib.append((peak - self.start) / 2**30)
            self.peak_gib.append(peak / 2**30)
            self.times.append(elapsed)


def grad_cache(s: Scale, device: torch.device) -> dict[str, Any]:
    """(c): the FLAIR recipe with ``grad_cache`` at the large batch, bf16-mixed, few steps."""
    module = build_flair(
        s.vision, s.cache_size, s.cache_batch, s.length, s.layers, s.hidden,
        grad_cache=s.cache_chunk,
    )  # fmt: skip
    data = make_batch(s.cache_batch, s.cache_size, s.length, VOCAB, device)
    meter = MemoryMeter(s.cache_warmup)
    trainer = bare_trainer(
        s.cache_warmup + s.cache_steps,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=s.precision,
        gradient_clip_val=1.0,
        callbacks=[meter],
    )
    trainer.fit(module, repeat_loader(data, s.cache_warmup + s.cache_steps))
    figures = {
        "settings": {
            "vision": s.vision,
            "size": s.cache_size,
            "batch": s.cache_batch,
            "chunk": s.cache_chunk,
            "text": f"BERT {s.layers} x {s.hidden}, {s.length} tokens",
            "steps": s.cache_steps,
            "warmup": s.cache_warmup,
            "precision": s.precision,
            "memory": "CUDA max_memory_allocated" if device.type == "cuda" else "RSS high water",
        },
        "peak_gib": max(meter.peak_gib),
        "step_gib": max(meter.step_gib),
        "step_s": statistics.median(meter.times),
    }
    if device.type == "cuda":
        figures["device_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    return figures


# --------------------------------------------------------------------------------------------
# (d) DDP and FSDP in one process


class SectionFailed(RuntimeError):
    """A section that failed after measuring something: its figures are kept in the JSON."""

    def __init__(self, message: str, figures: dict[str, Any]) -> None:
        super().__init__(message)
        self.figures = figures


def overlay_strategy(name: str) -> Strategy:
    """The strategy ``recipes/overlays/<name>.yaml`` configures, built as the CLI would (class
    paths of the auto-wrap policy imported), so the smoke step runs what users stack."""
    config = yaml.safe_load((OVERLAYS / f"{name}.yaml").read_text())["trainer"]["strategy"]

    def load(path: str) -> Any:
        module, _, attr = path.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    init = dict(config.get("init_args") or {})
    if "auto_wrap_policy" in init:
        init["auto_wrap_policy"] = {load(path) for path in init["auto_wrap_policy"]}
    return load(config["class_path"])(**init)


class LossRecorder(L.Callback):
    """The training loss of every step, as the training step returned it."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def smoke_fit(name: str, s: Scale, cuda: bool, clip: float | None) -> dict[str, Any]:
    """``s.smoke_steps`` FLAIR steps under the strategy of overlay ``name``; the losses seen."""
    start = time.perf_counter()
    try:
        module = build_flair(s.vision, s.size, s.smoke_batch, s.length, s.layers, s.hidden)
        data = make_batch(s.smoke_batch, s.size, s.length, VOCAB)
        recorder = LossRecorder()
        trainer = bare_trainer(
            s.smoke_steps,
            accelerator="gpu" if cuda else "cpu",
            devices=1,
            strategy=overlay_strategy(name),
            precision=s.precision,
            gradient_clip_val=clip,
            callbacks=[recorder],
        )
        trainer.fit(module, repeat_loader(data, s.smoke_steps))
        losses = recorder.losses
        finite = len(losses) == s.smoke_steps and all(math.isfinite(x) for x in losses)
        result: dict[str, Any] = {"ran": True, "losses": losses, "finite": finite}
        if not finite:
            result["error"] = f"{len(losses)} of {s.smoke_steps} steps, losses {losses}"
    except Exception as err:  # reported; the other strategy still runs
        result = {"ran": False, "finite": False, "error": f"{type(err).__name__}: {err}"}
    finally:
        if torch.distributed.is_initialized():  # the next fit starts its own process group
            torch.distributed.destroy_process_group()
    result["gradient_clip_val"] = clip
    result["seconds"] = time.perf_counter() - start
    return result


def strategies(s: Scale, device: torch.device) -> dict[str, Any]:
    """(d): a few FLAIR steps under each overlay's strategy in one process, with the recipes'
    gradient clipping (``gradient_clip_val: 1.0``), as ``--config recipes/flair.yaml --config
    recipes/overlays/fsdp.yaml`` would run them.

    If FSDP fails so, it runs once more without clipping (Lightning's FSDP precision plugin
    refuses to clip by norm), so that one GPU run tells whether the rest of the FSDP step works.
    Lightning refuses FSDP without a GPU and torch's FSDP needs an accelerator, so on a CPU the
    FSDP strategy is built from its overlay but not fitted (recorded as not run)."""
    cuda = device.type == "cuda"
    settings = {"batch": s.smoke_batch, "steps": s.smoke_steps, "precision": s.precision}
    figures: dict[str, Any] = {"settings": settings}
    port = os.environ.get("MASTER_PORT")  # set by the user, or else free for Lightning to pick

    def fit(name: str, clip: float | None) -> dict[str, Any]:
        if port is None:  # each fit picks a free port, not the one its predecessor left set
            os.environ.pop("MASTER_PORT", None)
        return smoke_fit(name, s, cuda, clip)

    figures["ddp"] = fit("ddp", 1.0)
    if cuda:
        figures["fsdp"] = fit("fsdp", 1.0)
        if not figures["fsdp"]["finite"]:
            figures["fsdp_without_clipping"] = fit("fsdp", None)
    else:
        overlay_strategy("fsdp")  # the overlay still parses and its classes import
        figures["fsdp"] = {"ran": False, "why": "FSDP needs a CUDA device (dry run on a CPU)"}
    failures = [f"{k}: {v['error']}" for k, v in figures.items() if v.get("error")]
    if failures:
        raise SectionFailed("; ".join(failures), figures)
    return figures


# --------------------------------------------------------------------------------------------
# driver

SECTIONS: dict[str, Callable[[Scale, torch.device], dict[str, Any]]] = {
    "flair_step": flair_step,
    "wsc_queue": wsc_queue,
    "grad_cache": grad_cache,
    "strategies": strategies,
}


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: figures that do not exist here (CUDA memory on a CPU) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def machine(device: torch.device) -> dict[str, Any]:
    """Where and with what the figures were measured (a figure is a command anyone can rerun)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "host": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "lightning": L.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "commit": commit or None,
    }


def goals(sections: dict[str, dict[str, Any]], dry_run: bool) -> list[dict[str, Any]]:
    """The compass figures beside their goals; ``met`` is null in a dry run, whose tiny CPU
    figures say nothing about them."""
    rows = []
    a, b = sections.get("flair_step", {}), sections.get("wsc_queue", {})
    if a.get("status") == "ok":
        speedup, mfu = a["speedup"], a["mfu"]
        rows.append(("ours / published FLAIR loop, samples/s", speedup, ">= 3", speedup >= 3))
        rows.append(("our MFU (measured matmul peak)", mfu, ">= 0.35", mfu >= 0.35))
    if b.get("status") == "ok":
        name = f"WSC K={b['settings']['K']:,} / CLIP step"
        rows.append((name, b["ratio"], "<= 1.15", b["ratio"] <= 1.15))
    return [
        {"figure": f, "value": v, "goal": g, "met": None if dry_run else m} for f, v, g, m in rows
    ]


def headline(name: str, entry: dict[str, Any]) -> str:
    """One line of figures per section for the table."""
    if entry.get("status") != "ok":
        return entry.get("error", entry.get("status", "")).splitlines()[0][:100]
    if name == "flair_step":
        ours, theirs = entry["ours"], entry["published_loop"]
        return (
            f"{ours['samples_per_s']:.1f} vs {theirs['samples_per_s']:.1f} samples/s = "
            f"{entry['speedup']:.2f}x (goal >= 3x); MFU {100 * entry['mfu']:.1f} % (goal >= 35 %)"
            f", theirs {100 * theirs['mfu']:.1f} %"
        )
    if name == "wsc_queue":
        return (
            f"CLIP {entry['clip_step_s'] * 1000:.1f} ms, WSC K={entry['settings']['K']} "
            f"{entry['wsc_step_s'] * 1000:.1f} ms = {entry['ratio']:.3f}x (goal <= 1.15x)"
        )
    if name == "grad_cache":
        st = entry["settings"]
        return (
            f"batch {st['batch']} @ {st['size']} px, chunk {st['chunk']}: peak "
            f"{entry['peak_gib']:.2f} GiB (step +{entry['step_gib']:.2f} GiB), "
            f"{entry['step_s']:.2f} s/step"
        )
    parts = []
    for key in ("ddp", "fsdp"):
        run = entry[key]
        losses = ", ".join(f"{x:.4f}" for x in run.get("losses", []))
        parts.append(f"{key} losses {losses}" if run["ran"] else f"{key}: {run['why']}")
    return "; ".join(parts)


def write(path: Path, results: dict[str, Any]) -> None:
    """Write the JSON whole (temporary file, then rename): a run stopped mid-way leaves the
    last complete version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(finite_or_none(results), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def run(dry_run: bool, out: Path, only: list[str] | None, command: str) -> dict[str, Any]:
    """Every section in turn, each timed and isolated; returns (and writes) the results."""
    scale = DRY if dry_run else GPU
    cuda = torch.cuda.is_available() and not dry_run
    if dry_run:  # tiny shapes gain nothing from threads, and OpenMP spins on a busy shared CPU
        os.environ["OMP_NUM_THREADS"] = "1"  # else Lightning's DDP sets threads = cores again
        torch.set_num_threads(1)
    device = torch.device("cuda" if cuda else "cpu")
    names = [n for n in SECTIONS if not only or n in only]
    results: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "dry_run": dry_run,
        "machine": machine(device),
        "scale": dataclasses.asdict(scale),
        "sections": {n: {"status": "not run"} for n in names},
    }
    start = time.perf_counter()
    write(out, results)
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        began = time.perf_counter()
        try:
            entry = {"status": "ok", **SECTIONS[name](scale, device)}
        except Exception as err:  # a failing section must not stop the others
            entry = {
                **getattr(err, "figures", {}),
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-4000:],
            }
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = time.perf_counter() - began
        results["sections"][name] = entry
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        results["goals"] = goals(results["sections"], dry_run)
        results["seconds"] = time.perf_counter() - start
        results["passed"] = all(e["status"] == "ok" for e in results["sections"].values())
        write(out, results)
        print(f"=== {name}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
    return results


def print_table(results: dict[str, Any], out: Path) -> None:
    """The sections with their status, time and figures, then the goals."""
    where = results["machine"]["device"] + (" (dry run: tiny shapes)" if results["dry_run"] else "")
    print(f"\nGPU check on {where}, {results['seconds']:.0f} s in all; JSON: {out}")
    print(f"{'section':<12}{'status':<9}{'s':>7}  figures")
    for name, entry in results["sections"].items():
        seconds = entry.get("seconds", math.nan)
        print(f"{name:<12}{entry['status']:<9}{seconds:>7.1f}  {headline(name, entry)}")
    for row in results["goals"]:
        verdict = {True: "met", False: "not met", None: "not judged (dry run)"}[row["met"]]
        print(f"  goal: {row['figure']} = {row['value']:.3f} ({row['goal']}): {verdict}")
    print("all sections passed" if results["passed"] else "SOME SECTIONS FAILED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        help=f"the JSON to write (default {DEFAULT_OUT.relative_to(HERE.parent)}; with "
        f"--dry-run {DRY_RUN_OUT}, so that a dry run never overwrites the GPU figures)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny shapes: the same code in < 1 min"
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="a subset of sections")
    args = parser.parse_args(argv)
    # Nothing here calls the hub; gpu_check.sh also exports these before Python starts, which is
    # when huggingface_hub reads them.
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = " ".join(
        ["python benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]
    )
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: the GPU scale would take hours here; use --dry-run")
    out = args.out or (DRY_RUN_OUT if args.dry_run else DEFAULT_OUT)
    results = run(args.dry_run, out, args.only, command)
    print_table(results, out)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
