"""``fundus-lit import``: FLAIR's and KeepFIT's published checkpoints as fundus-lit models.

Nothing is downloaded. The test writes its own transcription of the publisher's module structure
(flair/modeling/model.py: a torchvision ResNet-50 without classifier, a BERT-base encoder with
the average of hidden states 1, 2 and last pooled over every position, normalise -> bias-free
projection -> normalise on both sides, and its image preparation), saves its random weights as
the publisher does (``torch.save(model.state_dict())``, with the legacy ``position_ids`` buffer
older transformers kept), imports them, and compares embeddings, preparation included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import transformers
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from fundus_lit import load_pretrained
from fundus_lit.cli import main
from fundus_lit.core.errors import DataError
from fundus_lit.core.resolve import load_tokenizer
from tests.conftest import MINILM

ROOT = Path(__file__).resolve().parents[1]
SIZE = 96  # input size of this test (FLAIR's is 512; the preparation is the same)


class Head(nn.Module):
    """The publisher's projection: normalise, project without bias, normalise."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.projection = layer

    def forward(self, x):
        x = x / x.norm(dim=-1, keepdim=True)
        x = self.projection(x)
        return x / x.norm(dim=-1, keepdim=True)


class Vision(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = torchvision.models.resnet50(weights=None)
        self.model.fc = nn.Identity()
        self.projection_head_vision = Head(nn.Linear(2048, 512, bias=False))

    def forward(self, pixels):
        return self.projection_head_vision(self.model(pixels))


class Text(nn.Module):
    def __init__(self, config: transformers.BertConfig) -> None:
        super().__init__()
        self.model = transformers.BertModel(config)
        self.projection_head_text = Head(nn.Linear(768, 512, bias=False))

    def forward(self, ids, mask):
        states = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = states.hidden_states
        layers = torch.stack([hidden[1], hidden[2], hidden[-1]])  # (3, B, T, H)
        return self.projection_head_text(layers.permute(1, 0, 2, 3).mean(2).mean(1))


class Published(nn.Module):
    def __init__(self, config: transformers.BertConfig) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))
        self.vision_model = Vision()
        self.text_model = Text(config)
        self.attention = None


