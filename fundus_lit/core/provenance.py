"""Where a result came from: the commit and the machine, recorded next to every committed table
(benchmarks, studies) so a reader can rerun it or see why their numbers differ."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path


def commit(where: str | Path = ".") -> str:
    """Short hash of HEAD of the repository holding ``where``, with ``+dirty`` for uncommitted
    changes; ``unknown`` outside a git checkout."""
    cwd = Path(where)
    cwd = cwd if cwd.is_dir() else cwd.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def machine() -> dict:
    """CPU model and cores, native bf16 support, GPU name when there is one, Python and torch."""
    import torch

    from fundus_lit.core.precision import cpu_bf16

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), ""
            )
    except OSError:
        pass
    bf16 = cpu_bf16()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "native_bf16": bf16.native,
        "bf16_reason": bf16.reason,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def today() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
