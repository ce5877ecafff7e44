"""KeepFIT v2 stage 1: the captioning objective learns on synthetic atlas captions and generates
text; the decoder rebuilds from a checkpoint alone; ``fundus-lit caption`` end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MINILM, tiny_fit_args

from fundus_lit.captioning import decoder_state
from fundus_lit.cli import main
from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.data.batch import Batch
from fundus_lit.data.sources import SyntheticSource
from fundus_lit.data.transforms import ImagePipeline
from fundus_lit.models.captioner import CaptionDecoder, decode
from fundus_lit.models.dual_encoder import DualEncoder
from fundus_lit.models.text import TextConfig
from fundus_lit.models.vision import VisionConfig
from fundus_lit.objectives import CaptionObjective

ROOT = Path(__file__).resolve().parents[1]
SIZE, LENGTH = 64, 48
MEMORISED, MAX_STEPS = 0.9, 200  # teacher-forced token accuracy that counts as memorised


def synthetic_batch(n: int) -> Batch:
    source = SyntheticSource(n=n, size=SIZE, seed=0, sites=1, captions=True)
    records = source.load()
    pipeline = ImagePipeline(SIZE, True, None)
    texts = [r.text for r in records]
    tokens = load_tokenizer(MINILM)(
        texts, padding=True, truncation=True, max_length=LENGTH, return_tensors="pt"
    )
    return Batch(
        images=torch.stack([pipeline(source.open_image(r)) for r in records]),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        texts=texts,
        categories=[""] * n,
        datasets=[r.dataset for r in records],
        indices=torch.arange(n),
    )


def words(texts: list[str]) -> list[str]:
    return " ".join(texts).lower().replace(",", " ").replace(".", " ").split()


def test_caption_objective_loss_falls_and_generation_returns_text():
    """What the objective guarantees: its loss falls until the decoder has memorised a handful
    of captions, and the memorised words come back when it generates. Trained to that
    criterion, not for a fixed number of steps: the trajectory differs with the CPU's kernels
    (AVX2 and AVX512 round differently), the end state does not."""
    torch.manual_seed(0)
    text = TextConfig(name=MINILM, pooling="mean", max_length=LENGTH, freeze=True)
    encoder = DualEncoder(VisionConfig(name="test_resnet", pretrained=False), text, 32, SIZE)
    objective = CaptionObjective(stream="public", dim=64, layers=1, heads=4, dropout=0.0)
    objective.attach(encoder, 8)
    decoder = objective.decoder
    assert (decoder.bos_id, decoder.eos_id, decoder.pad_id) == (101, 102, 0)  # [CLS] [SEP] [PAD]
    assert decoder.max_length == LENGTH
    batch = synthetic_batch(8)
    params = [*objective.parameters(), *encoder.vision.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    requires = frozenset({"image_emb", "text_emb", "feature_map"})
    losses, accuracy = [], 0.0
    for _ in range(MAX_STEPS):
        outputs = encoder(batch.images, batch.input_ids, batch.attention_mask, requires)
        result = objective(outputs, batch)
        optimizer.zero_grad()
        result.losses["loss"].backward()
        optimizer.step()
        losses.append(float(result.losses["loss"].detach()))
        accuracy = float(result.scalars["token_accuracy"])
        if accuracy >= MEMORISED:
            break
    assert accuracy >= MEMORISED, (accuracy, losses)
    assert losses[-1] < 0.5 * losses[0], losses
    # the image tower receives the generative gradient (what L_gen is for)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.vision.parameters())

    encoder.eval(), objective.eval()
    with torch.no_grad():
        feature_map = encoder.vision(batch.images, dense=True)["feature_map"]
    tokenizer = load_tokenizer(MINILM)
    # the training captions as the tokenizer gives them back ("cup-to-disc" -> "cup - to - disc")
    vocabulary = set(words(decode(tokenizer, batch.input_ids.tolist())))
    for beams in (1, 3):
        captions = decode(tokenizer, decoder.generate(feature_map, 20, beams=beams))
        assert len(captions) == 8 and all(c.strip() for c in captions)
        generated = words(captions)
        assert sum(w in vocabulary for w in generated) / len(generated) > 0.8, captions


def test_decoder_rebuilds_from_its_state_dict_and_refuses_another_config():
    torch.manual_seed(0)
    decoder = CaptionDecoder(500, 16, dim=32, layers=1, heads=2, max_length=12, dropout=0.0)
    state = decoder.state_dict()
    assert state["_extra_state"]["kind"] == "caption_decoder"
    rebuilt = CaptionDecoder.from_state_dict(state)
    assert rebuilt.heads == 2 and len(rebuilt.decoder.layers) == 1
    memory = torch.randn(2, 16, 3, 3)
    assert rebuilt.generate(memory, 5) == decoder.eval().generate(memory, 5)
    other = CaptionDecoder(500, 16, dim=32, layers=1, heads=4, max_length=12)
    with pytest.raises(ValueError, match="heads saved 2 vs built 4"):
        other.load_state_dict(state)
    prefixed = {f"objectives.1.decoder.{k}": v for k, v in state.items()}
    assert set(decoder_state(prefixed | {"encoder.x": torch.ones(1)}, "ckpt")) == set(state)
    with pytest.raises(DataError, match="has no caption decoder.*keepfit_v2"):
        decoder_state({"encoder.x": torch.ones(1)}, "checkpoint c.ckpt")


def test_keepfit_v2_fits_and_captions_from_the_cli(tmp_path, capsys):
    from fundus_lit.cli import cli_main

    args = tiny_fit_args(tmp_path, ["flair.yaml", "keepfit_v2.yaml"])
    cli = cli_main(["fit", *args, "--model.init_args.text.init_weights=null"])
    logged = cli.trainer.callback_metrics
    for key in ("train/flair", "train/expert_clip", "train/caption", "val/loss"):
        assert bool(torch.isfinite(logged[key])), key
    assert "train/caption/token_accuracy" in logged
    ckpt = cli.trainer.checkpoint_callback.last_model_path

    image = tmp_path / "fundus.png"
    SyntheticSource(n=1, size=96, seed=5, sites=1).open_image(
        SyntheticSource(n=1, size=96, seed=5, sites=1).load()[0]
    ).save(image)
    capsys.readouterr()
    main(["caption", "--ckpt", ckpt, "--image", str(image), str(image), "--max_new_tokens=8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{image}\t") for line in lines)
    assert lines[0] == lines[1] and lines[0].split("\t")[1].strip()  # greedy is deterministic
    main(["caption", f"--ckpt={ckpt}", f"--image={image}", "--beams=3", "--max_new_tokens=8"])
    assert capsys.readouterr().out.strip().split("\t")[1].strip()

    flair = cli_main(["fit", *tiny_fit_args(tmp_path / "flair", ["flair.yaml"])])
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "caption",
                f"--ckpt={flair.trainer.checkpoint_callback.last_model_path}",
                f"--image={image}",
            ]
        )
    assert stop.value.code == 2 and "has no caption decoder" in capsys.readouterr().err
