"""KeepFIT v2 stage 0: BERT masking, the text corpus sources and data module, MLM training that
lowers the loss, the exported tower that stage 1 loads through ``text.init_weights`` (and the
errors when it cannot), and the recipe run through the CLI."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import transformers
from conftest import MINILM
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file, save_file

from fundus_lit.cli import cli_main, main
from fundus_lit.core.resolve import ModelNotFoundError
from fundus_lit.data import (
    CaptionCSVSource,
    DataError,
    KnowledgeText,
    RecordText,
    SyntheticSource,
    TextCorpusDataModule,
    TextFile,
    TextSource,
)
from fundus_lit.knowledge import KnowledgeBase
from fundus_lit.models.text import TextConfig, TextTower, load_text_model
from fundus_lit.models.text_weights import load_stage0_weights
from fundus_lit.optim import OptimConfig
from fundus_lit.text_pretrain import (
    VAL_MASK_SEED,
    TextPretrainModule,
    export_text_tower,
    mask_tokens,
)

ROOT = Path(__file__).resolve().parents[1]
MASK, VOCAB = 103, 30522


def full_rows(rows: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids that are never the mask id, and a mask excluding the [CLS]/[SEP] positions."""
    ids = torch.randint(1000, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    maskable = torch.ones(rows, length, dtype=torch.bool)
    maskable[:, [0, -1]] = False
    return ids, maskable


def test_mask_tokens_chooses_only_maskable_positions_at_the_rate_with_bert_split():
    ids, maskable = full_rows(512, 64)
    maskable[:256, 40:] = False  # padding of the shorter half
    inputs, labels = mask_tokens(ids, maskable, MASK, VOCAB, 0.15, torch.Generator().manual_seed(1))
    chosen = labels != -100
    assert not (chosen & ~maskable).any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    assert abs(chosen.sum().item() / maskable.sum().item() - 0.15) < 0.01
    masked = (inputs[chosen] == MASK).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015
    assert abs(1 - masked - kept - 0.1) < 0.015  # replaced by a random id
    assert inputs.max().item() < VOCAB and inputs.min().item() >= 0


def test_mask_tokens_predicts_at_least_one_token_of_every_non_empty_row():
    ids, maskable = full_rows(200, 5)
    maskable[::2] = False  # rows without a maskable token (all padding/special)
    _, labels = mask_tokens(ids, maskable, MASK, VOCAB, 0.01, torch.Generator().manual_seed(0))
    per_row = (labels != -100).sum(1)
    assert (per_row[1::2] >= 1).all()
    assert (per_row[::2] == 0).all()


def test_mask_tokens_is_reproducible_with_a_generator():
    ids, maskable = full_rows(16, 32)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(ids, maskable, MASK, VOCAB, 0.15, torch.Generator().manual_seed(seed))

    (a_in, a_lab), (b_in, b_lab), (c_in, _) = run(7), run(7), run(8)
    assert torch.equal(a_in, b_in) and torch.equal(a_lab, b_lab)
    assert not torch.equal(a_in, c_in)


def test_knowledge_text_gives_every_description_with_its_category_name(tmp_path):
    kb = KnowledgeBase.load()
    texts = KnowledgeText().texts()
    assert len(texts) == sum(len(cat.descriptions) for cat in kb)
    glaucoma = kb["glaucoma"]
    assert f"glaucoma: {glaucoma.descriptions[0]}" in texts
    own = tmp_path / "own.yaml"
    own.write_text("categories:\n  - name: coloboma\n    descriptions: [a notch, a gap]\n")
    assert KnowledgeText([str(own)], builtin=False).texts() == [
        "coloboma: a notch",
        "coloboma: a gap",
    ]
    with pytest.raises(DataError, match="missing.yaml"):
        KnowledgeText([str(tmp_path / "missing.yaml")]).texts()


def test_record_text_reads_captions_and_reports_without_opening_images(monkeypatch, tmp_path):
    def no_images(*args):
        raise AssertionError("RecordText must not open images")

    monkeypatch.setattr(SyntheticSource, "open_image", no_images)
    captions = RecordText(SyntheticSource(n=12, size=32, captions=True)).texts()
    reports = RecordText(SyntheticSource(n=12, size=32, reports=True)).texts()
    assert len(captions) == len(reports) == 12
    assert all(isinstance(t, str) and t for t in captions + reports)
    csv = tmp_path / "atlas.csv"
    csv.write_text('image,caption\natlas/1.png,"Drusen at the macula."\natlas/2.png,A pale disc.\n')
    texts = RecordText(CaptionCSVSource(str(csv))).texts()  # the images do not exist
    assert texts == ["Drusen at the macula.", "A pale disc."]
    with pytest.raises(DataError, match=r"SyntheticSource\(n=12.*captions or reports"):
        RecordText(SyntheticSource(n=12, size=32)).texts()


def test_text_file_reads_non_empty_lines_and_names_a_missing_or_empty_file(tmp_path):
    corpus = tmp_path / "book.txt"
    corpus.write_text("  Drusen are yellow deposits.\n\n\nThe cup is pale.  \n", encoding="utf-8")
    assert TextFile(str(corpus)).texts() == ["Drusen are yellow deposits.", "The cup is pale."]
    with pytest.raises(DataError, match="nothing.txt.*does not exist"):
        TextFile(str(tmp_path / "nothing.txt")).texts()
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="blank.txt.*empty"):
        TextFile(str(tmp_path / "blank.txt")).texts()


