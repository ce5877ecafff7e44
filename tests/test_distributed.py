"""Distributed rule (docs/objectives.md §8): 2 gloo processes on CPU equal one process on the whole
batch, in loss and in gradients (DDP averages the per-rank gradients, as in training), for CLIP and
for FLAIR with its categories gathered across ranks."""

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fundus_lit.core.distributed import gather_no_grad, gather_with_grad
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.clip import CLIPObjective
from fundus_lit.objectives.flair import FLAIRObjective
from fundus_lit.objectives.wsc import WSCObjective

B, DIM_I, DIM_T, D = 12, 6, 5, 4
# categories shared across the two ranks' halves, spelled differently, and the empty category
CATEGORIES = ["a", "b", "A.", "c", "", "b", "a", "", "d", "c", "a-b", "a b"]
LABELS = (torch.arange(B * 3).reshape(B, 3) % 4 == 0).float()  # multi-hot, some rows empty
OBJECTIVES = {
    "clip": CLIPObjective,
    "flair": FLAIRObjective,
    "wsc": lambda: WSCObjective(momentum=None),  # no momentum, no queue: gathered like CLIP
}


class Toy(nn.Module):
    """Two linear towers and a logit scale: enough to check the objective's gathering."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.img = nn.Linear(DIM_I, D)
        self.txt = nn.Linear(DIM_T, D)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x, t):
        return ModelOutputs(
            image_emb=F.normalize(self.img(x), dim=-1),
            text_emb=F.normalize(self.txt(t), dim=-1),
            scale=self.logit_scale.exp(),
        )


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, DIM_I, generator=g), torch.randn(B, DIM_T, generator=g)


def loss_of(objective, outputs, rows):
    batch = SimpleNamespace(categories=CATEGORIES[rows], labels=LABELS[rows])
    return OBJECTIVES[objective]()(outputs, batch).losses["loss"]


def _worker(rank, world, port, out_dir, objective):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, t = data()
        share = B // world
        rows = slice(rank * share, (rank + 1) * share)
        model = nn.parallel.DistributedDataParallel(Toy())
        model.zero_grad()
        loss = loss_of(objective, model(x[rows], t[rows]), rows)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        grads = {n: p.grad.clone() for n, p in model.module.named_parameters()}
        # Uneven shares (a short last batch): values gathered in rank order, grads to the owner.
        sizes = [3, 5]
        mine = torch.arange(sizes[rank], dtype=torch.float64) + 10 * rank
        mine.requires_grad_(True)
        gathered, offset = gather_with_grad(mine)
        (gathered * torch.arange(1.0, 9.0, dtype=torch.float64)).sum().backward()
        labels = gather_no_grad(torch.full((sizes[rank], 2), rank))
        torch.save(
            {
                "loss": mean_loss / world,
                "grads": grads,
                "gathered": gathered.detach(),
                "offset": offset,
                "uneven_grad": mine.grad,
                "labels": labels,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_two_gloo_ranks_equal_one_process(tmp_path, objective):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), objective), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    model = Toy()
    x, t = data()
    loss = loss_of(objective, model(x, t), slice(None))
    loss.backward()

    for res in ranks:
        torch.testing.assert_close(res["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(res["grads"][name], p.grad, rtol=1e-5, atol=1e-6)

    expected = torch.cat([torch.arange(3.0), torch.arange(5.0) + 10]).double()
    weights = torch.arange(1.0, 9.0, dtype=torch.float64)
    for rank, res in enumerate(ranks):
        torch.testing.assert_close(res["gathered"], expected)
        assert res["offset"] == (0, 3)[rank]
        # both ranks backpropagate the same sum, so each slice gets 2x its weights
        own = weights[:3] if rank == 0 else weights[3:]
        torch.testing.assert_close(res["uneven_grad"], 2 * own)
        assert res["labels"][:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]


def _retrieval_rows(rank):
    """Rank r's validation rows: uneven sizes (5 and 3), texts and categories repeating across
    ranks, so cross-rank matches decide the metrics."""
    g = torch.Generator().manual_seed(10 + rank)
    n = 5 if rank == 0 else 3
    image = F.normalize(torch.randn(n, D, generator=g), dim=-1)
    text = F.normalize(image + 0.3 * torch.randn(n, D, generator=g), dim=-1)
    texts = [f"text {(i + rank) % 4}" for i in range(n)]
    cats = [("a",) if (i + rank) % 2 else ("b", "c") for i in range(n)]
    return image, text, texts, cats


def _retrieval_worker(rank, world, port, out_dir):
    from fundus_lit.callbacks import RetrievalEvaluation

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        image, text, texts, cats = _retrieval_rows(rank)
        callback = RetrievalEvaluation(ks=[1, 2])
        trainer = SimpleNamespace(
            sanity_checking=False, current_epoch=0, world_size=world, global_rank=rank
        )
        module = SimpleNamespace(log=lambda *args, **kwargs: None)
        callback.on_validation_epoch_start(trainer, module)
        outputs = {"image_emb": image, "text_emb": text}
        first = 0 if rank == 0 else len(_retrieval_rows(0)[0])
        indices = torch.arange(first, first + len(texts))
        batch = SimpleNamespace(texts=texts, record_categories=cats, indices=indices)
        callback.on_validation_batch_end(trainer, module, outputs, batch, 0)
        callback.on_validation_epoch_end(trainer, module)
        torch.save(callback.last, os.path.join(out_dir, f"retrieval{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_retrieval_callback_gathers_every_rank(tmp_path):
    from fundus_lit.eval.retrieval_tasks import case_retrieval, pair_retrieval

    mp.spawn(_retrieval_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rows = [_retrieval_rows(rank) for rank in range(2)]
    image = torch.cat([r[0] for r in rows])
    text = torch.cat([r[1] for r in rows])
    texts = [t for r in rows for t in r[2]]
    cats = [c for r in rows for c in r[3]]
    expected = pair_retrieval(image, text, texts, [1, 2]) | {
        "i2i": case_retrieval(image, cats, ks=[1, 2])
    }
    assert torch.load(tmp_path / "retrieval0.pt") == expected
    assert expected["i2i"]["queries"] == 8 and torch.load(tmp_path / "retrieval1.pt") is None


class KeyToy(Toy):
    """Toy with the encode_* methods a momentum copy is called through."""

    embed_dim = D

    def encode_image(self, images):
        return {"emb": F.normalize(self.img(images), dim=-1)}

    def encode_text(self, features, mask=None, keys=None):
        return {"emb": F.normalize(self.txt(features), dim=-1)}


def _queue_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, t = data()
        encoder = KeyToy()
        objective = WSCObjective(momentum=0.9, queue_size=8)
        objective.attach(encoder, 2)
        rows = slice(2 * rank, 2 * rank + 2)
        batch = SimpleNamespace(
            images=x[rows],
            input_ids=t[rows],
            attention_mask=None,
            labels=LABELS[rows],
            text_keys=[],
        )
        objective(encoder(x[rows], t[rows]), batch).losses["loss"].backward()
        objective.after_optimizer_step(encoder)
        torch.save(
            {k: v for k, v in objective.state_dict().items() if "queue" in k},
            os.path.join(out_dir, f"queue{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_every_rank_holds_the_same_queue_after_a_step(tmp_path):
    """Each rank enqueues the momentum keys gathered from all ranks, in rank order."""
    mp.spawn(_queue_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    queues = [torch.load(tmp_path / f"queue{r}.pt") for r in range(2)]
    for name in queues[0]:
        torch.testing.assert_close(queues[0][name], queues[1][name], rtol=0, atol=0)
    x, t = data()
    keys = KeyToy()  # the momentum copy before its first EMA update = the initial encoder
    with torch.no_grad():
        torch.testing.assert_close(queues[0]["image_queue"][:4], keys.encode_image(x[:4])["emb"])
        torch.testing.assert_close(queues[0]["text_queue"][:4], keys.encode_text(t[:4])["emb"])
    assert torch.equal(queues[0]["label_queue"][:4], LABELS[:4])
    assert int(queues[0]["queue_ptr"]) == 4 and int(queues[0]["queue_fill"]) == 4


def _keepfit_loss(outputs):
    """Expert-stream CLIP + 100 x revision, on outputs carrying the expert rows in extra."""
    from fundus_lit.objectives.keepfit import RevisionObjective

    torch.manual_seed(5)  # the same revision attention on every rank and in the reference
    revision = RevisionObjective()
    revision.attach(SimpleNamespace(embed_dim=D), 0)
    batch = SimpleNamespace(extra={"expert": SimpleNamespace()})
    clip = CLIPObjective(stream="expert")(outputs, batch).losses["loss"]
    return clip + 100 * revision(outputs, batch).losses["loss"]


def _split_streams(out, n):
    public = ModelOutputs(image_emb=out.image_emb[:n], text_emb=out.text_emb[:n], scale=out.scale)
    expert = ModelOutputs(image_emb=out.image_emb[n:], text_emb=out.text_emb[n:], scale=out.scale)
    public.extra["expert"] = expert
    return public


def _expert_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, t = data()
        share = B // 2 // world  # public rows 0..5, expert rows 6..11, split between ranks
        pub = slice(rank * share, (rank + 1) * share)
        exp = slice(B // 2 + rank * share, B // 2 + (rank + 1) * share)
        model = nn.parallel.DistributedDataParallel(Toy())
        # one forward over both streams: DDP expects one forward per backward
        out = model(torch.cat([x[pub], x[exp]]), torch.cat([t[pub], t[exp]]))
        loss = _keepfit_loss(_split_streams(out, share))
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        grads = {n: p.grad.clone() for n, p in model.module.named_parameters()}
        torch.save(
            {"loss": mean_loss / world, "grads": grads}, os.path.join(out_dir, f"e{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


def test_expert_stream_objectives_on_two_ranks_equal_one_process(tmp_path):
    """KeepFIT v1's expert CLIP and revision terms gather the expert rows like CLIP does."""
    mp.spawn(_expert_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"e{r}.pt") for r in range(2)]
    model = Toy()
    x, t = data()
    loss = _keepfit_loss(_split_streams(model(x, t), B // 2))
    loss.backward()
    for res in ranks:
        torch.testing.assert_close(res["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(res["grads"][name], p.grad, rtol=1e-5, atol=1e-6)


def test_first_per_index_drops_sampler_padding_and_restores_split_order():
    from fundus_lit.core.distributed import first_per_index

    # two ranks of a 5-image split, as a distributed sampler deals them: rank 0 gets 0, 2, 4,
    # rank 1 gets 1, 3 and image 0 again as padding
    gathered = torch.tensor([0, 2, 4, 1, 3, 0])
    keep = first_per_index(gathered)
    assert keep.tolist() == [0, 3, 1, 4, 2]
    assert gathered[keep].tolist() == [0, 1, 2, 3, 4]


def _caption_case():
    """A caption decoder and five captions of very different lengths: rank 0 takes the two short
    ones, rank 1 the three long ones, so a mean of per-rank means would weigh rank 0's tokens
    about three times as much as one process does."""
    from fundus_lit.models.captioner import CaptionDecoder
    from fundus_lit.objectives.captioning import CaptionObjective

    torch.manual_seed(0)
    objective = CaptionObjective(stream="public", dim=16, layers=1, heads=2, dropout=0.0)
    objective.decoder = CaptionDecoder(
        vocab_size=40, feature_dim=8, dim=16, layers=1, heads=2, max_length=12, dropout=0.0
    )
    g = torch.Generator().manual_seed(1)
    lengths = [3, 4, 11, 12, 10]
    ids = torch.zeros(5, 12, dtype=torch.long)
    mask = torch.zeros(5, 12, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, 40, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = 101 % 40, 102 % 40
        mask[row, :n] = 1
    feature_map = torch.randn(5, 8, 2, 2, generator=g)
    return objective, ids, mask, feature_map


def _caption_loss_and_grads(objective, ids, mask, feature_map, rows):
    outputs = ModelOutputs(
        image_emb=torch.zeros(len(ids[rows]), D),
        text_emb=None,
        scale=torch.tensor(1.0),
        feature_map=feature_map[rows],
    )
    batch = SimpleNamespace(input_ids=ids[rows], attention_mask=mask[rows])
    loss = objective(outputs, batch).losses["loss"]
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in objective.named_parameters()}


def _caption_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        objective, ids, mask, feature_map = _caption_case()
        rows = slice(0, 2) if rank == 0 else slice(2, 5)
        loss, grads = _caption_loss_and_grads(objective, ids, mask, feature_map, rows)
        for grad in grads.values():  # what DDP does with the ranks' gradients
            dist.all_reduce(grad)
            grad /= world
        torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"caption{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_caption_loss_is_a_token_mean_over_the_global_batch(tmp_path):
    mp.spawn(_caption_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    objective, ids, mask, feature_map = _caption_case()
    loss, grads = _caption_loss_and_grads(objective, ids, mask, feature_map, slice(None))
    ranks = [torch.load(tmp_path / f"caption{r}.pt") for r in range(2)]
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss)
    for res in ranks:
        assert res["grads"].keys() == grads.keys()
        for key, grad in grads.items():
            torch.testing.assert_close(res["grads"][key], grad, msg=key)
