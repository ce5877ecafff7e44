"""Recipe composition: the ``base:`` chain, named objectives and overlay needs, resolved into one
plain config before jsonargparse parses it.

A recipe YAML is a LightningCLI config plus a few reserved top-level keys, read here and never
seen by jsonargparse:

``base``
    One path or a list of paths, relative to the file that names them. Each base is resolved
    (its own bases first), the list applies in order, and this file merges over the result.
``description``
    One line saying what the recipe is (``fundus-lit recipes`` shows it).
``overlays``
    What the recipe needs with a named overlay, as data: ``{tiny: {add: [FILE, ...]}}`` merges the
    files after that overlay, ``{tiny: {instead: FILE}}`` uses FILE in its place. Inherited
    through ``base``.
``overlay``
    In an overlay file: its name (``overlay: tiny``), matched against ``overlays`` above.

Merging: mappings merge key by key (the later file wins), lists replace, ``key+: [...]`` appends
to the base's ``key`` (and stays ``key+`` when there is nothing to append to, so jsonargparse
appends to its defaults). ``model.init_args.objectives`` may be a mapping ``name -> {class_path,
init_args}``: a delta merges into an objective by name, ``name: null`` removes it, a new name
needs a ``class_path``. After merging, the mapping becomes the list ``PretrainModule`` takes (in
order), so parsed and saved configs hold the list form, which stays accepted as input (it
replaces the objectives wholesale).
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fundus_lit.core.errors import ConfigError
from fundus_lit.core.merge import OBJECTIVES, Key, merge, objective_change, objective_name

RESERVED = ("base", "description", "overlays", "overlay")
NOT_RECIPES = frozenset(
    {"overlays", "eval", "studies"}
)  # folders under recipes/ that hold no recipes
TRAINER_VERBS = ("fit", "validate", "test", "predict")
COMMAND_LINE = "the command line"


@dataclass
class Composed:
    """A resolved config: ``config`` is what jsonargparse gets (reserved keys stripped, objectives
    as a list); ``sources`` says which file last set each key (dotted, list form)."""

    config: dict
    files: list[Path] = field(default_factory=list)  # every file merged, in order
    sources: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    bases: list[Path] = field(default_factory=list)  # the first file's own ``base:``
    overlays: dict = field(default_factory=dict)
    objective_names: list[str] = field(default_factory=list)
    raw: dict[Key, str] = field(default_factory=dict)  # sources by key tuple, while merging

    def source_of(self, key: str) -> str | None:
        """The file that set ``key`` or the nearest enclosing key it set."""
        parts = key.split(".")
        while parts:
            found = self.sources.get(".".join(parts))
            if found:
                return found
            parts.pop()
        inside = [v for k, v in self.sources.items() if k.startswith(key + ".")]
        return inside[-1] if inside else None


#: the last resolution of the trainer command line and its arguments, for error messages
#: (see :mod:`fundus_lit.core.config_errors`)
LAST: Composed | None = None
LAST_ARGV: list[str] = []


# ------------------------------------------------------------------------------------- reading


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of keys, got {type(data).__name__}")
    return data


def _paths(value: Any, where: Path, key: str) -> list[Path]:
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{where}: {key} takes a path or a list of paths, got {value!r}")
    return [(where.parent / v).resolve() for v in values]


def _normalise_overlays(value: Any, where: Path) -> dict:
    """Overlay needs with absolute paths (they are relative to the file naming them)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: overlays: expected {{NAME: {{add: [FILE], instead: FILE}}}}")
    out = {}
    for name, need in value.items():
        need = need or {}
        unknown = set(need) - {"add", "instead", "add+"} if isinstance(need, dict) else {need}
        if unknown:
            raise ConfigError(
                f"{where}: overlays.{name}: unknown key(s) {sorted(map(str, unknown))}; "
                "expected add (files merged after the overlay) or instead (a file used instead)"
            )
        out[name] = {}
        for k, v in need.items():
            files = _paths(v, where, f"overlays.{name}.{k}")
            out[name][k] = files[0] if k == "instead" else files
    return out