class Passages(TextSource):
    def __init__(self, texts: list[str]) -> None:
        self.items = texts

    def texts(self) -> list[str]:
        return list(self.items)


def test_corpus_data_module_dedupes_splits_and_tokenises(tmp_path):
    passages = [f"passage number {i} about the optic disc" for i in range(40)]
    repeated = Passages(passages + passages[:10] + [" passage  number 3 about the optic disc "])
    dm = TextCorpusDataModule([repeated], val_fraction=0.1, tokenizer=MINILM, max_length=6, seed=3)
    dm.setup("fit")
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(val) == 4 and len(train) == 36
    assert sorted(train + val) == sorted(passages)
    again = TextCorpusDataModule([repeated], val_fraction=0.1, tokenizer=MINILM, seed=3)
    again.setup("fit")
    assert again.splits == dm.splits
    keep = TextCorpusDataModule([repeated], val_fraction=0.1, tokenizer=MINILM, dedupe=False)
    keep.setup("fit")
    assert len(keep.splits["train"]) + len(keep.splits["val"]) == 51
    tiny = TextCorpusDataModule([Passages(["a", "b"])], val_fraction=0.01, tokenizer=MINILM)
    tiny.setup("fit")
    assert len(tiny.splits["val"]) == 1 and len(tiny.splits["train"]) == 1
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"input_ids", "attention_mask", "special_tokens_mask"}
    assert batch["input_ids"].shape == (32, 6)
    assert (batch["special_tokens_mask"][:, 0] == 1).all()  # [CLS]
    assert len(next(iter(dm.val_dataloader()))["input_ids"]) == 4


def test_corpus_data_module_refuses_an_empty_corpus_and_a_bad_tokenizer():
    with pytest.raises(DataError, match="empty"):
        TextCorpusDataModule([Passages(["  ", ""])], tokenizer=MINILM).setup("fit")
    with pytest.raises(DataError, match="at least one source"):
        TextCorpusDataModule([])
    with pytest.raises(ModelNotFoundError):
        TextCorpusDataModule([Passages(["a", "b"])], tokenizer="/no/such/tokenizer").setup("fit")


def test_a_frozen_tower_cannot_be_pretrained():
    with pytest.raises(ValueError, match="frozen"):
        TextPretrainModule(TextConfig(MINILM, freeze=True))


def val_loss(module: TextPretrainModule, dm: TextCorpusDataModule) -> float:
    """Validation MLM loss with the module's own fixed validation masks, dropout off."""
    module.eval()
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(dm.val_dataloader()):
            generator = torch.Generator().manual_seed(VAL_MASK_SEED + i)
            losses.append(module.mlm(batch, generator)[0].item())
    module.train()  # Lightning keeps the modes it finds: training needs dropout back on
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def stage0(tmp_path_factory):
    """A short stage-0 run on synthetic atlas captions (MiniLM, 64 tokens, batch 8, 3 epochs)."""
    tmp = tmp_path_factory.mktemp("stage0")
    L.seed_everything(0)
    source = RecordText(SyntheticSource(n=96, size=32, captions=True))
    dm = TextCorpusDataModule(
        [source], val_fraction=0.1, tokenizer=MINILM, max_length=64, batch_size=8
    )
    module = TextPretrainModule(
        TextConfig(MINILM, pooling="mean", max_length=64),
        batch_size=8,
        optim=OptimConfig(lr=2e-4, weight_decay=0.01, warmup=3),
        save_dir=str(tmp / "tower"),
    )
    dm.setup("fit")
    before = val_loss(module, dm)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp,
        callbacks=[ModelCheckpoint(dirpath=tmp / "ckpt", save_last=True)],
    )
    trainer.fit(module, dm)
    after = val_loss(module, dm)
    return {"module": module, "trainer": trainer, "tmp": tmp, "before": before, "after": after}


def test_mlm_loss_falls_on_synthetic_text(stage0, capsys):
    with capsys.disabled():
        print(f"\nstage-0 val MLM loss {stage0['before']:.3f} -> {stage0['after']:.3f}")
    assert stage0["after"] < stage0["before"] - 1.0
    logged = stage0["trainer"].callback_metrics
    assert {"train/loss", "train/mlm", "train/mlm_accuracy", "val/loss", "val/mlm"} <= set(logged)


