"""Exact resume: a run killed (SIGKILL) or preempted (SIGTERM) at a random step and resumed with
``--ckpt_path last`` ends with the weights of a run that was never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from jsonargparse import dict_to_namespace
from torch.utils.data import DataLoader

from fundus_lit import resume
from fundus_lit.data.resumable import ResumableLoader
from fundus_lit.data.samplers import DatasetBalancedSampler, EpochSampler
from fundus_lit.resume import AtomicCheckpointIO, ExactResume, PreemptionCheckpoint, resolve_last
from tests.test_distributed import _free_port

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
STEPS_PER_EPOCH, EPOCHS = 4, 2


# -- the pieces ----------------------------------------------------------------------------------
class Keys(torch.utils.data.Dataset):
    """Returns the sampler's key itself: what a loader serves is then visible."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[int, int, int]:
        return key


def keys(loader: DataLoader) -> list[tuple[int, int, int]]:
    return [tuple(int(x) for x in key) for batch in loader for key in zip(*batch)]


@pytest.mark.parametrize(
    "make_sampler",
    [
        lambda: EpochSampler(40, shuffle=True, seed=3),
        lambda: DatasetBalancedSampler(["a"] * 30 + ["b"] * 10, epoch_length=40, seed=3),
    ],
)
def test_loader_resumes_mid_epoch_with_the_batches_left(make_sampler):
    def loader() -> ResumableLoader:
        return ResumableLoader(Keys(), batch_size=4, sampler=make_sampler(), drop_last=True)

    full = loader()
    full.sampler.set_epoch(2)
    expected = keys(full)

    first = loader()
    first.sampler.set_epoch(2)
    iterator = iter(first)
    seen = [tuple(int(x) for x in key) for _ in range(3) for key in zip(*next(iterator))]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 3}

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    rest = keys(resumed)
    assert seen + rest == expected
    assert resumed.state_dict() == {"epoch": 2, "batches": 10}
    # the next epoch is whole again
    resumed.sampler.set_epoch(3)
    assert len(keys(resumed)) == 40


def test_loader_state_of_a_finished_epoch_does_not_shorten_the_next():
    loader = ResumableLoader(Keys(), batch_size=4, sampler=EpochSampler(40, seed=0))
    loader.load_state_dict({"epoch": 0, "batches": 10})
    loader.sampler.set_epoch(1)  # Lightning moved on: the saved epoch is over
    assert len(keys(loader)) == 40


def test_random_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    callback = ExactResume()
    torch.save({"rng": callback.state_dict()}, tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loaded = ExactResume()
    loaded.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    loaded.on_train_batch_start(None)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def _rank_states(rank: int, world: int, port: int, out: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.manual_seed(100 + rank)  # ranks draw different dropout masks
    state = ExactResume().state_dict()  # a collective: every rank's generators
    restored = ExactResume()
    restored.load_state_dict(state)
    torch.manual_seed(0)
    restored.on_train_batch_start(None)
    torch.save({"state": state, "next": torch.rand(2)}, Path(out) / f"{rank}.pt")
    torch.distributed.destroy_process_group()


def test_each_rank_saves_and_gets_back_its_own_random_state(tmp_path):
    torch.multiprocessing.spawn(
        _rank_states, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True
    )
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]
    for rank, result in enumerate(results):
        ranks = result["state"]["ranks"]
        assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
        torch.manual_seed(100 + rank)
        assert torch.equal(result["next"], torch.rand(2))  # its own stream, not rank 0's


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # stands in for a kill or a full disk

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left


def test_preemption_signal_chains_the_previous_handler_and_saves_at_the_batch_end(
    tmp_path, monkeypatch
):
    """SIGUSR1 (SLURM's warning before a time limit): Lightning's requeue handler, installed
    before ours, must still run; the checkpoint waits for the end of the batch."""
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    saved = []
    trainer = SimpleNamespace(
        world_size=1,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision),
        global_step=7,
        should_stop=False,
        received_sigterm=False,
        checkpoint_callbacks=[],
        default_root_dir=str(tmp_path),
        save_checkpoint=lambda path, weights_only=None: saved.append((path, weights_only)),
    )
    monkeypatch.setattr(resume.preemption, "preempted", None)
    callback = PreemptionCheckpoint()
    try:
        callback.on_train_start(trainer, None)
        callback.on_train_batch_end(trainer)
        assert not saved  # no signal, no checkpoint
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls == [signal.SIGUSR1] and not saved  # the handler only takes note
        callback.on_train_batch_end(trainer)
        # the full state (weights_only=False said, not left to Lightning's default)
        assert saved == [(tmp_path / "checkpoints" / "last.ckpt", False)] and trainer.should_stop
        callback.on_train_end(trainer, None)
        assert signal.getsignal(signal.SIGUSR1) is not callback._handle
        with pytest.raises(SystemExit) as stop:
            resume.exit_if_preempted()
        assert stop.value.code == 128 + signal.SIGUSR1
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_ckpt_path_last_finds_the_newest_run_and_continues_in_its_folder(tmp_path):
    runs = tmp_path / "runs" / "clip"
    for version, age in (("version_0", 100), ("version_1", 10)):
        folder = runs / version / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"x")
        os.utime(folder / "last.ckpt", (time.time() - age, time.time() - age))
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}
    logger["init_args"] = {"save_dir": str(tmp_path / "runs"), "name": "clip"}
    config = dict_to_namespace(
        {
            "ckpt_path": "last",
            "trainer": {"default_root_dir": str(tmp_path), "logger": logger},
            "checkpoint": {"dirpath": None},
        }
    )
    resolve_last(config)
    assert config.ckpt_path == str(runs / "version_1" / "checkpoints" / "last.ckpt")
    assert config.trainer.logger.init_args.version == "version_1"

    empty = dict_to_namespace(
        {
            "ckpt_path": "last",
            "trainer": {"default_root_dir": str(tmp_path / "new"), "logger": False},
        }
    )
    resolve_last(empty)  # nothing to resume: a first submission starts fresh
    assert empty.ckpt_path is None


