"""The one progress bar every long-running verb shows (``evaluate``, ``index``, ``search``,
``prepare``, ``synth``, ``caption``, ``labels``).

A command that runs for minutes without a word looks hung, so each long loop reports how far it
is, how fast it goes and when it should end. The same bar in a CI log or a SLURM output file is
hundreds of carriage-return lines of noise, so it draws only on a terminal, and ``--quiet`` (or
``FUNDUS_LIT_QUIET=1`` for a whole job) turns it off there too. One helper keeps that rule in one
place; ``fundus-lit fit`` keeps Lightning's own bar.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["QUIET_HELP", "add_quiet_flag", "is_quiet", "progress", "set_quiet", "shows_progress"]

#: the environment variable that silences every bar of a job, whatever flags its commands get
QUIET_ENV = "FUNDUS_LIT_QUIET"
QUIET_HELP = (
    "no progress bars (they only draw when stderr is a terminal; FUNDUS_LIT_QUIET=1 does the "
    "same for every command)"
)

#: the (columns, rows) a bar assumes where the terminal reports no size
_FALLBACK_SIZE = (100, 24)

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Set from a command's ``--quiet``; each command sets it, so an in-process caller running
    several commands gets each one's own choice."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """``--quiet`` or ``FUNDUS_LIT_QUIET`` set to anything but ``0``, ``false``, ``no`` or empty."""
    env = os.environ.get(QUIET_ENV, "").strip().lower()
    return _quiet or env not in ("", "0", "false", "no")


def shows_progress(stream: IO[str] | None = None) -> bool:
    """Whether a bar would draw on ``stream`` (stderr by default): a terminal, and not quiet.
    A redirected or captured stream keeps only a command's real output."""
    if is_quiet():
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str,
    unit: str = "it",
    leave: bool = True,
    disable: bool = False,
) -> tqdm:
    """A tqdm bar on stderr (count/total, rate, ETA) that is a silent pass-through where
    :func:`shows_progress` says no, so callers never branch on it.

    Wrap an iterable (``total`` defaults to its length) or call ``update(n)`` on the returned
    object; use it as a context manager so an exception still closes the line. ``disable``
    lets a caller drop a bar that would not help (one item, a nested loop that ends at once).
    ``leave=False`` erases the bar when done, for inner loops whose outer bar stays.
    """
    stream = sys.stderr
    sized = _columns(stream) > 0
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        file=stream,
        dynamic_ncols=sized,
        ncols=None if sized else _FALLBACK_SIZE[0],
        nrows=None if sized else _FALLBACK_SIZE[1],
        disable=disable or not shows_progress(stream),
    )


def _columns(stream: IO[str]) -> int:
    """The terminal's width, 0 when unknown: on a pseudo-terminal that reports no size (some
    container and job-scheduler shells) tqdm would draw nothing at all."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def add_quiet_flag(parser: Any) -> None:
    """The ``--quiet`` option of every verb with a bar, named and documented alike (bare
    ``--quiet`` or ``--quiet true|false``, as a script sets it); the verb passes the parsed value
    to :func:`set_quiet`."""
    parser.add_argument("--quiet", type=bool, nargs="?", const=True, default=False, help=QUIET_HELP)