def test_exported_tower_and_checkpoint_reload_into_stage_one_text_tower(stage0):
    folder, trainer = stage0["tmp"] / "tower", stage0["trainer"]
    info = json.loads((folder / "fundus_lit_text.json").read_text())
    assert info["base"] == MINILM and info["architecture"] == "BertModel"
    assert (info["hidden_size"], info["num_hidden_layers"]) == (384, 6)
    assert info["step"] == trainer.global_step > 0
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    trained = stage0["module"].text_model.state_dict()
    for source in (folder, stage0["tmp"] / "ckpt" / "last.ckpt"):
        tower = TextTower(TextConfig(name=MINILM, pooling="mean", init_weights=str(source)))
        loaded = tower.model.state_dict()
        assert loaded.keys() == trained.keys()
        assert all(torch.equal(loaded[k], trained[k]) for k in trained), source


def test_task_model_prefixes_are_tolerated(stage0, tmp_path):
    trained = stage0["module"].text_model.state_dict()
    prefixed = {f"bert.{k}": v.clone() for k, v in trained.items()}
    prefixed["cls.predictions.bias"] = torch.zeros(VOCAB)  # a BertForMaskedLM head
    save_file(prefixed, tmp_path / "mlm.safetensors")
    model = load_text_model(TextConfig(MINILM, pretrained=False))
    load_stage0_weights(model, tmp_path / "mlm.safetensors", MINILM)
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)


def test_missing_or_empty_stage0_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "runs" / "text_tower"
    with pytest.raises(ModelNotFoundError) as err:
        load_text_model(TextConfig(MINILM, pretrained=False, init_weights=str(missing)))
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert "fundus-lit fit --config recipes/keepfit_v2_text.yaml" in str(err.value)
    missing.mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match="without weights"):
        load_text_model(TextConfig(MINILM, pretrained=False, init_weights=str(missing)))


def test_architecture_mismatch_names_both_towers_and_a_mis_shaped_key(tmp_path):
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=VOCAB,
    )
    export_text_tower(transformers.BertModel(config), MINILM, tmp_path / "tiny", "tiny-bert", 5)
    with pytest.raises(ModelNotFoundError) as err:
        load_text_model(TextConfig(MINILM, pretrained=False, init_weights=str(tmp_path / "tiny")))
    message = str(err.value)
    assert "base 'tiny-bert', BertModel, hidden size 32, 1 layers" in message
    assert f"base '{MINILM}', BertModel, hidden size 384, 6 layers" in message
    assert "embeddings.word_embeddings.weight: checkpoint (30522, 32) vs model (30522, 384)" in (
        message
    )
    assert "missing keys" in message and "text.name must be the model stage 0 started from" in (
        message
    )


def test_recipe_runs_through_the_cli_exports_the_tower_and_stage_one_loads_it(tmp_path, capsys):
    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "recipes" / "keepfit_v2_text.yaml"),
            "--config",
            str(ROOT / "recipes" / "overlays" / "tiny_text.yaml"),
            "--trainer.max_steps=3",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            f"--model.init_args.save_dir={tmp_path}/tower",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
        ]
    )
    info = json.loads((tmp_path / "tower" / "fundus_lit_text.json").read_text())
    assert info["base"] == MINILM and info["step"] == 3
    assert list((tmp_path / "checkpoints").glob("best-*.ckpt"))
    TINY_STAGE1 = ("tiny.yaml", "tiny_expert.yaml")  # noqa: N806
    # stage 1 reads the tower by path from its recipe key (the tiny overlays freeze the text
    # tower, so after training it still holds exactly the stage-0 weights)
    stage1 = [
        "fit",
        *[f"--config={ROOT / 'recipes' / n}" for n in ("flair.yaml", "keepfit_v2.yaml")],
        *[f"--config={ROOT / 'recipes' / 'overlays' / n}" for n in TINY_STAGE1],
        "--trainer.fast_dev_run=1",
        "--data.init_args.batch_size=4",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=64",
        "--model.init_args.vision.name=test_resnet",
    ]
    cli = cli_main([*stage1, f"--model.init_args.text.init_weights={tmp_path}/tower"])
    exported = load_file(tmp_path / "tower" / "model.safetensors")
    text = cli.model.encoder.text.model.state_dict()
    assert all(torch.equal(text[k], exported[k]) for k in exported)
    with pytest.raises(SystemExit) as stop:
        main([*stage1, f"--model.init_args.text.init_weights={tmp_path}/nowhere"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{tmp_path}/nowhere' does not exist" in err
    assert "keepfit_v2_text.yaml" in err
