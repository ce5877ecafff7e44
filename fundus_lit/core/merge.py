"""Merging recipe layers key by key, with the file that set each key recorded, and objectives merged
by name (``name: null`` removes one). The rules are in :mod:`fundus_lit.core.compose`'s docstring.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from fundus_lit.core.errors import ConfigError

OBJECTIVES = ("model", "init_args", "objectives")
Key = tuple[str, ...]


def merge(
    base: dict,
    delta: dict,
    source: str,
    sources: dict[Key, str],
    at: Key = (),
    delta_sources: dict[Key, str] | None = None,
    strict: bool = True,
) -> dict:
    """``delta`` over ``base`` (neither is modified). ``sources`` records, per key, the file that
    set it: ``source``, or for an already merged layer its own ``delta_sources``. Not ``strict``,
    a change to (or removal of) an objective ``base`` lacks stays a pending delta: one file read
    alone (an overlay that tunes an objective of the recipe before it) can't know them yet."""

    def record(key: Key) -> None:
        for old in [k for k in sources if k[: len(key)] == key]:
            del sources[old]
        if delta_sources is None:
            sources[key] = source
        else:
            sources.update({k: v for k, v in delta_sources.items() if k[: len(key)] == key})

    out = dict(base)
    for raw_key, value in delta.items():
        key = str(raw_key)
        here = (*at, key)
        if here == OBJECTIVES and isinstance(value, dict):
            out[key] = _merge_objectives(
                out.get(key), value, source, sources, delta_sources, strict
            )
            continue
        elif key.endswith("+") and isinstance(value, list):
            plain = key[:-1]
            if isinstance(out.get(plain), list):
                out[plain] = [*out[plain], *value]
                record((*at, plain))
            else:
                out[key] = [*(out.get(key) or []), *value]
                record(here)
            continue
        elif isinstance(value, dict) and value:  # key by key, so each leaf keeps its file
            into = out.get(key)
            if not (isinstance(into, dict) and _same_class(into, value)):
                into = {}
                record(here)
            out[key] = merge(into, value, source, sources, here, delta_sources, strict)
            continue
        else:
            out[key] = value
            out.pop(f"{key}+", None)  # a list given whole replaces what was to be appended
        record(here)
    return out


def _same_class(base: dict, delta: dict) -> bool:
    """A different ``class_path`` starts the value afresh (its ``init_args`` belong to another
    class); the same one, or none, merges into it."""
    return "class_path" not in delta or delta.get("class_path") == base.get("class_path")


def objective_name(entry: Any, index: int) -> str:
    """The name of a list entry: its ``init_args.name``, else its class's default logged name
    (``CLIPObjective`` -> ``clip``), else its position."""
    if isinstance(entry, dict):
        name = (entry.get("init_args") or {}).get("name")
        if name:
            return str(name)
        cls = str(entry.get("class_path", "")).rsplit(".", 1)[-1]
        if cls:
            return _DEFAULT_NAMES.get(cls, cls.removesuffix("Objective").lower())
    return str(index)


_DEFAULT_NAMES = {"PseudoSegObjective": "pseudo_seg"}


def _as_mapping(value: Any) -> dict:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return {objective_name(e, i): e for i, e in enumerate(value)}
    return {}


def _merge_objectives(base, delta: dict, source, sources, delta_sources, strict) -> dict:
    out = _as_mapping(base)
    for name, entry in delta.items():
        name = str(name)
        here = (*OBJECTIVES, name)
        if entry is None:
            if name not in out and strict:
                raise ConfigError(_unknown_objective(source, name, out, "remove"))
            if name not in out or out[name] is None:
                out[name] = None  # a pending removal, checked when the file is stacked
                continue
            del out[name]
            for old in [k for k in sources if k[: len(here)] == here]:
                del sources[old]
            continue
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{source}: {'.'.join(here)}: expected {{class_path: ..., init_args: {{...}}}} "
                f"or null, got {entry!r}"
            )
        if name not in out and "class_path" not in entry and strict:
            raise ConfigError(_unknown_objective(source, name, out, "change"))
        merged = merge(
            {name: out.get(name) or {}},
            {name: entry},
            source,
            sources,
            OBJECTIVES,
            delta_sources,
            strict,
        )
        out[name] = merged[name]
    return out


def _unknown_objective(source: str, name: str, known: dict, what: str) -> str:
    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return (
        f"{source}: {'.'.join(OBJECTIVES)}.{name}: no objective named {name!r} to {what} "
        f"(known: {', '.join(known) or 'none'}){hint}; a new objective needs a class_path"
    )


_OBJECTIVE_FLAG = "--" + ".".join(OBJECTIVES) + "."


def objective_change(arg: str, following: str | None) -> dict | None:
    """``--model.init_args.objectives.NAME.KEY=VALUE`` (or ``... VALUE``) as a config layer that
    changes objective NAME: the parsed config holds objectives as a list, so jsonargparse can't
    address one by name, while the merge does (and says which names exist)."""
    if not arg.startswith(_OBJECTIVE_FLAG):
        return None
    key, eq, value = arg[len(_OBJECTIVE_FLAG) :].partition("=")
    path = key.split(".")
    if not path[0] or path[0].isdigit():  # a list index: jsonargparse's own
        return None
    if not eq:
        if following is None:
            return None
        value = following
    leaf: Any = yaml.safe_load(value)
    for part in reversed([*OBJECTIVES, *path]):
        leaf = {part: leaf}
    return leaf