# -- end to end ----------------------------------------------------------------------------------
def fit_command(root: Path, *extra: str) -> list[str]:
    """ViLReF (momentum encoder + queue) on the tiny overlay with a trainable text tower, so
    dropout draws from the global generator: every kind of state a resume must restore."""
    return [
        str(Path(sys.executable).parent / "fundus-lit"),
        "fit",
        *["--config", str(RECIPES / "vilref.yaml")],
        *["--config", str(RECIPES / "overlays" / "tiny.yaml")],
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={STEPS_PER_EPOCH}",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=[]",  # no evaluation callbacks: they only cost time here
        "--step_checkpoint.every_n_train_steps=2",
        "--model.init_args.vision.name=test_resnet",
        "--model.init_args.text.freeze=false",
        "--model.init_args.text.max_length=16",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=1",
        "--data.init_args.image_size=32",
        *extra,
    ]


ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(root: Path, *extra: str) -> subprocess.CompletedProcess:
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        fit_command(root, *extra), cwd=root, env=ENV, capture_output=True, text=True, timeout=600
    )
    return done


def last(root: Path) -> dict:
    # one last checkpoint, shared by the step, epoch-end and preemption checkpoints
    (path,) = (root / "runs" / "vilref").glob("version_*/checkpoints/last*.ckpt")
    return torch.load(path, weights_only=True, map_location="cpu")


def interrupt(root: Path, signum: int, rng: random.Random) -> subprocess.Popen:
    """Start a fit and send ``signum`` at a random moment after its first step checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        fit_command(root), cwd=root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while not list((root / "runs" / "vilref").glob("version_*/checkpoints/last.ckpt")):
        if proc.poll() is not None or time.time() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            pytest.fail(f"the fit ended before its first checkpoint:\n{out[-3000:]}")
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signum)
    proc.wait(timeout=300)
    return proc


def assert_same_training_state(got: dict, expected: dict, context: str) -> None:
    assert got["global_step"] == expected["global_step"] == EPOCHS * STEPS_PER_EPOCH, context
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    different = [
        k for k, v in expected["state_dict"].items() if not torch.equal(got["state_dict"][k], v)
    ]
    assert not different, f"{context}: {len(different)} tensors differ, e.g. {different[:5]}"
    for got_opt, exp_opt in zip(got["optimizer_states"], expected["optimizer_states"]):
        for slot, state in exp_opt["state"].items():
            for name, value in state.items():
                assert torch.equal(got_opt["state"][slot][name], value), (context, slot, name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = run(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return last(root)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, uninterrupted, signum):
    rng = random.Random()  # a different moment every run; the step is reported on failure
    proc = interrupt(tmp_path, signum, rng)
    at = last(tmp_path)
    stopped_at = at["global_step"]
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # preemption: a checkpoint at the step the signal arrived, then exit 128 + 15
        out = proc.stdout.read().decode()
        assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
        assert "preempted by SIGTERM" in out and "resume with --ckpt_path last" in out
    assert 0 < stopped_at < EPOCHS * STEPS_PER_EPOCH, "the signal came after the run ended"

    resumed = run(tmp_path, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    # one run folder: the resumed run continued the interrupted one's logs and checkpoints
    assert len(list((tmp_path / "runs" / "vilref").glob("version_*"))) == 1
    assert_same_training_state(last(tmp_path), uninterrupted, f"stopped at step {stopped_at}")
