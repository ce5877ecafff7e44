"""Progress bars of the long-running verbs (fundus_lit/core/progress.py): a bar with count, rate
and ETA on a terminal; nothing in a log file, a pipe or a CI capture, nor with --quiet or
FUNDUS_LIT_QUIET."""

import io
import re
import sys

import pytest

from fundus_lit.cli import main
from fundus_lit.core import progress as progress_module
from fundus_lit.core.progress import progress, set_quiet, shows_progress

#: what tqdm's default bar ends with: "n/total [elapsed<remaining, rate]"
BAR = re.compile(r"(\d+)/(\d+) \[\d\d:\d\d<(\d\d:\d\d|\?), ")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (one that reports no size, as some job shells do)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def loud(monkeypatch):
    """Each test starts with bars allowed and leaves them so for the next."""
    monkeypatch.delenv(progress_module.QUIET_ENV, raising=False)
    set_quiet(False)
    yield
    set_quiet(False)


@pytest.fixture
def terminal(monkeypatch):
    """Call in the test body: pytest's capture puts its own stderr back after fixture setup."""

    def install() -> Terminal:
        stream = Terminal()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


def test_on_a_terminal_the_bar_shows_count_total_rate_and_eta(terminal):
    stderr = terminal()
    assert list(progress(range(7), desc="encoding test", unit="img")) == list(range(7))
    written = stderr.getvalue()
    assert "encoding test" in written and "img/s" in written
    counts = [(int(n), int(total), eta) for n, total, eta in BAR.findall(written)]
    assert counts[0][:2] == (0, 7) and counts[-1][:2] == (7, 7)
    assert re.fullmatch(r"\d\d:\d\d", counts[-1][2])  # the ETA field, filled once it runs


def test_update_and_context_manager_drive_a_bar_without_an_iterable(terminal):
    stderr = terminal()
    with progress(total=10, desc="prepare", unit="img") as bar:
        bar.update(4)
        bar.update(6)
    assert ("10", "10") in {m[:2] for m in BAR.findall(stderr.getvalue())}


def test_silent_when_stderr_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    assert not shows_progress()
    with progress(total=3, desc="x") as bar:
        bar.update(3)
    assert list(progress([1, 2], desc="y")) == [1, 2]
    assert stream.getvalue() == ""


@pytest.mark.parametrize("how", ["flag", "env"])
def test_silent_on_a_terminal_when_quiet(terminal, monkeypatch, how):
    stderr = terminal()
    if how == "flag":
        set_quiet(True)
    else:
        monkeypatch.setenv(progress_module.QUIET_ENV, "1")
    assert not shows_progress()
    assert list(progress(range(3), desc="x")) == [0, 1, 2]
    assert stderr.getvalue() == ""
    monkeypatch.setenv(progress_module.QUIET_ENV, "0")  # an explicit "no" is not quiet
    set_quiet(False)
    assert shows_progress()


def test_disable_drops_one_bar_only(terminal):
    stderr = terminal()
    list(progress(range(3), desc="inner", disable=True))
    assert stderr.getvalue() == ""
    list(progress(range(3), desc="outer"))
    assert "outer" in stderr.getvalue()


def test_synth_shows_a_bar_on_a_terminal_only_without_quiet(tmp_path, terminal, capsys):
    stderr = terminal()
    args = ["synth", "--n", "2", "--size", "48", "--sites", "1"]
    main([*args, "--out", str(tmp_path / "a"), "--quiet"])
    assert stderr.getvalue() == ""
    assert "synth_a.csv" in capsys.readouterr().out  # the command's own output is unchanged

    main([*args, "--out", str(tmp_path / "b"), "--quiet=false"])
    assert ("2", "2") in {m[:2] for m in BAR.findall(stderr.getvalue())}


def test_synth_is_silent_on_a_captured_stderr(tmp_path, capsys):
    main(["synth", "--n", "2", "--size", "48", "--sites", "1", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert captured.err == "" and "synth_a.csv" in captured.out


def test_labels_quiet_and_prepare_progress_alias(tmp_path, terminal, capsys):
    stderr = terminal()
    reports = tmp_path / "reports.csv"
    reports.write_text("image,report\na.png,optic disc cupping\nb.png,no abnormality\n")
    main(["labels", "--reports", str(reports), "--quiet"])
    assert stderr.getvalue() == "" and "reports: 2" in capsys.readouterr().out
    main(["labels", "--reports", str(reports)])
    assert ("2", "2") in {m[:2] for m in BAR.findall(stderr.getvalue())}

    from fundus_lit.synthetic import write_flair_dataset

    (csv,) = write_flair_dataset(tmp_path / "raw", n=2, size=48, sites=1)
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: fundus_lit.FundusDataModule\n  init_args:\n"
        f"    train: [{{class_path: fundus_lit.data.FlairCSVSource, init_args: {{csv: {csv}}}}}]\n"
    )
    stderr.seek(0)
    stderr.truncate()
    main(["prepare", "--config", str(config), "--out", str(tmp_path / "p"), "--progress=false"])
    written = stderr.getvalue()
    assert "--progress is deprecated" in written and "use --quiet" in written
    assert not BAR.search(written)  # --progress false still silences the bar


VERBS_WITH_BARS = ("evaluate", "zeroshot", "index", "search", "prepare")
VERBS_WITH_BARS += ("synth", "caption", "labels")


@pytest.mark.parametrize("verb", VERBS_WITH_BARS)
def test_every_long_running_verb_has_the_same_quiet_flag(verb):
    import importlib

    from fundus_lit.cli import COMMANDS

    parser = importlib.import_module(f"fundus_lit.commands.{COMMANDS[verb]}").build_parser()
    (action,) = [a for a in parser._actions if a.dest == "quiet"]
    assert action.option_strings == ["--quiet"] and action.default is False
    assert action.help.startswith(progress_module.QUIET_HELP)
