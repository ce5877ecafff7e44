"""FLAIR pieces: knowledge prompts, held-out categories, dataset balancing, zero-shot metrics."""

import logging
import random
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

import fundus_lit.data.samplers as samplers
from fundus_lit.data import FundusRecord, KnowledgePromptBuilder, SyntheticSource
from fundus_lit.data.samplers import DatasetBalancedSampler
from fundus_lit.eval.metrics import classification_metrics
from fundus_lit.eval.zeroshot import ZeroShot, format_table
from fundus_lit.knowledge import KnowledgeBase
from tests.test_data import make_dm

GLAUCOMA = FundusRecord("d/1.png", "d", ("Glaucoma.",), ("noisy",))


def draws(builder, record, n=200):
    return {builder.build(record, random.Random(i)) for i in range(n)}


def test_knowledge_prompts_draw_name_or_description_and_keep_the_category():
    kb = KnowledgeBase.load()
    seen = draws(KnowledgePromptBuilder(), GLAUCOMA)
    assert {category for _, category in seen} == {"Glaucoma."}
    texts = {text for text, _ in seen}
    expected = {"A noisy fundus photograph of Glaucoma."}
    expected |= {f"A noisy fundus photograph of {d}" for d in kb.get("glaucoma").descriptions}
    assert texts == expected


def test_naive_and_free_text_switches_use_the_category_as_written():
    naive = draws(KnowledgePromptBuilder(use_knowledge=False), GLAUCOMA)
    assert naive == {("A noisy fundus photograph of Glaucoma.", "Glaucoma.")}
    free = draws(KnowledgePromptBuilder(free_text_datasets=["d"]), GLAUCOMA)
    assert free == naive


def test_unknown_category_falls_back_to_its_name_and_is_logged_once(caplog):
    builder = KnowledgePromptBuilder()
    record = FundusRecord("d/1.png", "d", ("zebra stripes of the retina",))
    with caplog.at_level(logging.WARNING):
        seen = draws(builder, record, 20)
    name = "zebra stripes of the retina"
    assert seen == {(f"A fundus photograph of {name}", name)}
    assert sum("zebra stripes" in r.message for r in caplog.records) == 1


def test_empty_category_list_is_the_empty_category():
    assert draws(KnowledgePromptBuilder(), FundusRecord("d/1.png", "d")) == {
        ("A fundus photograph of", "")
    }


def test_user_knowledge_file_overrides_descriptions(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("categories:\n  - name: glaucoma\n    descriptions: [a large pale cup]\n")
    seen = {t for t, _ in draws(KnowledgePromptBuilder(knowledge=[str(path)]), GLAUCOMA)}
    assert seen == {
        "A noisy fundus photograph of Glaucoma.",
        "A noisy fundus photograph of a large pale cup",
    }


def test_held_out_categories_leave_pretraining_only():
    text = KnowledgePromptBuilder(held_out=["Glaucoma"])
    assert not text.keep(GLAUCOMA)
    dm = make_dm(train=[SyntheticSource(n=60, size=64, seed=2)], text=text, val_fraction=0.2)
    dm.setup("fit")
    assert all("glaucoma" not in r.categories for _, r in dm.splits["train"])
    assert any("glaucoma" in r.categories for _, r in dm.splits["val"])  # still evaluable


def test_data_held_out_works_with_any_text_builder():
    """The claims bench holds categories out of CLIP's plain prompts as well as FLAIR's."""
    dm = make_dm(
        train=[SyntheticSource(n=60, size=64, seed=2)],
        held_out=["Glaucoma", "pathologic myopia"],
        val_fraction=0.2,
    )
    dm.setup("fit")
    kept = {c for _, r in dm.splits["train"] for c in r.categories}
    assert kept and not kept & {"glaucoma", "pathologic myopia"}
    assert any("glaucoma" in r.categories for _, r in dm.splits["val"])


def test_balanced_sampler_is_uniform_over_datasets_with_replacement():
    names = ["big"] * 90 + ["small"] * 10
    sampler = DatasetBalancedSampler(names, epoch_length=4000, seed=1)
    keys = list(sampler)
    assert len(keys) == len(sampler) == 4000
    by_dataset = Counter(names[i] for i, *_ in keys)
    assert abs(by_dataset["small"] / 4000 - 0.5) < 0.03
    small_hits = Counter(i for i, *_ in keys if names[i] == "small")
    assert set(small_hits) == set(range(90, 100)) and max(small_hits.values()) > 1


def test_balanced_sampler_shares_are_disjoint_and_reproducible(monkeypatch):
    names = ["a"] * 7 + ["b"] * 30 + ["c"] * 3
    shares = {}
    for rank in range(2):
        monkeypatch.setattr(samplers, "world", lambda rank=rank: (rank, 2))
        sampler = DatasetBalancedSampler(names, epoch_length=101, seed=5)
        sampler.set_epoch(3)
        shares[rank] = list(sampler)
    monkeypatch.setattr(samplers, "world", lambda: (0, 1))
    whole = DatasetBalancedSampler(names, epoch_length=100, seed=5)
    whole.set_epoch(3)
    stream = list(whole)
    assert len(shares[0]) == len(shares[1]) == 50
    assert shares[0] == stream[0::2] and shares[1] == stream[1::2]  # positions split, not overlap
    again = DatasetBalancedSampler(names, epoch_length=100, seed=5)
    again.set_epoch(4)
    assert list(again) != stream


def test_datamodule_uses_the_balanced_sampler():
    dm = make_dm(balance_datasets=True, epoch_length=24)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DatasetBalancedSampler) and len(loader) == 3


