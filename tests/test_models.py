"""Towers: loading by package path, pooling, freezing and the text cache, clear errors."""

import pytest
import torch

from fundus_lit.core.resolve import ModelNotFoundError, load_tokenizer, resolve_reference
from fundus_lit.models import DualEncoder, TextConfig, VisionConfig
from fundus_lit.models.text import pool
from tests.conftest import MINILM


@pytest.fixture(scope="module")
def tokens():
    tok = load_tokenizer(MINILM)
    texts = ["A fundus photograph of glaucoma", "A noisy fundus photograph of drusen in the macula"]
    return tok(texts, padding=True, return_tensors="pt")


def test_pooling_modes():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "cls", None).tolist() == [[0, 1], [6, 7]]
    assert pool(hidden, mask, "mean", None)[0].tolist() == [1, 2]  # padding ignored
    layers = (hidden * 0, hidden, hidden * 3, hidden * 100, hidden * 5)
    # flair: mean over all positions (padding included) of layers 1, 2 and last
    assert torch.allclose(pool(hidden, mask, "flair", layers), (hidden * 3).mean(1))


def test_dual_encoder_outputs_and_dense_features(tokens):
    model = DualEncoder(VisionConfig("test_resnet"), TextConfig(MINILM, pooling="mean"), 32, 64)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    out = model(images, tokens["input_ids"], tokens["attention_mask"])
    assert out.image_emb.shape == out.text_emb.shape == (2, 32)
    assert torch.allclose(out.image_emb.norm(dim=-1), torch.ones(2))
    assert out.scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out.feature_map is None
    assert model.text.model.training and model.vision.model.training  # trainable: train mode
    dense = model(images, requires=frozenset({"image_emb", "feature_map", "multiscale"}))
    assert dense.feature_map.ndim == 4 and len(dense.multiscale) >= 2 and dense.text_emb is None


def test_logit_scale_is_clamped_to_100():
    model = DualEncoder(VisionConfig("test_resnet"), TextConfig(MINILM), 16, 64)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)


def test_vit_tower_sized_from_image_size():
    model = DualEncoder(VisionConfig("vit_tiny_patch16_224"), TextConfig(MINILM), 16, 96)
    out = model(torch.zeros(1, 3, 96, 96, dtype=torch.uint8), requires=frozenset({"feature_map"}))
    assert out.feature_map.shape[-2:] == (6, 6)


def test_frozen_text_tower_caches_repeated_texts(tokens):
    cfg = TextConfig(MINILM, pooling="mean", freeze=True)
    model = DualEncoder(VisionConfig("test_resnet"), cfg, 16, 64)
    assert not any(p.requires_grad for p in model.text.parameters())
    model.train()
    assert not model.text.model.training  # frozen towers stay in eval mode
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    first = model.encode_text(ids, mask)["pooled"]
    calls = []
    model.text.model.register_forward_hook(lambda *a: calls.append(1))
    again = model.encode_text(torch.cat([ids, ids]), torch.cat([mask, mask]))["pooled"]
    assert calls == [] and torch.allclose(again, torch.cat([first, first]))
    model.text.cfg.cache_size = 0
    assert torch.allclose(model.encode_text(ids, mask)["pooled"], first, atol=1e-6)
    assert calls == [1]


def test_unknown_and_unreachable_models_say_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown timm model 'resnet5000'"):
        DualEncoder(VisionConfig("resnet5000"), TextConfig(MINILM), 16, 64)
    with pytest.raises(ModelNotFoundError, match="pass a local path"):
        DualEncoder(VisionConfig("resnet18", pretrained=True), TextConfig(MINILM), 16, 64)
    with pytest.raises(ModelNotFoundError, match="emilyalsentzer/Bio_ClinicalBERT.*local path"):
        DualEncoder(VisionConfig("test_resnet"), TextConfig(), 16, 64)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_reference(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(ModelNotFoundError, match="not installed"):
        resolve_reference("pkg:no_such_package_xyz/model")


def test_timm_variant_built_from_model_kwargs():
    narrow = VisionConfig(
        "resnet18", model_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16}
    )
    model = DualEncoder(narrow, TextConfig(MINILM), 16, 64)
    assert model.vision.model.num_features == 128
    with pytest.raises(
        ModelNotFoundError, match=r"does not take vision.model_kwargs \['chanels'\]"
    ):
        DualEncoder(
            VisionConfig("resnet18", model_kwargs={"chanels": [8]}), TextConfig(MINILM), 16, 64
        )


