"""Every benchmark script still imports: they run as scripts, outside the test suite, so a moved
module would otherwise break them silently (it did: load_tokenizer moved to core.resolve)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_imports():
    names = sorted(p.stem for p in BENCH.glob("*.py"))
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    run = subprocess.run(
        [sys.executable, "-c", code, *names], cwd=BENCH, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