def test_zeroshot_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[targets]
    got = classification_metrics(torch.tensor(logits), torch.tensor(targets))
    preds = logits.argmax(1)
    probs = torch.softmax(torch.tensor(logits), 1).numpy()
    assert got["aca"] == pytest.approx(balanced_accuracy_score(targets, preds), abs=1e-6)
    assert got["kappa"] == pytest.approx(
        cohen_kappa_score(targets, preds, weights="quadratic"), abs=1e-6
    )
    assert got["f1"] == pytest.approx(f1_score(targets, preds, average="macro"), abs=1e-6)
    assert got["auc"] == pytest.approx(
        roc_auc_score(targets, probs, multi_class="ovr", average="macro"), abs=1e-5
    )


class FakeEncoder(torch.nn.Module):
    """Text embeddings that depend on the prompt length, enough to check prototype averaging."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))

    def encode_text(self, ids, mask, keys=None):
        n = mask.sum(1).float()
        emb = torch.stack([torch.cos(n), torch.sin(n)], 1)
        return {"emb": emb}


def fake_tokenizer(texts, **kwargs):
    lengths = [len(t.split()) for t in texts]
    mask = torch.zeros(len(texts), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return {"input_ids": mask.clone(), "attention_mask": mask}


def test_prototypes_average_name_and_descriptions_and_renormalize():
    zs = ZeroShot(["glaucoma", "normal"])
    assert zs.prompts("glaucoma")[0] == "A fundus photograph of glaucoma"
    assert len(zs.prompts("glaucoma")) == 1 + len(zs.knowledge.get("glaucoma").descriptions)
    unit = zs.prototypes(FakeEncoder(), fake_tokenizer)
    assert torch.allclose(unit.norm(dim=1), torch.ones(2))
    raw = ZeroShot(["glaucoma", "normal"], renormalize=False).prototypes(
        FakeEncoder(), fake_tokenizer
    )
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=1), unit, atol=1e-6)
    assert (raw.norm(dim=1) < 1).all()


def test_zeroshot_targets_evaluate_and_table():
    zs = ZeroShot(["Age-related macular degeneration", "normal"])
    targets = zs.targets(
        [("age related macular degeneration.", "glaucoma"), ("normal",), ("x",), ()]
    )
    assert targets.tolist() == [0, 1, -1, -1]
    protos = torch.eye(2)
    emb = torch.tensor([[1.0, 0.0], [0.2, 0.9], [0.0, 1.0], [1.0, 0.0]])
    result = zs.evaluate(emb, targets, protos, 10.0)
    assert result["n"] == 2 and result["skipped"] == 2 and result["aca"] == 1.0
    assert "| aca | 1.0000 |" in format_table(result)
    with pytest.raises(ValueError, match="repeat"):
        ZeroShot(["glaucoma", "Glaucoma."])


def test_category_balanced_sampling_draws_rare_first_categories_as_often():
    dm = make_dm(
        train=[SyntheticSource(n=300, size=32, seed=4)],
        val_fraction=0.1,
        balance_categories=True,
        epoch_length=4500,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    train = dm.splits["train"]
    drawn = Counter(train[index][1].categories[0] for index, _, _ in loader.sampler)
    have = Counter(record.categories[0] for _, record in train)
    assert set(drawn) == set(have) and len(have) == 9
    rarest, commonest = min(have, key=have.get), max(have, key=have.get)
    assert have[commonest] > 2 * have[rarest]  # the draw, not the data, is balanced
    assert max(drawn.values()) < 1.25 * min(drawn.values())  # 500 expected per category
