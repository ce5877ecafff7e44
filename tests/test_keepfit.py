"""KeepFIT v1 pieces: the two-stream loader (lengths, DDP shares, reproducible partners) and the
revision attention (shapes, softmax over the keys, gradient paths)."""

from collections import Counter
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from conftest import tiny_fit_args

from fundus_lit.data.dataset import PairedDataset
from fundus_lit.data.samplers import DatasetBalancedSampler, EpochSampler
from fundus_lit.models.outputs import ModelOutputs
from fundus_lit.objectives.keepfit import RevisionObjective, revision_readout


class Indexed:
    """A stand-in RecordDataset: returns the key's record index."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return key[0] if isinstance(key, tuple) else key


def pairs(sampler, paired):
    return [paired[key] for key in sampler]


def test_two_stream_lengths_ranks_and_reproducibility():
    paired = PairedDataset(Indexed(40), Indexed(7), seed=3)
    single = EpochSampler(40, shuffle=True, seed=1)
    single.num_replicas, single.rank = 1, 0
    whole = pairs(single, paired)
    assert len(whole) == len(paired) == 40
    shares = []
    for rank in range(2):
        sampler = EpochSampler(40, shuffle=True, seed=1)
        sampler.num_replicas, sampler.rank = 2, rank
        sampler.num_samples, sampler.total_size = 20, 40
        shares.append(pairs(sampler, paired))
    assert all(len(share) == 20 for share in shares)
    # the two ranks' pairs are exactly the single process's pairs, split between them
    assert Counter(shares[0] + shares[1]) == Counter(whole)
    assert pairs(single, paired) == whole  # same seed and epoch: same partners
    single.set_epoch(1)
    assert pairs(single, paired) != whole  # a new epoch draws new partners
    partners = Counter(e for _, e in whole * 50)
    assert set(partners) <= set(range(7))


def test_duplicate_public_draws_get_independent_partners():
    paired = PairedDataset(Indexed(2), Indexed(1000), seed=0)
    sampler = DatasetBalancedSampler(["a", "a"], epoch_length=200, seed=0)
    drawn = pairs(sampler, paired)
    by_record = {r: {e for p, e in drawn if p == r} for r in (0, 1)}
    assert all(len(partners) > 50 for partners in by_record.values())


def test_revision_attention_shapes_and_softmax_axis():
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    u = F.normalize(torch.randn(5, 8), dim=-1)
    keys = F.normalize(torch.randn(12, 8), dim=-1)
    values = F.normalize(torch.randn(12, 8), dim=-1)
    revised, weights = revision_readout(attention, u, keys, values)
    assert revised.shape == (5, 8) and weights.shape == (2, 5, 12)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 5))  # over the expert keys


def test_revision_objective_trains_attention_and_both_streams():
    torch.manual_seed(0)
    objective = RevisionObjective(heads=2)
    objective.attach(SimpleNamespace(embed_dim=8), 4)
    leaves = [torch.randn(n, 8, requires_grad=True) for n in (4, 4, 6, 6)]
    u, t, eu, et = (F.normalize(x, dim=-1) for x in leaves)
    scale = torch.tensor(10.0)
    expert = ModelOutputs(image_emb=eu, text_emb=et, scale=scale)
    outputs = ModelOutputs(image_emb=u, text_emb=t, scale=scale, extra={"expert": expert})
    batch = SimpleNamespace(extra={"expert": SimpleNamespace()})
    result = objective(outputs, batch)
    result.losses["loss"].backward()
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves)
    assert all(p.grad is not None for p in objective.attention.parameters())
    assert 0.0 < float(result.scalars["attention_peak"]) <= 1.0


def test_keepfit_v1_fits_from_the_cli(tmp_path):
    import pytest

    from fundus_lit.cli import cli_main

    args = ["fit", *tiny_fit_args(tmp_path, ["flair.yaml", "keepfit_v1.yaml"])]
    cli = cli_main(args)
    logged = cli.trainer.callback_metrics
    for key in ("train/flair", "train/expert_clip", "train/revision", "val/loss"):
        assert bool(torch.isfinite(logged[key])), key
    assert "val/expert_clip" not in logged  # the expert stream feeds training only
    with pytest.raises(ValueError, match="expert stream but the batch has none"):
        cli_main([*args, "--data.init_args.expert=null"])