def test_local_weights_file_for_vision_tower(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(path))
    model = DualEncoder(VisionConfig("test_resnet", weights=str(path)), TextConfig(MINILM), 16, 64)
    for key, value in ref.state_dict().items():
        assert torch.equal(model.vision.model.state_dict()[key], value)


def test_objectives_get_fp32_embeddings_under_bf16_autocast(tokens):
    from fundus_lit.data.batch import Batch
    from fundus_lit.module import PretrainModule

    module = PretrainModule(
        VisionConfig("test_resnet"), TextConfig(MINILM), embed_dim=16, image_size=64
    )
    seen = {}
    obj = module.objectives[0]
    original = obj.forward

    def spy(outputs, batch):
        seen["dtype"] = outputs.image_emb.dtype
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return original(outputs, batch)

    obj.forward = spy
    n = tokens["input_ids"].shape[0]
    batch = Batch(
        torch.zeros(n, 3, 64, 64, dtype=torch.uint8),
        tokens["input_ids"],
        tokens["attention_mask"],
        [""] * n,
        ["a", "b"],
        ["d"] * n,
        torch.arange(n),
    )
    module.log = lambda *a, **k: None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = module._step(batch, "val")
    assert seen == {"dtype": torch.float32, "autocast": False} and loss.dtype == torch.float32


def test_channels_last_and_compiled_towers_give_the_same_outputs_and_keys(tokens):
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    ids = tokens["input_ids"], tokens["attention_mask"]
    plain = VisionConfig(name="test_resnet", pretrained=False)
    variants = {
        "channels_last": VisionConfig(name="test_resnet", pretrained=False, channels_last=True),
        # the eager backend runs dynamo's capture without inductor's minute-long CPU build
        "compiled": VisionConfig(
            name="test_resnet", pretrained=False, compile=True, compile_options={"backend": "eager"}
        ),
    }
    text = TextConfig(
        name=MINILM, pooling="mean", compile=True, compile_options={"backend": "eager"}
    )
    torch.manual_seed(0)
    reference = DualEncoder(plain, TextConfig(name=MINILM, pooling="mean"), 16, 64).eval()
    with torch.no_grad():
        expected = reference(images, *ids)
    for name, vision in variants.items():
        torch.manual_seed(0)
        encoder = DualEncoder(vision, text, 16, 64).eval()
        assert encoder.state_dict().keys() == reference.state_dict().keys(), name
        with torch.no_grad():
            out = encoder(
                images, *ids, requires=frozenset({"image_emb", "text_emb", "feature_map"})
            )
        torch.testing.assert_close(out.image_emb, expected.image_emb, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.text_emb, expected.text_emb, atol=1e-5, rtol=1e-4)
        assert out.feature_map.shape[1:] == (96, 2, 2)


def test_the_unused_bert_pooler_is_not_trained():
    tower = DualEncoder(VisionConfig(name="test_resnet"), TextConfig(name=MINILM), 16, 64).text
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and not any(".pooler." in f".{n}" for n in trainable)


def test_dual_encoder_config_round_trips_and_rebuilds_the_same_model():
    from fundus_lit.models.dual_encoder import DualEncoder, DualEncoderConfig

    config = DualEncoderConfig(
        VisionConfig("test_resnet", pretrained=False, compile=True),
        TextConfig(MINILM, pooling="mean", max_length=16),
        embed_dim=32,
        image_size=64,
        projection="mlp",
        temperature=0.05,
    )
    data = config.to_dict()
    assert DualEncoderConfig.from_dict(data | {"batch_size": 8, "optim": {}}) == config
    saved = config.for_saved_weights(text_name="/export/text_config")
    assert not saved.vision.compile and not saved.text.pretrained
    assert saved.text.name == "/export/text_config" and saved.embed_dim == 32
    a = DualEncoder.from_config(config.for_saved_weights())
    assert a.config == config.for_saved_weights()
    b = DualEncoder.from_config(DualEncoderConfig.from_dict(a.config.to_dict()))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(a.state_dict()[k].shape == v.shape for k, v in b.state_dict().items())
    with pytest.raises(TypeError, match="VisionConfig must be a mapping"):
        DualEncoderConfig.from_dict({"vision": "resnet18"})