def load(path: str | Path, _chain: tuple[Path, ...] = ()) -> Composed:
    """One recipe file with its ``base:`` chain resolved; objectives stay a mapping where the
    files give one (:func:`finalize` turns them into the list)."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"{_chain[-1]}: base cycle: {cycle}")
    if _chain and not path.is_file():
        raise ConfigError(f"{_chain[-1]}: base {path} does not exist")
    data = read_yaml(path)
    bases = _paths(data["base"], path, "base") if data.get("base") is not None else []
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{path}: description is one line of text, got {description!r}")
    own = dict(data)
    for key in ("base", "description"):
        own.pop(key, None)
    if "overlays" in own:
        own["overlays"] = _normalise_overlays(own["overlays"], path)
    result = Composed(config={}, description=description, bases=bases)
    for base in bases:
        layer = load(base, (*_chain, path))
        _merge_layer(result, layer.config, layer.raw, strict=False)
        result.files += layer.files
    _merge_layer(result, own, None, str(path), strict=False)
    result.files.append(path)
    return result


def _merge_layer(
    result: Composed, config: dict, sources: dict | None, source: str = "", strict: bool = True
) -> None:
    """A file read alone merges leniently (its objective changes may target an earlier
    ``--config``); stacking is strict, so a change nothing defines fails naming its file."""
    result.config = merge(result.config, config, source, result.raw, (), sources, strict)


def finalize(composed: Composed) -> Composed:
    """Reserved keys stripped and named objectives turned into the list jsonargparse takes;
    ``sources`` becomes dotted keys in that list form."""
    config = dict(composed.config)
    composed.overlays = config.pop("overlays", None) or {}
    for key in RESERVED:
        config.pop(key, None)
    rename: dict[str, str] = {}
    objectives = config.get("model", {}).get("init_args", {}).get("objectives")
    if isinstance(objectives, dict):
        composed.objective_names = list(objectives)
        rename = {name: f"[{i}]" for i, name in enumerate(objectives)}
        config["model"] = {
            **config["model"],
            "init_args": {**config["model"]["init_args"], "objectives": list(objectives.values())},
        }
    elif isinstance(objectives, list):
        composed.objective_names = [objective_name(e, i) for i, e in enumerate(objectives)]
    sources = {}
    for key, source in composed.raw.items():
        dotted = ".".join(key)
        if key[:3] == OBJECTIVES and len(key) > 3 and key[3] in rename:
            dotted = ".".join(OBJECTIVES) + rename[key[3]] + "".join(f".{k}" for k in key[4:])
        sources[dotted] = source
    composed.sources = sources
    composed.config = config
    return composed


# ------------------------------------------------------------------------------------- stacking


def compose(configs: list[str | Path | dict | tuple[str, dict]]) -> Composed:
    """Several configs stacked (later wins), each with its base chain, and the overlay needs the
    earlier ones declare applied: a file with ``overlay: NAME`` is replaced by the ``instead``
    file and followed by the ``add`` files that the configs before it declare for NAME. A dict
    is a config given as YAML text on the command line, a ``(source, dict)`` pair one named by
    its source. A file already applied at this level is not applied again (e.g. an overlay's
    declared need also given by hand)."""
    result = Composed(config={})
    applied: set[Path] = set()
    queue: list[str | Path | dict | tuple[str, dict]] = list(configs)
    first = True
    while queue:
        item = queue.pop(0)
        if isinstance(item, (dict, tuple)):
            source, layer_config = item if isinstance(item, tuple) else ("<--config text>", item)
            _merge_layer(result, layer_config, None, source)
            first = False
            continue
        path = Path(item).resolve()
        if path in applied:
            continue
        layer = load(path)
        name = layer.config.get("overlay")
        needs = (result.config.get("overlays") or {}).get(name) if name else None
        if needs and needs.get("instead") and needs["instead"] != path:
            queue.insert(0, needs["instead"])
            applied.add(path)
            continue
        if first:
            result.description, result.bases, first = layer.description, layer.bases, False
        _merge_layer(result, layer.config, layer.raw, str(path))
        result.files += layer.files
        applied.add(path)
        if needs:
            queue[:0] = [*needs.get("add", []), *needs.get("add+", [])]
    return finalize(result)


def resolve(path: str | Path) -> Composed:
    """One recipe, resolved (what ``fundus-lit fit --config PATH --print_config`` parses)."""
    return compose([path])


def resolve_cli_args(argv: list[str] | None) -> list[str] | None:
    """The trainer command line with every ``--config FILE`` replaced by one resolved config
    (YAML text), placed right after the verb so that every ``--KEY VALUE`` on the command line
    overrides every config file. ``None`` stands for ``sys.argv[1:]``, rewritten in place
    (LightningCLI reads it itself) and returned as ``None``."""
    global LAST, LAST_ARGV
    args = list(sys.argv[1:] if argv is None else argv)
    LAST_ARGV = args
    files: list[str] = []
    rest: list[str] = []
    named: list[tuple[str, dict]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
            i += 2
            continue
        change = objective_change(arg, args[i + 1] if i + 1 < len(args) else None)
        if change is not None:
            named.append((COMMAND_LINE, change))
            i += 1 if "=" in arg else 2
            continue
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    if not files and not named:
        LAST = None
        return argv
    configs: list[str | dict | tuple[str, dict]] = []
    for f in files:  # jsonargparse also takes a config as YAML text
        # text first: DDP's launcher re-runs sys.argv, which holds the resolved config as text,
        # and a path check on a long text fails (file name too long)
        inline = "\n" in f or f.lstrip().startswith("{")
        text = yaml.safe_load(f) if inline else None
        configs.append(text if isinstance(text, dict) else f)
    LAST = composed = compose([*configs, *named])
    at = 1 if rest and rest[0] in TRAINER_VERBS else 0
    text = yaml.safe_dump(composed.config, sort_keys=False)
    out = [*rest[:at], f"--config={text}", *rest[at:]]
    if argv is None:
        sys.argv[1:] = out
        return None
    return out


# ------------------------------------------------------------------------------------- discovery


def recipes_dir() -> Path:
    """``recipes/`` of the repository holding the package, else of the working directory."""
    repo = Path(__file__).resolve().parents[2] / "recipes"
    return repo if repo.is_dir() else Path("recipes").resolve()


def discover(folder: str | Path | None = None) -> list[Path]:
    """Every recipe YAML under ``folder`` (main recipes and ablations; not overlays, evaluation
    configs or studies), sorted: main recipes first."""
    folder = Path(folder) if folder else recipes_dir()
    found = [
        p for p in folder.rglob("*.yaml") if not NOT_RECIPES & set(p.relative_to(folder).parts[:-1])
    ]
    return sorted(found, key=lambda p: (len(p.relative_to(folder).parts), str(p)))


def overlay_files(folder: str | Path | None = None) -> dict[str, Path]:
    """Named overlays (files declaring ``overlay: NAME``) under ``folder/overlays``."""
    folder = Path(folder) if folder else recipes_dir()
    named = {}
    for p in sorted((folder / "overlays").glob("*.yaml")):
        name = (read_yaml(p) or {}).get("overlay")
        if name:
            named.setdefault(str(name), p)
    return named


def nearest(word: str, choices: list[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
