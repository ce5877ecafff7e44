"""The package's layers hold (pyproject.toml [tool.importlinter]): core at the bottom, models and
data independent, eval never importing objectives, no cycles. A violation fails CI here with
import-linter's report naming the offending import chain."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, "
        "no_logo=True))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_core_imports_nothing_else_from_the_package():
    for path in (ROOT / "fundus_lit" / "core").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["from"], ["import"]) and words[1].startswith("fundus_lit."):
                assert words[1].startswith("fundus_lit.core"), f"{path.name}: {line.strip()}"


#: A module past this many lines holds more than one job; split it along its seams (docs/
#: ARCHITECTURE.md says where each job lives) rather than raising the limit.
MAX_MODULE_LINES = 320


def test_modules_stay_small():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "fundus_lit").rglob("*.py")
    }
    large = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not large, f"modules over {MAX_MODULE_LINES} lines: {large}"
