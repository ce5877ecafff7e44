import math

import pytest
from torch import nn

from fundus_lit.optim import OptimConfig, param_groups, warmup_cosine, warmup_steps


def test_schedule_warms_up_then_reaches_floor_at_the_end():
    total, warm = 100, 10
    lrs = [warmup_cosine(s, warm, total, 0.1) for s in range(total + 1)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[total] == pytest.approx(0.1)
    assert warmup_cosine(55, warm, total, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert warmup_steps(0.05, 1000) == 50 and warmup_steps(20, 1000) == 20


def test_no_decay_on_norms_biases_and_logit_scale_and_multipliers():
    model = nn.Module()
    model.text = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    model.vision = nn.Linear(3, 3)
    model.logit_scale = nn.Parameter(nn.init.zeros_(nn.Parameter(nn.Linear(1, 1).bias)))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    model.frozen = frozen
    cfg = OptimConfig(lr=1.0, weight_decay=0.1, lr_multipliers={"text": 0.1})
    groups = param_groups(model.named_parameters(), cfg)
    by_key = {(g["weight_decay"], g["lr"]): len(g["params"]) for g in groups}
    # text: weight decayed at lr 0.1; text bias + norm (3 tensors) not decayed
    assert by_key == {(0.1, 0.1): 1, (0.0, 0.1): 3, (0.1, 1.0): 1, (0.0, 1.0): 2}
    assert sum(len(g["params"]) for g in groups) == 7  # frozen parameters left out
