"""The embedding projector (issue 23): a short fit and an evaluate on its checkpoint write the
image embeddings, metadata and thumbnails that TensorBoard's own projector plugin serves; the
sample is capped and the same every run; two gloo ranks write what one process writes."""

from __future__ import annotations

import io
import json
import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from fundus_lit.callbacks import EmbeddingProjector
from fundus_lit.cli import cli_main, main
from fundus_lit.data import SyntheticSource
from fundus_lit.data.records import FundusRecord
from fundus_lit.eval.projector import (
    HEADER,
    MAX_SPRITE_SIDE,
    ProjectorOptions,
    metadata_row,
    project_split,
    sample_points,
    tile_size,
    write_projector,
)

ROOT = Path(__file__).resolve().parents[1]
N_VAL, N_TEST, FIT_POINTS = 12, 9, 10


def synthetic(n: int, offset: int) -> dict:
    args = {"n": n, "size": 64, "seed": 0, "offset": offset}
    return {"class_path": "fundus_lit.data.SyntheticSource", "init_args": args}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step fit (one validation epoch of 12 images, projector capped at 10), then an
    evaluate of its last checkpoint on 9 other images, into the same run directory."""
    root = tmp_path_factory.mktemp("projector")
    fit = cli_main(
        [
            "fit",
            f"--config={ROOT / 'recipes' / 'clip.yaml'}",
            f"--config={ROOT / 'recipes' / 'overlays' / 'tiny.yaml'}",
            f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.save_dir={root / 'runs'}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]",  # the projector is there without being named
            f"--data.init_args.train={json.dumps([synthetic(8, 0)])}",
            f"--data.init_args.val={json.dumps([synthetic(N_VAL, 1_000_000)])}",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
            "--data.init_args.image_size=64",
            "--model.init_args.vision.name=test_resnet",
            f"--projector.max_points={FIT_POINTS}",
        ]
    )
    log_dir = Path(fit.trainer.log_dir)
    config = root / "eval.yaml"
    data = {"test": [synthetic(N_TEST, 2_000_000)], "num_workers": 0, "batch_size": 4}
    evaluation = {
        "data": {"class_path": "fundus_lit.FundusDataModule", "init_args": data},
        "tasks": "retrieval",
        "retrieval": {"tasks": ["i2t"]},
    }
    config.write_text(json.dumps(evaluation))
    ckpt = log_dir / "checkpoints" / "last.ckpt"
    main(["evaluate", f"--ckpt={ckpt}", f"--config={config}"])
    projector = next(cb for cb in fit.trainer.callbacks if isinstance(cb, EmbeddingProjector))
    return SimpleNamespace(root=root, log_dir=log_dir, ckpt=ckpt, config=config, fit=projector)


def projector_plugin(log_dir: Path):
    """TensorBoard's projector plugin on ``log_dir``'s parent, as ``tensorboard --logdir``
    serves it: a function of (route, query) to the response."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    logdir = str(log_dir.parent)
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, logdir)
    context = base_plugin.TBContext(logdir=logdir, data_provider=provider, multiplexer=mux)
    apps = ProjectorPlugin(context).get_plugin_apps()
    return lambda route, **query: Client(apps[route]).get("/", query_string=query)


