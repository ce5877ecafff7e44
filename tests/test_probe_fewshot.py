"""Linear probe and few-shot adapters on synthetic precomputed features."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fundus_lit.eval import probe
from fundus_lit.eval.adapters import clip_adapter, tip_adapter, tip_adapter_f
from fundus_lit.eval.fewshot import METHODS, FewShotConfig, fewshot_eval
from fundus_lit.eval.probe import ProbeConfig, linear_probe, sample_support

SCALE = 1 / 0.07


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The adapters train on a few dozen rows; on a busy 2-core box OpenMP threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def labels_with_counts(counts: list[int], seed: int = 0) -> np.ndarray:
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(y)


def blobs(counts: list[int], dim: int = 8, spread: float = 0.3, seed: int = 0):
    """Well-separated Gaussian blobs: any working probe classifies them perfectly."""
    rng = np.random.default_rng(seed)
    y = labels_with_counts(counts, seed)
    centres = 5.0 * np.eye(len(counts), dim)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def swapped_prototypes(seed: int, shots: int = 10, n_test: int = 60, k: int = 5, d: int = 64):
    """Tight class clusters whose prototypes each lean as much towards the next class as towards
    their own: zero-shot is a coin flip between two classes (ACA ~0.5), while labelled support
    examples show where each class really is."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, d, generator=g), dim=-1)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(k).repeat_interleave(n)
        noise = 0.6 * torch.randn(len(y), d, generator=g) / math.sqrt(d)
        return F.normalize(centres[y] + noise, dim=-1), y

    train, test = draw(4 * shots), draw(n_test)
    prototypes = F.normalize(centres + centres.roll(-1, dims=0), dim=-1)
    return (*train, *test, prototypes)


# --- sample_support ---------------------------------------------------------------------------


def test_shots_take_exactly_k_per_class():
    y = labels_with_counts([20, 15, 12])
    idx = sample_support(y, 3, seed=0, shots=5)
    assert np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx], minlength=3).tolist() == [5, 5, 5]


def test_fraction_is_stratified_with_one_per_present_class():
    y = labels_with_counts([40, 20, 3, 0])
    idx = sample_support(y, 4, seed=0, fraction=0.1)
    assert np.bincount(y[idx], minlength=4).tolist() == [4, 2, 1, 0]
    assert np.array_equal(sample_support(y, 4, seed=3, fraction=1.0), np.arange(len(y)))


def test_same_seed_same_support_other_seed_other_support():
    y = labels_with_counts([30, 30, 30])
    a = sample_support(y, 3, seed=1, shots=5)
    assert np.array_equal(a, sample_support(y, 3, seed=1, shots=5))
    assert not np.array_equal(a, sample_support(y, 3, seed=2, shots=5))
    assert not np.array_equal(
        sample_support(y, 3, seed=1, fraction=0.5), sample_support(y, 3, seed=2, fraction=0.5)
    )


def test_short_classes_give_all_they_have_and_warn_once(caplog, monkeypatch):
    monkeypatch.setattr(probe, "_warned", set())
    y = labels_with_counts([10, 2, 0])
    with caplog.at_level(logging.WARNING, logger="fundus_lit.eval.probe"):
        for seed in range(3):
            idx = sample_support(y, 3, seed=seed, shots=5)
            assert np.bincount(y[idx], minlength=3).tolist() == [5, 2, 0]
    assert len(caplog.records) == 1
    assert "1: 2" in caplog.text and "2: 0" in caplog.text


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"shots": 1, "fraction": 0.5}, "exactly one"),
        ({"shots": 0}, "shots"),
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
    ],
)
def test_sample_support_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_support(np.array([0, 1, 1]), 2, seed=0, **kwargs)


def test_sample_support_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match="0..1"):
        sample_support(np.array([0, 2]), 2, seed=0, shots=1)


# --- linear_probe -----------------------------------------------------------------------------


