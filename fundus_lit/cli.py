"""The ``fundus-lit`` command: dispatch a verb to its module under :mod:`fundus_lit.commands`.

Each command module exposes ``build_parser()`` and ``run(args)``. Trainer verbs (fit, validate,
test, predict) share :mod:`fundus_lit.commands.train`, where LightningCLI parses the verb itself;
the project verbs get the arguments after theirs. A bad input (a missing file, a wrong value)
ends with one ``fundus-lit: error:`` line and exit status 2, a preempted run with 128 + signal.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import sys

from lightning.pytorch.utilities.exceptions import SIGTERMException

from fundus_lit.commands.errors import user_error
from fundus_lit.commands.train import cli_main
from fundus_lit.resume import exit_if_preempted

__all__ = ["cli_main", "main"]

TRAINER_VERBS = ("fit", "validate", "test", "predict")
#: verb -> module of fundus_lit.commands; a new verb is one line here and one module there
COMMANDS: dict[str, str] = {
    **{verb: "train" for verb in TRAINER_VERBS},
    "synth": "synth",
    "evaluate": "evaluate",
    "zeroshot": "zeroshot",
    "index": "index",
    "labels": "labels",
    "search": "search",
    "caption": "caption",
    "prepare": "prepare",
    "export": "export",
    "import": "import_weights",
    "recipes": "recipes",
    "summary": "summary",
    "ablate": "ablate",
}
PROJECT_VERBS = [verb for verb in COMMANDS if verb not in TRAINER_VERBS]


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: fundus-lit {" + ",".join(COMMANDS) + "} ...")
        print("  trainer verbs: fundus-lit fit --config recipes/clip.yaml [--config ...]")
        print("  project verbs: " + ", ".join(PROJECT_VERBS) + " (fundus-lit VERB --help)")
        sys.exit(0 if argv else 2)
    verb = argv[0]
    if verb not in COMMANDS and not verb.startswith("-"):  # LightningCLI would list its 4 only
        near = difflib.get_close_matches(verb, list(COMMANDS), n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        hint += f" (verbs: {', '.join(COMMANDS)})"
        print(
            f"fundus-lit: error: unknown verb {verb!r}{hint}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        if verb in TRAINER_VERBS or verb not in COMMANDS:  # LightningCLI reports the rest
            command = importlib.import_module("fundus_lit.commands.train")
            args = None if from_command_line else argv  # LightningCLI reads sys.argv itself
        else:
            command = importlib.import_module(f"fundus_lit.commands.{COMMANDS[verb]}")
            args = argv[1:]
        # Lightning ends a SIGTERMed run with SIGTERMException, a SystemExit of status 0
        with contextlib.suppress(SIGTERMException):
            command.run(args)
        exit_if_preempted()
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"fundus-lit: error: {cause}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