def test_fit_and_evaluate_write_what_tensorboard_projector_serves(run):
    get = projector_plugin(run.log_dir)
    name = run.log_dir.name
    assert get("/runs").get_json() == [name]
    embeddings = {e["tensorName"]: e for e in get("/info", run=name).get_json()["embeddings"]}
    assert set(embeddings) == {"fit_val_step2", "evaluate_test_step2"}  # evaluate added its own
    val = SyntheticSource(n=N_VAL, size=64, offset=1_000_000).load()
    test = SyntheticSource(n=N_TEST, size=64, offset=2_000_000).load()
    picked = [val[i] for i in sample_points(N_VAL, FIT_POINTS).tolist()]
    for tensor, records in (("fit_val_step2", picked), ("evaluate_test_step2", test)):
        n, dim = embeddings[tensor]["tensorShape"]
        assert n == len(records) and dim == 128
        served = np.frombuffer(get("/tensor", run=name, name=tensor).data, dtype=np.float32)
        assert served.size == n * dim and np.isfinite(served).all()
        lines = get("/metadata", run=name, name=tensor).get_data(as_text=True).splitlines()
        assert lines[0].split("\t") == list(HEADER)
        assert [line.split("\t") for line in lines[1:]] == [metadata_row(r) for r in records]
        sprite = get("/sprite_image", run=name, name=tensor)
        assert sprite.mimetype == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(sprite.data)).convert("RGB"))
        cols = math.ceil(math.sqrt(n))
        assert embeddings[tensor]["sprite"]["singleImageDim"] == [32, 32]
        assert pixels.shape == (math.ceil(n / cols) * 32, cols * 32, 3)
        tiles = [pixels[(i // cols) * 32 :][:32, (i % cols) * 32 :][:, :32] for i in range(n)]
        assert all(tile.std() > 5 for tile in tiles)  # every point has its fundus, none blank
    # the fit's rows are the last validation epoch's, in split order
    indices, emb, _, step = run.fit.last
    assert indices.tolist() == sample_points(N_VAL, FIT_POINTS).tolist() and step == 2
    written = np.loadtxt(run.fit.written / "tensors.tsv", delimiter="\t", dtype=np.float32)
    np.testing.assert_allclose(written, emb.numpy(), rtol=1e-5, atol=1e-6)


def test_max_points_zero_writes_no_projector(tmp_path):
    from fundus_lit.commands.evaluate import build_parser

    source = SyntheticSource(n=3, size=64)
    split = [(source, record) for record in source.load()]
    records = [record for _, record in split]
    data = {"class_path": "fundus_lit.FundusDataModule", "init_args": {"test": [synthetic(3, 0)]}}
    args = ["--ckpt=x", f"--data={json.dumps(data)}", "--projector.max_points=0"]
    off = build_parser().parse_args(args).projector  # what `evaluate` hands over
    assert project_split(tmp_path, "a", torch.ones(3, 2), records, split, off) is None
    assert not list(tmp_path.iterdir())
    on = ProjectorOptions(max_points=2, thumbnail_size=8)
    folder = project_split(tmp_path, "a", torch.ones(3, 2), records, split, on)
    assert len((folder / "metadata.tsv").read_text().splitlines()) == 3  # header + 2 points
    assert Image.open(folder / "sprite.png").size == (16, 8)


def test_metadata_is_escaped_and_an_entry_of_the_same_name_is_replaced(tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    odd = FundusRecord("x", "site\tA", ("dr\nsevere", "b"), ("noisy", "left\teye"))
    plain = FundusRecord("y", "site B")
    write_projector(tmp_path, "a", torch.ones(2, 3), [odd, plain])
    write_projector(tmp_path, "b", torch.zeros(2, 4), [plain, odd], torch.zeros(2, 3, 8, 8).byte())
    write_projector(tmp_path, "a", torch.ones(2, 5), [odd, plain])  # written again: replaced
    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert [(e.tensor_name, list(e.tensor_shape)) for e in config.embeddings] == [
        ("b", [2, 4]),
        ("a", [2, 5]),
    ]
    assert not config.embeddings[1].sprite.image_path  # no thumbnails given, no sprite
    rows = (tmp_path / "projector" / "a" / "metadata.tsv").read_text().split("\n")
    assert rows == [
        "dataset\tfirst category\tattributes",
        "site A\tdr severe\tnoisy, left eye",
        "site B\t\t",
        "",
    ]


def test_the_sample_is_capped_stable_and_the_sprite_stays_within_the_projector_limit():
    assert sample_points(5, 10).tolist() == [0, 1, 2, 3, 4]
    picked = sample_points(1000, 100)
    assert len(set(picked.tolist())) == 100 and picked.tolist() == sorted(picked.tolist())
    assert torch.equal(picked, sample_points(1000, 100))
    assert tile_size(1000, 32) == 32
    for n in (1, 7, 20_000, 100_000):
        side = tile_size(n, 32)
        assert 1 <= side <= 32 and math.ceil(math.sqrt(n)) * side <= MAX_SPRITE_SIDE


# two gloo ranks: 7 validation images dealt as a distributed sampler deals them (rank 1 gets
# image 0 again as padding); the projector keeps 5, each once, in split order
N_DDP, KEEP_DDP = 7, 5


def _ddp_rows(indices: list[int]):
    index = torch.tensor(indices)
    emb = torch.stack([torch.arange(4.0) + 10 * i for i in indices])
    images = torch.stack([torch.full((3, 16, 16), 20 * i, dtype=torch.uint8) for i in indices])
    return index, emb, images


def _projector_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        records = [FundusRecord(f"r{i}", f"site{i % 2}", (f"c{i}",)) for i in range(N_DDP)]
        logger = TensorBoardLogger(out_dir, name="", version=f"rank{rank}")
        trainer = SimpleNamespace(
            state=SimpleNamespace(fn="fit"),
            sanity_checking=False,
            datamodule=SimpleNamespace(splits={"val": [(None, r) for r in records]}),
            global_rank=rank,
            global_step=3,
            loggers=[logger],
        )
        module = SimpleNamespace(device=torch.device("cpu"))
        callback = EmbeddingProjector(max_points=KEEP_DDP, thumbnail_size=4)
        callback.on_validation_epoch_start(trainer, module)
        for indices in ([[0, 2], [4, 6]], [[1, 3], [5, 0]])[rank]:
            index, emb, images = _ddp_rows(indices)
            batch = SimpleNamespace(indices=index, images=images)
            callback.on_validation_batch_end(trainer, module, {"image_emb": emb}, batch, 0)
        callback.on_validation_epoch_end(trainer, module)
        callback.on_train_end(trainer, module)
        torch.save(callback.last, os.path.join(out_dir, f"last{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_write_each_sampled_image_once_in_split_order(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_projector_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    keep = sample_points(N_DDP, KEEP_DDP).tolist()
    indices, emb, thumbs, step = torch.load(tmp_path / "last0.pt")
    assert indices.tolist() == keep and step == 3
    _, expected, images = _ddp_rows(keep)
    assert torch.equal(emb, expected)
    assert thumbs.shape == (KEEP_DDP, 3, 4, 4)
    assert torch.equal(thumbs, images[:, :, :4, :4])  # a uniform image: the same thumbnail
    assert torch.load(tmp_path / "last1.pt") is None  # rank 1 keeps and writes nothing
    assert (tmp_path / "rank0" / "projector_config.pbtxt").is_file()
    assert not (tmp_path / "rank1").exists()
    rows = (tmp_path / "rank0" / "projector" / "fit_val_step3" / "metadata.tsv").read_text()
    assert rows.splitlines()[1:] == [f"site{i % 2}\tc{i}\t" for i in keep]