def test_probe_settings_reproducibility_and_separable_accuracy():
    xtr, ytr = blobs([30, 25, 20, 15])
    xte, yte = blobs([10, 10, 10, 10], seed=1)
    first = linear_probe(xtr, ytr, xte, yte, 4, ProbeConfig())
    again = linear_probe(torch.from_numpy(xtr), torch.from_numpy(ytr), xte, yte, 4, ProbeConfig())
    assert list(first.summary) == ["1-shot", "5-shot", "10-shot", "10%", "100%"]
    assert first.summary == again.summary
    for name, logits in first.logits.items():
        assert logits.shape == (40, 4)
        assert np.array_equal(logits, again.logits[name])
    for name in ("10-shot", "100%"):
        assert first.summary[name]["aca"]["mean"] >= 0.99
    five = first.summary["5-shot"]
    assert five["seeds"] == 5 and len(five["runs"]) == 5 and five["n_train"] == 20
    assert set(five) >= {"aca", "kappa", "f1", "auc", "n_train", "seeds", "runs"}
    assert five["aca"]["std"] == pytest.approx(np.std([r["aca"] for r in five["runs"]]))
    full = first.summary["100%"]
    assert full["seeds"] == 1 and full["n_train"] == 90
    assert all(full[m]["std"] == 0.0 for m in ("aca", "kappa", "f1", "auc"))


def test_probe_runs_once_when_shots_cover_every_class():
    xtr, ytr = blobs([4, 3, 3])
    xte, yte = blobs([5, 5, 5], seed=1)
    result = linear_probe(xtr, ytr, xte, yte, 3, ProbeConfig(shots=[5], fractions=[]))
    assert result.summary["5-shot"]["seeds"] == 1
    assert result.summary["5-shot"]["n_train"] == 10


def test_probe_keeps_all_class_columns_when_a_class_is_missing_from_training():
    xtr, ytr = blobs([10, 10, 10, 0])
    xte, yte = blobs([5, 5, 5, 5], seed=1)
    result = linear_probe(xtr, ytr, xte, yte, 4, ProbeConfig(shots=[1], fractions=[1.0], seeds=2))
    for name, logits in result.logits.items():
        assert logits.shape == (20, 4)
        assert np.all(logits.argmax(axis=1) != 3)
        assert math.isfinite(result.summary[name]["auc"]["mean"])
    assert result.summary["100%"]["aca"]["mean"] == pytest.approx(0.75)


def test_probe_handles_two_class_training_split():
    xtr, ytr = blobs([10, 10])
    xte, yte = blobs([5, 5], seed=1)
    result = linear_probe(xtr, ytr, xte, yte, 2, ProbeConfig(shots=[1], fractions=[1.0]))
    assert result.logits["100%"].shape == (10, 2)
    assert result.summary["100%"]["aca"]["mean"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "train_y": a["train_y"][:-1]}, "train_y"),
        (lambda a: {**a, "test_x": a["test_x"][:-1]}, "test_y"),
        (lambda a: {**a, "test_x": a["test_x"][:0], "test_y": a["test_y"][:0]}, "empty"),
        (lambda a: {**a, "train_y": a["train_y"] + 5}, "0..2"),
        (lambda a: {**a, "test_y": a["test_y"] - 1}, "0..2"),
        (lambda a: {**a, "train_x": a["train_x"][:, 0]}, "2-D"),
        (lambda a: {**a, "test_x": a["test_x"][:, :3]}, "features"),
        (lambda a: {**a, "train_y": np.zeros_like(a["train_y"])}, "at least 2 classes"),
    ],
)
def test_probe_rejects_bad_inputs(change, match):
    xtr, ytr = blobs([5, 5, 5])
    xte, yte = blobs([2, 2, 2], seed=1)
    args = change({"train_x": xtr, "train_y": ytr, "test_x": xte, "test_y": yte})
    with pytest.raises(ValueError, match=match):
        linear_probe(num_classes=3, config=ProbeConfig(shots=[1], fractions=[]), **args)


# --- few-shot adapters ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_adapters_beat_a_misleading_zero_shot_head(seed):
    xtr, ytr, xte, yte, protos = swapped_prototypes(seed)
    config = FewShotConfig(shots=[10], seeds=2)
    result = fewshot_eval(xtr, ytr, xte, yte, protos, SCALE, config)
    zero_shot = result.summary["zero_shot"]["aca"]
    assert 0.35 <= zero_shot <= 0.65
    for method in METHODS:
        assert result.summary[method]["10-shot"]["aca"]["mean"] >= zero_shot + 0.2, method


