"""arcast_core.dropout.Dropout: nn.Dropout's behaviour with a cheaper CPU mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from arcast_core.dropout import LEVELS, Dropout


def test_it_keeps_the_expectation_and_drops_the_share_asked() -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 1000)
    out = Dropout(0.3).train()(x)
    kept = out != 0
    scale = LEVELS / (LEVELS - round(0.3 * LEVELS))
    assert torch.allclose(out[kept], torch.full_like(out[kept], scale))  # kept units scaled by exactly 1 / keep share
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.003)  # 400,000 draws: 3 points is ~6 sigma
    assert out.mean().item() == pytest.approx(1.0, abs=0.005)


def test_it_repeats_under_a_seed_and_draws_anew_each_call() -> None:
    layer = Dropout(0.5).train()
    x = torch.randn(64, 32)
    torch.manual_seed(7)
    first, second = layer(x), layer(x)
    torch.manual_seed(7)
    assert torch.equal(layer(x), first) and torch.equal(layer(x), second)
    assert not torch.equal(first, second)


def test_evaluation_and_gradients_are_nn_dropouts() -> None:
    x = torch.randn(8, 16, requires_grad=True)
    assert torch.equal(Dropout(0.5).eval()(x), x)  # identity: the exported graphs see no dropout
    assert torch.equal(Dropout(0.0).train()(x), x)
    torch.manual_seed(1)
    out = Dropout(0.5).train()(x)
    out.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (out != 0).float() * 2.0)  # the gradient flows through the kept units only
    assert isinstance(Dropout(0.1), nn.Dropout)  # state dicts and module searches see an nn.Dropout
