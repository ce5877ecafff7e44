"""What ``--ckpt_path last`` means on the command line: the newest last checkpoint of this recipe's
earlier runs, and the run folder it belongs to."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from jsonargparse import Namespace, dict_to_namespace

log = logging.getLogger(__name__)


def find_last(run_dirs: list[Path], extra: list[Path] = ()) -> Path | None:
    """The newest ``last*.ckpt`` under the version folders of a run (and Lightning's SLURM
    ``hpc_ckpt_*.ckpt`` files in ``extra`` folders)."""
    candidates: list[Path] = []
    for run_dir in run_dirs:
        candidates += run_dir.glob("version_*/checkpoints/last*.ckpt")
        candidates += run_dir.glob("checkpoints/last*.ckpt")
    for folder in extra:
        candidates += folder.glob("hpc_ckpt_*.ckpt")
    candidates = [c for c in candidates if c.is_file()]
    return max(candidates, key=os.path.getmtime) if candidates else None


def resolve_last(config: Namespace) -> None:
    """``--ckpt_path last``: the newest last checkpoint of this recipe's earlier runs, and
    the run folder (logger version) it belongs to, so logs and checkpoints continue there.

    ``config`` is the parsed config of one trainer verb (``trainer``, ``ckpt_path`` and the
    ``checkpoint``/``step_checkpoint`` groups); its ``ckpt_path`` and logger version are set in
    place. Lightning looks for ``last.ckpt`` only in the folder of the run it is starting, which
    for a versioned logger is a new, empty one. No checkpoint yet starts from scratch (the
    first submission of a requeued cluster job runs the same command)."""
    trainer = config.trainer
    root = Path(trainer.get("default_root_dir") or os.getcwd())
    logger = trainer.get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    run_dirs: list[Path] = []
    if logger is None or logger is True:  # Lightning's default TensorBoard logger
        trainer.logger = logger = dict_to_namespace(
            {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(root)},
            }
        )
    if logger:
        args = logger.get("init_args") or {}
        save_dir = Path(args.get("save_dir") or root)
        name = args.get("name", "lightning_logs")
        run_dirs.append(save_dir / name if name else save_dir)
    else:
        run_dirs.append(root)
    for group in ("checkpoint", "step_checkpoint"):
        dirpath = config.get(group, {}).get("dirpath")
        if dirpath:
            run_dirs.append(Path(dirpath).parent)
    found = find_last(run_dirs, extra=[root])
    if found is None:
        print(
            f"fundus-lit: no last checkpoint under {', '.join(map(str, run_dirs))}; "
            "starting from scratch",
            file=sys.stderr,
        )
        config.ckpt_path = None
        return
    print(f"fundus-lit: resuming from {found}", file=sys.stderr)
    config.ckpt_path = str(found)
    version = found.parent.parent.name
    if logger and found.parent.name == "checkpoints" and version.startswith("version_"):
        logger.init_args.version = version
