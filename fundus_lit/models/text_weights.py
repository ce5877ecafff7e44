"""Load the text tower weights of a text pretraining run (KeepFIT v2 stage 0) into a text tower.

Stage 1 builds its text tower from ``text.name`` (stage 0's base model: config, tokenizer and
architecture) and then takes the weights from ``text.init_weights``, so the tokenizer and the
model code stay the published ones while the weights are the domain-adapted ones. The usual
mistake is a ``text.name`` that is not stage 0's base; the errors here say which two models
disagree and how, instead of PyTorch's wall of key names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import ModelNotFoundError

__all__ = ["EXPORT_INFO", "STAGE0_COMMAND", "load_stage0_weights", "read_stage0_weights"]

#: Written next to the weights by :func:`fundus_lit.text_pretrain.export_text_tower`.
EXPORT_INFO = "fundus_lit_text.json"
STAGE0_COMMAND = "fundus-lit fit --config recipes/keepfit_v2_text.yaml"
_CKPT_PREFIX = "text_model."
_SHOWN = 5


def _not_found(path: Path, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"text.init_weights {str(path)!r} {what}; it should be the text tower exported by stage 0 "
        f"(`{STAGE0_COMMAND}` writes it to its model.init_args.save_dir, "
        "runs/keepfit_v2_text/text_tower by default) or that run's TextPretrainModule .ckpt"
    )


def _folder_state(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a large tower saved in shards
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise _not_found(
        folder, "is a folder without weights (no model.safetensors or pytorch_model.bin)"
    )


def _ckpt_state(path: Path) -> tuple[dict[str, Tensor], dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    tower = {k[len(_CKPT_PREFIX) :]: v for k, v in state.items() if k.startswith(_CKPT_PREFIX)}
    if not tower:
        raise _not_found(
            path, "holds no text_model.* weights (not a TextPretrainModule checkpoint)"
        )
    text = ckpt.get("hyper_parameters", {}).get("text", {})
    return tower, {"base": text.get("name")} if text.get("name") else {}


def read_stage0_weights(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The tower's state dict and what stage 0 recorded about it (``fundus_lit_text.json`` of an
    exported folder, the text config of a checkpoint; empty when unknown)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise _not_found(path, "does not exist")
    if path.is_dir():
        info_file = path / EXPORT_INFO
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        return _folder_state(path), info
    if path.suffix == ".ckpt":
        return _ckpt_state(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path), {}
    raise _not_found(path, "is neither an exported folder, a .ckpt nor a .safetensors file")


def _describe(info: dict) -> str:
    parts = [f"base {info['base']!r}"] if info.get("base") else []
    if info.get("architecture"):
        parts.append(str(info["architecture"]))
    if info.get("hidden_size") is not None:
        parts.append(f"hidden size {info['hidden_size']}")
    if info.get("num_hidden_layers") is not None:
        parts.append(f"{info['num_hidden_layers']} layers")
    return ", ".join(parts) or "architecture not recorded"


def _model_info(model: nn.Module, name: str) -> dict:
    config = getattr(model, "config", None)
    return {
        "base": name,
        "architecture": type(model).__name__,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
    }


def _align_prefix(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Weights saved from a task model (``BertForMaskedLM``: ``bert.`` + a ``cls.`` head) fit the
    bare encoder once the base model's prefix is stripped; the task head is not part of it."""
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix:
        return state
    dotted = f"{prefix}."
    own = model.state_dict()
    if any(k.startswith(dotted) for k in own) or not any(k.startswith(dotted) for k in state):
        return state
    return {k[len(dotted) :]: v for k, v in state.items() if k.startswith(dotted)}


def load_stage0_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Fill ``model`` (built from ``text.name`` = ``name``) with stage 0's weights from ``path``:
    an exported folder, a TextPretrainModule ``.ckpt`` or a ``.safetensors`` file.

    Raises :class:`ModelNotFoundError` when the path holds no weights or they belong to another
    architecture, naming both models and the first differing keys.
    """
    from fundus_lit.core.checkpoint import check_keys

    state, info = read_stage0_weights(path)
    state = _align_prefix(state, model)
    built = _model_info(model, name)
    try:
        check_keys(
            f"the stage-0 weights {str(path)!r} ({_describe(info)})",
            f"the text tower that text.name builds ({_describe(built)})",
            model.state_dict(),
            state,
            shown=_SHOWN,
        )
    except DataError as err:
        raise ModelNotFoundError(
            f"{err}\ntext.name must be the model stage 0 started from (its "
            "model.init_args.text.name), so that the architecture and tokenizer match"
        ) from err
    model.load_state_dict(state)
