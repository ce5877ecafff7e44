"""Published FLAIR and KeepFIT checkpoints as fundus-lit models (``fundus-lit import``).

FLAIR (jusiro/FLAIR) releases its pretrained model as a raw ``state_dict`` of 521 tensors: the
learnable temperature, a torchvision ResNet-50 without classifier, a Bio_ClinicalBERT encoder
(with the legacy ``embeddings.position_ids`` buffer that current transformers no longer keeps)
and two bias-free projections to 512 dimensions. KeepFIT (lxirich/MM-Retinal) saves the same
model plus the knowledge-injection attention it uses while training (``attention.W_*``).

The import rebuilds that model from fundus-lit parts, which reproduce it exactly: timm's
``resnet50`` (the same keys and architecture as torchvision's), the ``flair`` text pooling (mean
over every position, padding included, of hidden states 1, 2 and last), the
``normalized_linear`` projection (L2-normalise, project, and the encoder normalises again), no
pixel normalisation, and FLAIR's image preparation (``resize: flair``: /255, longer side to 512,
zero padding right and bottom) recorded in the folder's config. The folder has the layout of
``fundus-lit export``, so ``load_pretrained``, ``zeroshot``, ``evaluate`` and ``fit``
(``model.init_args.init_weights``) take it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Literal

import torch
import transformers
from safetensors.torch import load_file
from torch import Tensor

from fundus_lit.core.checkpoint import check_keys
from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.models.dual_encoder import DualEncoder, DualEncoderConfig
from fundus_lit.models.saved import TEXT_CONFIG, TOKENIZER, folder_config, write_model_folder
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig

Publisher = Literal["flair", "keepfit"]
#: publisher prefix -> fundus-lit prefix, for every tensor the dual encoder keeps
PREFIXES = {
    "logit_scale": "logit_scale",
    "vision_model.model.": "vision.model.",
    "vision_model.projection_head_vision.projection.weight": "image_proj.weight",
    "text_model.model.": "text.model.",
    "text_model.projection_head_text.projection.weight": "text_proj.weight",
}
LEGACY = {"text_model.model.embeddings.position_ids"}  # a buffer older transformers saved
#: tensors a publisher saves besides the dual encoder (used only while training), with shapes
EXTRA: dict[str, dict[str, tuple[int, ...]]] = {
    "flair": {},
    "keepfit": {f"attention.W_{x}.weight": (512, 512) for x in "qkvo"},
}


def read_published(path: Path) -> dict[str, Tensor]:
    """The tensors of a published checkpoint: a ``.pth``/``.pt``/``.bin`` state dict (read
    weights-only: loading cannot run code), a ``.safetensors`` file (the hub variant), or a
    folder holding ``model.safetensors`` or ``pytorch_model.bin``."""
    if path.is_dir():
        found = [
            path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()
        ]
        if not found:
            raise DataError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise DataError(f"published checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # whatever the bytes provoke; the unpickler runs no code
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(
            f"cannot read published checkpoint {path} (expected a state dict of tensors saved "
            f"with torch.save, or a .safetensors file): {reason}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"{path} is not a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def bert_config(state: dict[str, Tensor], text_dir: Path | None) -> transformers.BertConfig:
    """The text encoder's config: the ``config.json`` of the named text-model folder, or else
    read off the tensors' shapes (BERT-base conventions: 64 dimensions per attention head)."""
    if text_dir is not None and (text_dir / "config.json").is_file():
        return transformers.BertConfig.from_pretrained(text_dir)
    prefix = "text_model.model."
    try:
        words = state[prefix + "embeddings.word_embeddings.weight"]
        positions = state[prefix + "embeddings.position_embeddings.weight"]
        types = state[prefix + "embeddings.token_type_embeddings.weight"]
        inner = state[prefix + "encoder.layer.0.intermediate.dense.weight"]
    except KeyError as err:
        raise DataError(f"the checkpoint lacks the text encoder's {err.args[0]}") from err
    layers = {k.split(".")[4] for k in state if k.startswith(prefix + "encoder.layer.")}
    hidden = words.shape[1]
    return transformers.BertConfig(
        vocab_size=words.shape[0],
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=inner.shape[0],
        max_position_embeddings=positions.shape[0],
        type_vocab_size=types.shape[0],
    )


