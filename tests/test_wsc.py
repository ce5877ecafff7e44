"""WSC (ViLReF, docs/objectives.md §3): reference numbers, the CLIP invariant, momentum keys and
queue without gradient, FIFO queue contents, and an exact checkpoint round trip."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.functional import clip_loss, label_similarity, wsc_loss, wsc_weights
from fundus_lit.objectives.wsc import WSCObjective

U = torch.tensor([(1, 0), (0.6, 0.8), (0.28, 0.96), (-0.8, 0.6)], dtype=torch.float64)
V = torch.tensor([(0.96, 0.28), (0.8, 0.6), (0, 1), (-0.6, -0.8)], dtype=torch.float64)
S = 1 / 0.07
E = torch.eye(3, dtype=torch.float64)


def test_reference_values():
    one_hot = torch.stack([E[0], E[1], E[0], E[2]])
    assert wsc_loss(U, V, S, one_hot).item() == pytest.approx(1.166854, abs=1e-6)
    multi = torch.stack([E[0] + E[1], E[1], E[0], E[2]])
    assert wsc_loss(U, V, S, multi).item() == pytest.approx(1.134738, abs=1e-6)


def test_fn_removal_is_separable_from_the_weighting():
    """docs/objectives.md §3, gamma = 1, delta = 1: with removal an identical label set weighs 0;
    without it such a pair is a plain negative, and for one-hot labels every weight is then 1
    (CLIP)."""
    one_hot = torch.stack([E[0], E[1], E[0], E[2]])
    kept = wsc_loss(U, V, S, one_hot, gamma=1.0, fn_threshold=1.0, fn_removal=True)
    plain = wsc_loss(U, V, S, one_hot, gamma=1.0, fn_threshold=1.0, fn_removal=False)
    assert kept.item() == pytest.approx(1.166854, abs=1e-6)
    assert plain.item() == pytest.approx(1.167397, abs=1e-6)
    assert plain.item() == pytest.approx(clip_loss(U, V, S).item(), abs=1e-12)


def test_label_similarity_treats_empty_sets():
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    a = label_similarity(y, y)
    assert a[0, 1] == 1 and a[0, 2] == 0 and a[2, 3] == pytest.approx(2**-0.5)


def test_identical_label_sets_of_any_size_have_similarity_exactly_one():
    """Found while writing docs/objectives.md: with sqrt(n_i) * sqrt(n_j) in the denominator an
    identical set of 6, 11, 14, ... labels scored 1 - 1e-7 < delta and escaped removal."""
    for n in range(1, 40):
        y = torch.zeros(2, 40)
        y[:, :n] = 1
        a = label_similarity(y, y)
        assert (a == 1).all(), n
        weights = wsc_weights(a, torch.arange(2), gamma=1.0, fn_threshold=1.0)
        assert weights[0, 1] == 0 and weights[1, 0] == 0, n


def test_gamma0_without_removal_is_clip_in_value_and_gradient():
    labels = torch.stack([E[0], E[1], E[0], E[2]])
    u1, v1 = U.clone().requires_grad_(), V.clone().requires_grad_()
    u2, v2 = U.clone().requires_grad_(), V.clone().requires_grad_()
    a = wsc_loss(u1, v1, S, labels, gamma=0.0, fn_threshold=1.5)
    b = clip_loss(u2, v2, S)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    assert torch.allclose(u1.grad, u2.grad) and torch.allclose(v1.grad, v2.grad)


class ToyEncoder(nn.Module):
    """Enough of a DualEncoder for the objective: two linear towers, embed_dim, a BN buffer."""

    def __init__(self, dim_in=6, dim=4):
        super().__init__()
        torch.manual_seed(0)
        self.embed_dim = dim
        self.img = nn.Linear(dim_in, dim)
        self.txt = nn.Embedding(20, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, images):
        return {"emb": F.normalize(self.norm(self.img(images)), dim=-1)}

    def encode_text(self, ids, mask, keys=None):
        return {"emb": F.normalize(self.txt(ids).mean(dim=1), dim=-1)}

    def forward(self, batch):
        return ModelOutputs(
            image_emb=self.encode_image(batch.images)["emb"],
            text_emb=self.encode_text(batch.input_ids, batch.attention_mask)["emb"],
            scale=self.logit_scale.exp(),
        )


def make_batch(step, b=4, c=3):
    g = torch.Generator().manual_seed(100 + step)
    labels = (torch.rand(b, c, generator=g) < 0.5).float()
    return SimpleNamespace(
        images=torch.randn(b, 6, generator=g),
        input_ids=torch.randint(0, 20, (b, 5), generator=g),
        attention_mask=torch.ones(b, 5, dtype=torch.long),
        labels=labels,
        text_keys=[],
    )


def train_steps(encoder, objective, steps, start=0):
    opt = torch.optim.SGD(list(encoder.parameters()), lr=0.5)
    losses = []
    for step in range(start, start + steps):
        batch = make_batch(step)
        out = objective(encoder(batch), batch)
        loss = out.losses["loss"]
        opt.zero_grad()
        loss.backward()
        for p in objective.momentum_encoder.parameters():
            assert p.grad is None  # no gradient reaches the momentum encoder
        for buffer in (objective.image_queue, objective.text_queue, objective.label_queue):
            assert not buffer.requires_grad  # nor the queue
        opt.step()
        objective.after_optimizer_step(encoder)
        losses.append(loss.item())
    return losses, out


def test_queue_is_fifo_of_momentum_keys_with_labels():
    encoder = ToyEncoder()
    objective = WSCObjective(momentum=0.9, queue_size=8)
    objective.attach(encoder, 4)
    encoder.train()
    objective.train()
    _, out = train_steps(encoder, objective, 1)
    assert int(objective.queue_fill) == 4 and int(objective.queue_ptr) == 4
    assert torch.equal(objective.label_queue[:4], make_batch(0).labels)
    assert out.scalars["queue_fill"] == 0.0  # logged before the step enqueued
    train_steps(encoder, objective, 2, start=1)  # wraps around: the oldest keys go first
    assert int(objective.queue_fill) == 8 and int(objective.queue_ptr) == 4
    assert torch.equal(objective.label_queue[:4], make_batch(2).labels)
    assert torch.equal(objective.label_queue[4:], make_batch(1).labels)
    batch = make_batch(2)
    with torch.no_grad():
        keys = objective.momentum_encoder.encode_text(batch.input_ids, batch.attention_mask)
    assert not torch.equal(objective.text_queue[:4], keys["emb"])  # EMA moved after enqueue


def test_momentum_encoder_follows_the_online_encoder_by_ema():
    encoder = ToyEncoder()
    objective = WSCObjective(momentum=0.5)
    objective.attach(encoder, 4)
    before = objective.momentum_encoder.img.weight.clone()
    train_steps(encoder, objective, 1)
    expected = 0.5 * before + 0.5 * encoder.img.weight.detach()
    assert torch.allclose(objective.momentum_encoder.img.weight, expected)
    assert objective.momentum_encoder.training is False


def test_checkpoint_round_trip_restores_queue_pointer_and_ema(tmp_path):
    encoder = ToyEncoder()
    objective = WSCObjective(momentum=0.9, queue_size=12)
    objective.attach(encoder, 4)
    train_steps(encoder, objective, 2)
    state = {"encoder": encoder.state_dict(), "objective": objective.state_dict()}
    torch.save(state, tmp_path / "ckpt.pt")
    expected, _ = train_steps(encoder, objective, 1, start=2)

    restored_encoder = ToyEncoder()
    restored = WSCObjective(momentum=0.9, queue_size=12)
    restored.attach(restored_encoder, 4)
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    restored_encoder.load_state_dict(loaded["encoder"])
    restored.load_state_dict(loaded["objective"])
    assert int(restored.queue_ptr) == 8 and int(restored.queue_fill) == 8
    assert torch.equal(restored.label_queue, loaded["objective"]["label_queue"])
    assert torch.equal(
        restored.momentum_encoder.img.weight, loaded["objective"]["momentum_encoder.img.weight"]
    )
    again, _ = train_steps(restored_encoder, restored, 1, start=2)
    assert again == expected


def test_queue_is_a_ring_for_any_batch_size():
    """A queue that is not a multiple of the batch (or a batch shortened by skipped images)
    wraps around: the newest keys overwrite the oldest."""
    encoder = ToyEncoder()
    objective = WSCObjective(momentum=0.9, queue_size=6)
    objective.attach(encoder, 4)
    keys = [torch.full((4, objective.image_queue.shape[1]), float(step)) for step in (1, 2)]
    labels = torch.zeros(4, 3)
    for key in keys:
        objective._enqueue(key, key, labels)
    assert int(objective.queue_ptr) == 2 and int(objective.queue_fill) == 6
    # slots 0-3 got step 1, then step 2 filled 4, 5 and wrapped onto 0, 1
    assert objective.image_queue[:, 0].tolist() == [2.0, 2.0, 1.0, 1.0, 2.0, 2.0]
    big = torch.full((9, objective.image_queue.shape[1]), 3.0)
    big[-6:] = torch.arange(6.0)[:, None]
    objective._enqueue(big, big, torch.zeros(9, 3))  # only the newest six fit
    assert sorted(objective.image_queue[:, 0].tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_bad_configurations_and_missing_labels():
    with pytest.raises(ValueError, match="set momentum when queue_size > 0"):
        WSCObjective(momentum=None, queue_size=8)
    encoder = ToyEncoder()
    batch = make_batch(0)
    batch.labels = None
    with pytest.raises(ValueError, match="per-sample label vectors"):
        WSCObjective(momentum=None)(encoder(batch), batch)


def test_objective_without_fn_removal_is_clip_for_one_hot_labels():
    """The module passes fn_removal through: the ablation recipe's setting reaches the loss."""
    encoder = ToyEncoder()
    batch = make_batch(0)
    batch.labels = torch.eye(3)[torch.tensor([0, 1, 0, 2])]  # images 0 and 2 share their label
    outputs = encoder(batch)
    plain = WSCObjective(momentum=None, gamma=1.0, fn_removal=False)(outputs, batch)
    removed = WSCObjective(momentum=None, gamma=1.0)(outputs, batch)
    clip = clip_loss(outputs.image_emb, outputs.text_emb, outputs.scale)
    assert plain.losses["loss"].item() == pytest.approx(clip.item(), abs=1e-6)
    assert plain.scalars["false_negatives"] == 0 and removed.scalars["false_negatives"] == 2
    assert removed.losses["loss"].item() != pytest.approx(clip.item(), abs=1e-6)


