"""ViLReF from the CLI: synth --reports -> labels -> fit the recipe on the report CSV with a
momentum queue, logging the WSC diagnostics; the queue is in the checkpoint."""

import csv
import json
from pathlib import Path

import torch

from fundus_lit.cli import cli_main, main

ROOT = Path(__file__).resolve().parents[1]


def test_synth_reports_labels_and_fit_vilref(tmp_path, capsys):
    data = tmp_path / "data"
    main(
        [
            "synth",
            "--out",
            str(data),
            "--n",
            "24",
            "--size",
            "64",
            "--seed",
            "2",
            "--reports",
            "true",
        ]
    )
    table = data / "reports.csv"
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and {"image", "report", "labels"} <= set(rows[0])

    labelled = tmp_path / "labelled.csv"
    main(["labels", f"--reports={table}", f"--out={labelled}", "--top=5"])
    out = capsys.readouterr().out
    assert "coverage" in out.lower() and labelled.is_file()

    source = {"class_path": "fundus_lit.data.ReportCSVSource", "init_args": {"csv": str(table)}}
    wsc = {
        "class_path": "fundus_lit.objectives.WSCObjective",
        "init_args": {"momentum": 0.9, "queue_size": 8},
    }
    cli = cli_main(
        [
            "fit",
            f"--config={ROOT / 'recipes' / 'vilref.yaml'}",
            f"--config={ROOT / 'recipes' / 'overlays' / 'tiny.yaml'}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--trainer.max_steps=3",
            "--trainer.limit_val_batches=1",
            "--trainer.log_every_n_steps=1",
            f"--data.init_args.train={json.dumps([source])}",
            "--data.init_args.val=null",
            "--data.init_args.val_fraction=0.25",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--data.init_args.image_size=64",
            "--model.init_args.vision.name=test_resnet",
            f"--model.init_args.objectives={json.dumps([wsc])}",
        ]
    )
    logged = cli.trainer.callback_metrics
    for key in ("train/wsc", "train/wsc/false_negatives", "train/wsc/negative_weight"):
        assert bool(torch.isfinite(logged[key]))
    assert float(logged["train/wsc/queue_fill"]) == 1.0  # 2 of 3 steps enqueued 4 keys each
    objective = cli.model.objectives[0]
    assert int(objective.queue_fill) == 8 and objective.label_queue.shape[0] == 8
    ckpt = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=True)
    saved = ckpt["state_dict"]
    assert torch.equal(saved["objectives.0.label_queue"], objective.label_queue.cpu())
    assert any(k.startswith("objectives.0.momentum_encoder.") for k in saved)