def check_published(state: dict[str, Tensor], expected: set[str], kind: Publisher, path: Path):
    """Name the publisher's tensors that are missing or not expected, before any shape check."""
    extra = EXTRA[kind]
    missing = sorted(expected - set(state))
    missing += sorted(k for k in extra if k not in state)
    unexpected = sorted(set(state) - expected - LEGACY - set(extra))
    if missing or unexpected:
        shown = [f"missing {len(missing)}: {missing[:8]}" if missing else ""]
        shown += [f"unexpected {len(unexpected)}: {unexpected[:8]}" if unexpected else ""]
        raise DataError(
            f"{path} is not a complete {kind} checkpoint ({len(state)} tensors; "
            + "; ".join(s for s in shown if s)
            + ")"
        )
    for name, shape in extra.items():
        if tuple(state[name].shape) != shape:
            raise DataError(f"{path}: {name} has shape {tuple(state[name].shape)}, not {shape}")


def import_published(
    kind: Publisher,
    path: str | Path,
    out: str | Path,
    tokenizer: str | Path | None = None,
    image_size: int = 512,
) -> Path:
    """Write the model folder ``out`` holding published ``kind`` weights, and return it.

    ``tokenizer`` is the text model's local folder (Bio_ClinicalBERT): its tokenizer (and
    config, when it has one) go into the folder; without it the model embeds images only.
    """
    if kind not in EXTRA:
        raise DataError(f"unknown publisher {kind!r}; choose from {sorted(EXTRA)}")
    path, out = Path(path), Path(out)
    text_dir = Path(tokenizer) if tokenizer is not None else None
    if text_dir is not None and not text_dir.is_dir():
        raise DataError(f"--tokenizer {text_dir} is not a folder (a local Bio_ClinicalBERT)")
    state = read_published(path)
    for name in ("logit_scale", "vision_model.projection_head_vision.projection.weight"):
        if name not in state:  # read before the full check: they size the model
            raise DataError(f"{path} has no {name}; is it a {kind} checkpoint?")
    created = not out.exists()
    try:
        _write(kind, path, out, state, text_dir, image_size)
    except BaseException:
        if created:  # a refused import leaves no half-written folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def publisher_names(ours: dict[str, Tensor]) -> dict[str, str]:
    """Publisher's name -> fundus-lit name, for every tensor the FLAIR-shaped encoder holds."""
    names = {}
    for key in ours:
        for theirs, mine in PREFIXES.items():
            if key == mine or (mine.endswith(".") and key.startswith(mine)):
                names[theirs + key[len(mine) :]] = key
    return names


def _write(
    kind: Publisher,
    path: Path,
    out: Path,
    state: dict[str, Tensor],
    text_dir: Path | None,
    image_size: int,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    bert_config(state, text_dir).save_pretrained(out / TEXT_CONFIG)
    proj = state["vision_model.projection_head_vision.projection.weight"]
    config = DualEncoderConfig(
        VisionConfig(name="resnet50", mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0]),
        TextConfig(name=TEXT_CONFIG, pooling="flair", max_length=77, pretrained=False),
        embed_dim=proj.shape[0],
        image_size=image_size,
        projection="normalized_linear",
        temperature=math.exp(-float(state["logit_scale"])),
    )
    encoder = DualEncoder.from_config(config.for_saved_weights(text_name=str(out / TEXT_CONFIG)))
    ours = encoder.state_dict()
    names = publisher_names(ours)
    check_published(state, set(names), kind, path)
    mapped = {mine: state[theirs] for theirs, mine in names.items()}
    check_keys(f"{kind} checkpoint {path}", "the FLAIR architecture", ours, mapped)
    preprocessing = {"crop_fov": False, "image_size": image_size, "resize": "flair"}
    saved = folder_config(
        config,
        preprocessing,
        source_checkpoint=path.name,
        source=kind,
        source_extra_tensors=sorted(EXTRA[kind]),
        tokenizer=text_dir is not None,
    )
    write_model_folder(out, mapped, saved)
    if text_dir is not None:
        load_tokenizer(str(text_dir)).save_pretrained(out / TOKENIZER)