def prepare(image: np.ndarray) -> torch.Tensor:
    """The publisher's image preparation, step by step: float, /255, channels first, batch,
    longer side to SIZE with an antialiased resize, zero padding right and bottom."""
    image = np.float32(image)
    if image.max() > 0:
        image /= 255
    x = torch.tensor(np.transpose(image, (2, 0, 1))[None])
    scale = max(x.shape[-2:]) / SIZE
    size = (int(x.shape[-2] / scale), int(x.shape[-1] / scale))
    x = torchvision.transforms.Resize(size, antialias=True)(x)
    return nn.functional.pad(x, (0, SIZE - x.shape[-1], 0, SIZE - x.shape[-2], 0, 0))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A text-model folder (MiniLM's tokenizer with a BERT-base config, standing in for a local
    Bio_ClinicalBERT), the transcribed model with random weights, and its saved state dict."""
    tmp = tmp_path_factory.mktemp("published")
    tokenizer = load_tokenizer(MINILM)
    tokenizer.save_pretrained(tmp / "bert")
    config = transformers.BertConfig(vocab_size=len(tokenizer))
    config.save_pretrained(tmp / "bert")
    torch.manual_seed(0)
    model = Published(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(40.0))
        for module in model.vision_model.modules():  # BatchNorm statistics away from 0 / 1
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = model.state_dict()
    state["text_model.model.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save(state, tmp / "flair_resnet.pth")
    return {"tmp": tmp, "model": model, "state": state, "tokenizer": tokenizer}


def test_the_transcription_has_the_published_keys(published):
    state = published["state"]
    assert len(state) == 521 and next(iter(state)) == "logit_scale"
    assert state["vision_model.projection_head_vision.projection.weight"].shape == (512, 2048)
    assert state["text_model.projection_head_text.projection.weight"].shape == (512, 768)


def test_imported_flair_embeds_images_and_text_as_the_publisher_does(published, capsys):
    tmp, model = published["tmp"], published["model"]
    out = tmp / "imported"
    main(["import", "--from", "flair", str(tmp / "flair_resnet.pth"), "--out", str(out),
          "--tokenizer", str(tmp / "bert"), "--image_size", str(SIZE)])  # fmt: skip
    assert "images and text" in capsys.readouterr().out
    imported = load_pretrained(out)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((90, 120), (130, 70))]
    with torch.no_grad():
        expected = torch.cat([model.vision_model(prepare(p)) for p in photos])
    got = imported.encode_image([Image.fromarray(p) for p in photos])
    assert (got - expected).abs().max() < 1e-5

    prompts = ["A fundus photograph of glaucoma", "A fundus photograph of drusen in the macula"]
    tokens = published["tokenizer"](prompts, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.text_model(tokens["input_ids"], tokens["attention_mask"])
    assert (imported.encode_text(prompts) - expected).abs().max() < 1e-5
    assert float(imported.encoder.scale()) == pytest.approx(40.0)


def test_the_hub_safetensors_variant_and_keepfit_import_the_same_weights(published):
    tmp, state = published["tmp"], published["state"]
    hub = tmp / "hub"
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(hub / "model.safetensors"))
    main(["import", "--from", "flair", str(hub), "--out", str(tmp / "from_hub"),
          "--image_size", str(SIZE)])  # fmt: skip
    keepfit = dict(state) | {f"attention.W_{x}.weight": torch.randn(512, 512) for x in "qkvo"}
    torch.save(keepfit, tmp / "keepfit.pth")
    main(["import", "--from", "keepfit", str(tmp / "keepfit.pth"), "--out", str(tmp / "keepfit"),
          "--image_size", str(SIZE)])  # fmt: skip
    a, b = load_pretrained(tmp / "from_hub"), load_pretrained(tmp / "keepfit")
    for key, value in a.encoder.state_dict().items():
        assert torch.equal(value, b.encoder.state_dict()[key]), key
    with pytest.raises(DataError, match="imported without its tokenizer"):
        a.encode_text(["glaucoma"])  # no --tokenizer: images only, and it says so


def refused(capsys, *args: str) -> str:
    """The one-line error of a refused ``fundus-lit import`` (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(["import", *args])
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_wrong_or_truncated_files_are_refused_by_name(published, capsys):
    tmp, state = published["tmp"], published["state"]
    truncated = {k: v for k, v in state.items() if "layer4" not in k}
    torch.save(truncated, tmp / "truncated.pth")
    err = refused(capsys, "--from", "flair", str(tmp / "truncated.pth"), "--out", str(tmp / "x"))
    assert "truncated.pth is not a complete flair checkpoint" in err
    assert "missing 60: ['vision_model.model.layer4.0.bn1.bias'" in err
    assert not (tmp / "x").exists()  # nothing half-written is left behind
    err = refused(capsys, "--from", "keepfit", str(tmp / "flair_resnet.pth"), "--out", str(tmp))
    assert "missing 4: ['attention.W_k.weight'" in err
    extra = dict(state) | {"head.weight": torch.zeros(2)}
    torch.save(extra, tmp / "extra.pth")
    err = refused(capsys, "--from", "flair", str(tmp / "extra.pth"), "--out", str(tmp / "y"))
    assert "unexpected 1: ['head.weight']" in err
    (tmp / "garbage.pth").write_bytes(b"not a checkpoint")
    err = refused(capsys, "--from", "flair", str(tmp / "garbage.pth"), "--out", str(tmp / "z"))
    assert "cannot read published checkpoint" in err and "garbage.pth" in err


@pytest.fixture(scope="module")
def imported(published):
    out = published["tmp"] / "imported_for_use"
    tmp = published["tmp"]
    main(["import", "--from", "flair", str(tmp / "flair_resnet.pth"), "--out", str(out),
          "--tokenizer", str(tmp / "bert"), "--image_size", str(SIZE)])  # fmt: skip
    return out


def test_zeroshot_evaluates_the_imported_folder_with_flairs_preparation(imported, tmp_path):
    from fundus_lit.data import SyntheticSource

    source = {"n": 8, "size": 120, "seed": 0, "offset": 2000000}
    test = [{"class_path": "fundus_lit.data.SyntheticSource", "init_args": source}]
    classes = ["normal", "glaucoma", "age related macular degeneration"]
    main(
        [
            "zeroshot",
            f"--ckpt={imported}",
            f"--config={ROOT / 'recipes' / 'eval' / 'synthetic.yaml'}",
            f"--data.init_args.test={json.dumps(test)}",
            "--data.init_args.num_workers=0",
            f"--out={tmp_path}",
            f"--classes={json.dumps(classes)}",
        ]
    )
    result = json.loads((tmp_path / "eval.json").read_text())["zeroshot"]
    # the same images through load_pretrained (FLAIR's preparation, no crop): same predictions
    synth = SyntheticSource(**source)
    records = synth.load()
    known = [r for r in records if r.categories and r.categories[0] in classes]
    model = load_pretrained(imported)
    probs = model.zero_shot([synth.open_image(r) for r in known], classes)
    assert result["n"] == len(known) > 0
    assert result["predictions"] == probs.argmax(1).tolist()


def test_fit_starts_from_the_imported_weights(imported, published, tmp_path, capsys):
    from fundus_lit.commands.train import cli_main
    from fundus_lit.models.saved import load_weights

    bert = published["tmp"] / "bert"  # tokenizer + config: the architecture, weights imported
    args = [
        f"--config={ROOT / 'recipes' / 'flair.yaml'}",
        f"--config={ROOT / 'recipes' / 'overlays' / 'tiny.yaml'}",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.callbacks=[]",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        f"--data.init_args.image_size={SIZE}",
        "--data.init_args.resize=flair",
        "--data.init_args.crop_fov=false",
        "--model.init_args.vision.name=resnet50",
        "--model.init_args.vision.mean=[0, 0, 0]",
        "--model.init_args.vision.std=[1, 1, 1]",
        f"--model.init_args.text.name={bert}",
        "--model.init_args.text.pretrained=false",
        "--model.init_args.text.pooling=flair",
        "--model.init_args.text.freeze=true",
        "--model.init_args.embed_dim=512",
        "--model.init_args.projection=normalized_linear",
        "--model.init_args.optim.lr=0",
        f"--model.init_args.init_weights={imported}",
    ]
    run = cli_main(["fit", *args])
    trained = run.model.encoder.state_dict()
    start = load_weights(imported / "model.safetensors")
    params = {name for name, _ in run.model.encoder.named_parameters()}
    for name in params:  # lr 0: one step moves no parameter (BatchNorm statistics do move)
        assert torch.equal(trained[name], start[name]), name
    with pytest.raises(SystemExit) as stop:  # another architecture: refused, naming the keys
        main(["fit", *args, "--model.init_args.embed_dim=256"])
    assert stop.value.code == 2
    assert (
        "image_proj.weight: checkpoint (512, 2048) vs model (256, 2048)" in capsys.readouterr().err
    )