@pytest.fixture(scope="module")
def frozen_text_encoder():
    from fundus_lit.models.dual_encoder import DualEncoder
    from fundus_lit.models.text import TextConfig
    from fundus_lit.models.vision import VisionConfig
    from tests.conftest import MINILM

    torch.manual_seed(0)
    text = TextConfig(name=MINILM, pooling="mean", freeze=True, max_length=16)
    return DualEncoder(VisionConfig(name="test_resnet"), text, embed_dim=32, image_size=64)


def test_momentum_copy_shares_frozen_towers_and_copies_only_what_trains(frozen_text_encoder):
    encoder = frozen_text_encoder
    objective = WSCObjective(momentum=0.99, queue_size=16)
    objective.attach(encoder, 4)
    online = {id(p) for p in encoder.parameters()}
    copy = list(objective.momentum_encoder.parameters())
    assert {id(p) for p in encoder.text.parameters()} <= {id(p) for p in copy}  # shared
    own = [p for p in copy if id(p) not in online]
    trained = [p for p in encoder.parameters() if p.requires_grad]
    assert sum(p.numel() for p in own) == sum(p.numel() for p in trained)
    assert sum(p.numel() for p in encoder.text.parameters()) > 10 * sum(p.numel() for p in own)


def test_momentum_keys_follow_the_trainers_precision_and_stay_fp32(frozen_text_encoder):
    from fundus_lit.core.resolve import load_tokenizer
    from fundus_lit.data.batch import Batch
    from tests.conftest import MINILM

    encoder = frozen_text_encoder.eval()
    objective = WSCObjective(momentum=0.99, queue_size=16)
    objective.attach(encoder, 4)
    texts = ["drusen", "a normal fundus", "optic disc cupping", "haemorrhages and exudates"]
    tokens = load_tokenizer(MINILM)(texts, padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        images=torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=g),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        texts=texts,
        categories=[""] * 4,
        datasets=["d"] * 4,
        indices=torch.arange(4),
        labels=torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]]),
    )
    with torch.no_grad():
        outputs = encoder(batch.images, batch.input_ids, batch.attention_mask)
    losses, keys = {}, {}
    for dtype in (None, torch.bfloat16):
        objective.autocast_dtype = dtype
        keys[dtype] = objective._momentum_keys(batch)
        assert all(k.dtype == torch.float32 for k in keys[dtype])
        losses[dtype] = objective(outputs, batch).losses["loss"]
    image32, image16 = keys[None][0], keys[torch.bfloat16][0]
    assert not torch.equal(image16, image32)  # the momentum forward did run in bf16
    torch.testing.assert_close(image16, image32, atol=3e-2, rtol=0)
    assert losses[torch.bfloat16].dtype == torch.float32
    assert float(losses[torch.bfloat16]) == pytest.approx(float(losses[None]), rel=2e-2)


