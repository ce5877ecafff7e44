"""Parse errors of the trainer command line in one or two lines: the file that set the key (or
the command line), the full key, and what was expected (the valid keys nearest to a misspelled
one, the type for a wrong value). jsonargparse's own message buries the key in a dump of Union
subtypes and the whole given value."""

from __future__ import annotations

import difflib
import importlib
import re
import sys

from fundus_lit.core import compose

_KEY = re.compile(r'^\s*(?:- )?Parser key "([^"]+)":')
_CLASS = re.compile(r"^\s*(?:- )?Problem with given class_path '([\w.]+)':")
_NOISE = re.compile(
    r"^\s*(- )?(Does not validate|Subtypes:|Errors:|Given value|Expected a <class 'NoneType'>)"
)
_UNKNOWN = (
    re.compile(r"Option '([^']+)' is not accepted"),
    re.compile(r"unrecognized arguments: --([\w.\[\]]+)"),
    re.compile(r'Key "([^"]+)" is not expected'),
)


def describe(message: str, parser=None, argv: list[str] | None = None) -> str:
    """``WHERE: KEY: what was expected``, or ``message`` unchanged when it is not about a key."""
    path: list[tuple[str, str]] = []  # ("key", name) / ("class", class_path), outermost first
    reason = None
    for line in message.splitlines():
        if m := _KEY.match(line):
            path.append(("key", m.group(1)))
        elif m := _CLASS.match(line):
            path.append(("class", m.group(1)))
        elif line.strip() and not _NOISE.match(line):
            reason = line.strip()
            break
    if reason is None:
        return message
    config = compose.LAST.config if compose.LAST else {}
    key, node, cls = _walk(path, config)
    unknown = next((m.group(1).split("=")[0] for r in _UNKNOWN if (m := r.search(reason))), None)
    if m := re.search(r"Group '([^']+)' does not accept option '([^']+)'", reason):
        unknown = f"{m.group(1)}.{m.group(2)}"
    if unknown:
        full = f"{key}.{'init_args.' if cls else ''}{unknown}" if key else unknown
        valid = _valid_keys(cls, parser, key) if cls or parser else []
        bad = unknown if cls else full
        near = difflib.get_close_matches(bad, valid, n=3, cutoff=0.6)
        if cls:
            near = [f"{_named(key)}.init_args.{n}" for n in near]
        what = f"unknown key; nearest valid: {', '.join(near)}" if near else "unknown key"
        if not near and valid:
            what += f"; valid: {', '.join(sorted(valid)[:12])}{' ...' if len(valid) > 12 else ''}"
    else:
        full = key
        what = re.sub(
            r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, got \2", reason
        )
    where = _where(full, argv)
    return f"{where}: {_named(full)}: {what}" if full else message


def _walk(path, config) -> tuple[str, object, str | None]:
    """The dotted key the error path leads to (list entries located by their class)."""
    key, node, cls = "", config, None
    for kind, name in path:
        if kind == "key":
            prefix = f"{key}.init_args." if cls else (f"{key}." if key else "")
            key = f"{prefix}{name}"
            node = _at(node, ("init_args", name) if cls else (name,))
            cls = None
        else:
            cls = name
            if isinstance(node, list):
                index = next(
                    (
                        i
                        for i, e in enumerate(node)
                        if isinstance(e, dict) and e.get("class_path") == name
                    ),
                    0,
                )
                key, node = f"{key}[{index}]", node[index] if index < len(node) else None
    return key, node, cls


def _at(node, keys):
    for k in keys:
        if isinstance(node, dict):
            node = node.get(k)
        else:
            return None
    return node


def _named(key: str) -> str:
    """``objectives[1]`` as ``objectives.pseudo_seg`` where the recipe names its objectives."""
    names = compose.LAST.objective_names if compose.LAST else []
    return re.sub(
        r"objectives\[(\d+)\]",
        lambda m: f"objectives.{names[int(m.group(1))]}" if int(m.group(1)) < len(names) else m[0],
        key,
    )


def _where(key: str, argv: list[str] | None) -> str:
    for arg in argv or []:
        given = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if given and (given == key or key.startswith(given + ".") or given.startswith(key + ".")):
            return "command line"
    source = compose.LAST.source_of(key) if compose.LAST and key else None
    return source or "config"


def _valid_keys(class_path: str | None, parser, key: str) -> list[str]:
    """Keys accepted by ``class_path`` (relative to its init_args), or by the trainer parser."""
    try:
        if class_path:
            from jsonargparse import ArgumentParser

            module, _, name = class_path.rpartition(".")
            sub = ArgumentParser(exit_on_error=False)
            sub.add_class_arguments(
                getattr(importlib.import_module(module), name), fail_untyped=False
            )
            return _dests(sub)
        return _dests(_subparser(parser))
    except Exception:  # listing keys is a courtesy; never hide the error itself
        return []


def _subparser(parser):
    action = getattr(parser, "_subcommands_action", None)
    if action is None:
        return parser
    command = next((a for a in sys.argv[1:] if a in action._name_parser_map), None)
    return action._name_parser_map.get(command or "fit", parser)


def _dests(parser) -> list[str]:
    out = []
    for action in parser._actions:
        dest = getattr(action, "dest", "")
        if dest and dest not in ("help", "config", "print_config", "==SUPPRESS=="):
            out.append(dest)
    return out


def exit_on_parse_error(parser, message: str, ex: BaseException | None) -> bool:
    """Print the concise form and exit 2; ``False`` where the parser must handle it itself
    (a nested parser trying a Union subtype, or jsonargparse's debug mode)."""
    from jsonargparse._common import debug_mode_active  # noqa: PLC0415

    if not parser.exit_on_error or debug_mode_active():
        return False
    argv = getattr(compose, "LAST_ARGV", None) or sys.argv[1:]
    print(f"fundus-lit: error: {describe(message, parser, argv)}", file=sys.stderr)
    sys.exit(2)