def test_fewshot_is_deterministic_and_leaves_global_rng_alone():
    xtr, ytr, xte, yte, protos = swapped_prototypes(3, shots=5, n_test=10)
    config = FewShotConfig(shots=[1, 5], seeds=2, clip_adapter_epochs=20, tip_f_epochs=10)
    state = torch.get_rng_state()
    first = fewshot_eval(xtr.numpy(), ytr.numpy(), xte, yte, protos, torch.tensor(SCALE), config)
    assert torch.equal(state, torch.get_rng_state())
    again = fewshot_eval(xtr, ytr, xte, yte, protos.double(), SCALE, config)
    assert first.summary == again.summary
    assert list(first.summary) == ["zero_shot", *METHODS]
    assert set(first.logits) == set(METHODS)
    for method in METHODS:
        assert list(first.summary[method]) == ["1-shot", "5-shot"]
        assert first.summary[method]["5-shot"]["n_train"] == 25
        assert first.summary[method]["1-shot"]["seeds"] == 2
        assert first.logits[method].shape == (50, 5)
        assert np.array_equal(first.logits[method], again.logits[method])


def test_adapters_reduce_to_zero_shot_when_switched_off():
    xtr, ytr, xte, _, protos = swapped_prototypes(4, shots=2, n_test=4)
    zero_shot = SCALE * xte @ protos.T
    assert torch.allclose(tip_adapter(xtr, ytr, xte, protos, SCALE, alpha=0.0), zero_shot)
    off = clip_adapter(xtr, ytr, xte, protos, SCALE, ratio=0.0, epochs=3)
    assert torch.allclose(off, zero_shot, atol=1e-5)
    fixed = tip_adapter_f(xtr, ytr, xte, protos, SCALE, epochs=0)
    assert torch.allclose(fixed, tip_adapter(xtr, ytr, xte, protos, SCALE))


def test_clip_adapter_seed_changes_the_fit():
    xtr, ytr, xte, _, protos = swapped_prototypes(5, shots=2, n_test=4)
    a = clip_adapter(xtr, ytr, xte, protos, SCALE, epochs=5, seed=0)
    assert torch.equal(a, clip_adapter(xtr, ytr, xte, protos, SCALE, epochs=5, seed=0))
    assert not torch.equal(a, clip_adapter(xtr, ytr, xte, protos, SCALE, epochs=5, seed=1))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "prototypes": a["prototypes"][:, :8]}, "dimension"),
        (lambda a: {**a, "train_y": a["train_y"] + 5}, "0..4"),
        (lambda a: {**a, "train_y": a["train_y"][:-1]}, "train_y"),
        (lambda a: {**a, "test_y": a["test_y"][:-1]}, "test_y"),
        (lambda a: {**a, "test_emb": a["test_emb"][:0], "test_y": a["test_y"][:0]}, "empty"),
        (lambda a: {**a, "scale": 0.0}, "scale"),
        (lambda a: {**a, "config": FewShotConfig(methods=["coop"])}, "unknown"),
    ],
)
def test_fewshot_rejects_bad_inputs(change, match):
    xtr, ytr, xte, yte, protos = swapped_prototypes(6, shots=1, n_test=2)
    args = {
        "train_emb": xtr,
        "train_y": ytr,
        "test_emb": xte,
        "test_y": yte,
        "prototypes": protos,
        "scale": SCALE,
        "config": FewShotConfig(shots=[1], seeds=1),
    }
    with pytest.raises(ValueError, match=match):
        fewshot_eval(**change(args))


def test_adapter_functions_reject_an_empty_support_set():
    _, _, xte, _, protos = swapped_prototypes(7, shots=1, n_test=2)
    with pytest.raises(ValueError, match="support set is empty"):
        tip_adapter(torch.empty(0, 64), torch.empty(0, dtype=torch.long), xte, protos, SCALE)
