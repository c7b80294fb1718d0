"""The trainer's learning-rate warmup and gradient clipping, checked against Adam's closed form.

With a loss linear in one weight, every gradient has the same sign. Adam's step is then exactly
``lr_t`` (m̂/√v̂ = 1) as long as every gradient has the same size, so the weight moves by the sum of
the schedule's learning rates. Clipping equal-sign gradients of sizes 1 and 1000 to norm 1 makes
them the same size; without clipping, the steps depend on their order and the sum is not reached.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.training import train


class LinearLoss:
    """loss(x) = w · x: the gradient of each batch is the mean of its x."""

    def forward(self, model, batch):
        return model(batch[0])

    def per_sample_loss(self, out, batch):
        return out.squeeze(-1)


def schedule(lr: float, steps: int, warm: int) -> list[float]:
    """A linear rise over ``warm`` steps from lr/warm to lr, then a cosine decay to 0."""
    rise = [lr * (1 / warm + (1 - 1 / warm) * t / warm) for t in range(warm)] if warm else []
    return rise + [lr * (1 + math.cos(math.pi * t / (steps - warm))) / 2 for t in range(steps - warm)]


def displacement(x: torch.Tensor, **kw) -> float:
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    train(model, LinearLoss(), TensorData((x,)), batch_size=1, weight_decay=0.0, lr=0.01, **kw)
    return -model.weight.item()


def test_warmup_rises_linearly_then_decays_by_cosine():
    x = torch.ones(10, 1)
    assert displacement(x, epochs=2) == pytest.approx(sum(schedule(0.01, 20, 0)), rel=1e-5)
    assert displacement(x, epochs=2, warmup=0.25) == pytest.approx(sum(schedule(0.01, 20, 5)), rel=1e-5)
    assert displacement(x, epochs=1, warmup=0.5) == pytest.approx(sum(schedule(0.01, 10, 5)), rel=1e-5)


def test_clip_norm_bounds_each_gradient():
    x = torch.tensor([[1.0], [1000.0]] * 4)
    target = sum(schedule(0.01, 16, 0))
    assert displacement(x, epochs=2, clip_norm=1.0) == pytest.approx(target, rel=1e-5)
    assert displacement(x, epochs=2) != pytest.approx(target, rel=1e-2)


def test_bad_schedule_settings_are_refused():
    x = torch.ones(4, 1)
    with pytest.raises(ValueError, match="warmup is a share of the steps"):
        displacement(x, epochs=1, warmup=1.0)
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        displacement(x, epochs=1, clip_norm=0.0)
