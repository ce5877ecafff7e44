"""Reading checkpoints without running their code.

Every checkpoint fundus-lit reads goes through :func:`read_checkpoint`: weights-only unpickling
(tensors and plain containers), and one clear message naming the file for whatever else a file
can be (absent, truncated, random bytes, a pickle that would run code). A message never suggests
``weights_only=False``: a checkpoint from someone else could run anything when read that way.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from fundus_lit.core.errors import DataError


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, weights-only (plain hyper-parameters make that possible).

    A file that the weights-only unpickler refuses (a pickled object or global other than
    tensors and plain containers: possibly a tampered file) or cannot parse (random bytes, a
    truncated copy) is a :class:`DataError` naming it. The loader raises whatever the bytes
    provoke (UnpicklingError for a forbidden global, RuntimeError for a broken zip, EOFError for
    an empty file, KeyError for a text file), hence the broad catch; the message never suggests
    ``weights_only=False``, which would run the file's code.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise DataError(f"cannot read checkpoint {path}: {err}") from err
    except Exception as err:  # whatever the bytes provoke: see the docstring
        raise DataError(
            f"checkpoint {path} is not a readable weights-only checkpoint "
            f"({_unpickling_reason(err)}): it is truncated, corrupted, not a PyTorch checkpoint, "
            "or holds objects other than tensors and plain values; fundus-lit does not unpickle "
            "arbitrary objects"
        ) from err
    if not isinstance(ckpt, dict):
        raise DataError(
            f"checkpoint {path} holds a {type(ckpt).__name__}, not a training checkpoint (a dict "
            "with state_dict and hyper_parameters)"
        )
    return ckpt


def _unpickling_reason(err: Exception) -> str:
    """The first sentence of the line of PyTorch's weights-only error that says what was refused
    (the lines around it advise loading unsafely or allowlisting the global), or the error's type
    and first sentence."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    refused = [line for line in lines if re.search(r"unsupported (global|operand)", line, re.I)]
    if refused:
        return _first_sentence(refused[0].removeprefix("WeightsUnpickler error: "))
    first = _first_sentence(next((line for line in lines if line), ""))
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s", text, maxsplit=1)[0]


def check_resumable(model: dict[str, Tensor], found: dict[str, Tensor]) -> None:
    """:func:`check_keys` of a Lightning checkpoint's state against the model's.

    Buffers sized from the first batch (ViLReF's label queue) are empty until then and take the
    checkpoint's shape when loaded, so any shape of theirs fits."""
    expected = {
        k: found.get(k, v) if isinstance(v, Tensor) and v.numel() == 0 else v
        for k, v in model.items()
    }
    check_keys("the checkpoint", "the model built from the config", expected, found)


def check_keys(source: str, target: str, expected: dict, found: dict, shown: int = 8) -> None:
    """Refuse weights (``source``) that do not fit the model built from a config (``target``).

    PyTorch's message lists hundreds of keys in one line; this one names the first few missing
    and unexpected keys and the shape mismatches, which is what tells a user which tower differs.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        # tensors only: a module's extra state (the caption decoder's config) is checked by it
        if k in found and hasattr(v, "shape") and tuple(found[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{source} does not match {target}:"]
    for title, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if keys:
            more = f" ... and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"  {len(keys)} {title}: {', '.join(keys[:shown])}{more}")
    raise DataError("\n".join(parts))