def _reference_wsc(image, text, image_keys, text_keys, scale, labels, key_labels, fn_removal):
    """docs/objectives.md §3 written out plainly: keys concatenated, each direction with its own
    weights, only the filled part of the queue (what the objective computed before its weights
    were shared, its queue read in place and its empty slots masked)."""
    sim = torch.zeros(len(labels), len(key_labels))
    for i, a in enumerate(labels):
        for j, b in enumerate(key_labels):
            na, nb = a.sum(), b.sum()
            sim[i, j] = 1.0 if na == 0 and nb == 0 else (a @ b) / (na * nb).sqrt()
    weights = (1 - sim).clamp_min(0)
    weights[sim >= 1.0] = 0.0 if fn_removal else 1.0
    weights[torch.arange(len(labels)), torch.arange(len(labels))] = 1.0

    def direction(queries, keys):
        logits = scale * queries @ keys.t()
        return (torch.logsumexp(logits + weights.log(), 1) - logits.diagonal()).mean()

    return (direction(image, text_keys) + direction(text, image_keys)) / 2


@pytest.mark.parametrize("fn_removal", [True, False])
def test_objective_with_a_partly_filled_queue_equals_the_plain_formula(fn_removal):
    """The shared weight matrix, the queue read in place and the masked empty slots change
    nothing: the loss equals the plain formula on the written keys within 1e-6."""
    encoder = ToyEncoder()
    objective = WSCObjective(momentum=0.9, queue_size=12, fn_removal=fn_removal)
    objective.attach(encoder, 4)
    train_steps(encoder, objective, 2)  # 8 of the 12 slots written
    assert int(objective.queue_fill) == 8
    batch = make_batch(5)
    with torch.no_grad():
        outputs = encoder(batch)
        loss = objective(outputs, batch).losses["loss"]
        m_image, m_text = objective._momentum_keys(batch)
        written = slice(0, 8)
        expected = _reference_wsc(
            outputs.image_emb,
            outputs.text_emb,
            torch.cat([m_image, objective.image_queue[written]]),
            torch.cat([m_text, objective.text_queue[written]]),
            outputs.scale,
            batch.labels,
            torch.cat([batch.labels, objective.label_queue[written]]),
            fn_removal,
        )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
