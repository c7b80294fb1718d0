"""The post-hoc unlearning registry: every algorithm forgets on a tiny digits ViT and steps on a tiny OPT."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from zkapex_flwr import posthoc
from zkapex_flwr.data.images import load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.models import build_vit, clone_model, create_lm
from zkapex_flwr.tasks import ImageTask, LMTask
from zkapex_flwr.training import accuracy, per_sample_stats, train

BUILT_IN = ("ga", "graddiff", "kl-ga", "npo", "simnpo", "rmu", "undial", "dpo")


@pytest.fixture(scope="module")
def digits():
    """A tiny ViT that fits 400 digits; the forget set is its class-3 samples, the retain set the rest."""
    x, y = load_images("digits")
    x, y = x[:400], y[:400]
    task = ImageTask()
    model = build_vit((1, 8, 8), 10, embed_dim=32, depth=2, num_heads=2, patch_size=4, global_pool="avg", seed=0)
    train(model, task, TensorData((x, y)), epochs=20, lr=5e-3, batch_size=32)
    forget = TensorData((x[y == 3], y[y == 3]))
    retain = TensorData((x[y != 3], y[y != 3]))
    assert accuracy(model, task, forget) > 0.9  # there is something to forget
    return task, model, forget, retain


@pytest.fixture(scope="module")
def tiny_opt():
    g = torch.Generator().manual_seed(0)
    model = create_lm("opt", vocab_size=64, seq_len=16, hidden=16, layers=2, ffn=32, heads=2)
    forget = TensorData((torch.randint(3, 64, (8, 16), generator=g),))
    retain = TensorData((torch.randint(3, 64, (8, 16), generator=g),))
    return LMTask(), model, forget, retain


def _forget_loss(model, task, data) -> float:
    return float(per_sample_stats(model, task, data)["loss"].mean())


def test_registry_holds_the_open_unlearning_family():
    assert set(BUILT_IN) <= set(posthoc.ALGORITHMS)
    for name in BUILT_IN:
        alg = posthoc.get_algorithm(name)
        assert alg.name == name and isinstance(alg, posthoc.Algorithm)
    assert {n for n in BUILT_IN if posthoc.get_algorithm(n).needs_reference} == {"kl-ga", "npo", "rmu", "undial", "dpo"}
    assert posthoc.get_algorithm("npo").beta == 0.1  # open-unlearning's default


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_algorithm_forgets_on_digits(digits, name):
    task, model, forget, retain = digits
    before_acc, before_loss = accuracy(model, task, forget), _forget_loss(model, task, forget)
    out = posthoc.unlearn(clone_model(model), task, forget, retain, name, steps=8, lr=1e-3, seed=0)
    assert accuracy(out, task, forget) < before_acc - 0.1
    assert _forget_loss(out, task, forget) > before_loss + 0.1
    assert accuracy(out, task, retain) > 0.8  # a few steps do not wreck the rest


@pytest.mark.parametrize("name", [n for n in BUILT_IN if posthoc.get_algorithm(n).needs_retain])
def test_retain_algorithms_refuse_without_retain_data(digits, name):
    task, model, forget, _ = digits
    with pytest.raises(ValueError, match=f"'{name}' needs retain data"):
        posthoc.unlearn(clone_model(model), task, forget, None, name, steps=1)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown unlearning algorithm 'nope'") as err:
        posthoc.get_algorithm("nope")
    for name in BUILT_IN:
        assert f"'{name}'" in str(err.value)


@dataclass(frozen=True)
class PushToZero:
    """A user algorithm: teach the forget set class 0."""

    name: str = "test-push-to-zero"
    needs_retain: bool = False
    needs_reference: bool = False

    def loss(self, model, reference, task, batch):
        logits = task.forward(model, batch.forget)
        return F.cross_entropy(logits, torch.zeros_like(batch.forget[1]))


def test_user_registered_algorithm_runs(digits):
    task, model, forget, retain = digits
    posthoc.register_algorithm(PushToZero())
    try:
        with pytest.raises(ValueError, match="already registered"):
            posthoc.register_algorithm(PushToZero())
        out = posthoc.unlearn(clone_model(model), task, forget, None, "test-push-to-zero", steps=10, lr=3e-3)
        with torch.no_grad():
            zero = (out(forget.tensors[0]).argmax(-1) == 0).float().mean()
        assert zero > 0.8
    finally:
        posthoc.ALGORITHMS.pop("test-push-to-zero", None)
    with pytest.raises(TypeError, match="lacks"):
        posthoc.register_algorithm(object())


def test_npo_starts_at_its_closed_form(digits):
    """At θ = θ_ref the NPO forget term is (2/β)·log 2 whatever the data (a wrong sign or scale shows here)."""
    task, model, forget, _ = digits
    batch = posthoc.UnlearnBatch(forget.tensors)
    for beta in (0.1, 1.0):
        with torch.no_grad():
            loss = posthoc.NPO(beta=beta).loss(model, clone_model(model), task, batch)
        assert float(loss) == pytest.approx(2 / beta * math.log(2), rel=1e-5)
    # SimNPO with a tiny β: −(2/β)·log σ(β·ℓ) ≈ (2/β)·log 2 − ℓ (the mean loss ℓ is pushed up)
    with torch.no_grad():
        nll = float(task.per_sample_loss(model(forget.tensors[0]), forget.tensors).mean())
        simnpo = posthoc.SimNPO(delta=0.0, beta=0.01, gamma=1.0).loss(model, None, task, batch)
    assert float(simnpo) == pytest.approx(200 * math.log(2) - nll, abs=2e-3)


def test_same_seed_same_result(digits):
    task, model, forget, retain = digits
    a = posthoc.unlearn(clone_model(model), task, forget, retain, "graddiff", steps=3, seed=5)
    b = posthoc.unlearn(clone_model(model), task, forget, retain, "graddiff", steps=3, seed=5)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_rmu_layer_defaults_to_the_middle_block(digits, tiny_opt):
    assert posthoc.middle_layer(digits[1]) == "blocks.1"
    assert posthoc.middle_layer(tiny_opt[1]) == "model.decoder.layers.1"
    task, model, forget, retain = digits
    with pytest.raises(ValueError, match="is not a module"):
        posthoc.unlearn(clone_model(model), task, forget, retain, posthoc.RMU(layer="nope"), steps=1)
    # an explicit layer works too (an Algorithm object need not be registered)
    out = posthoc.unlearn(clone_model(model), task, forget, retain, posthoc.RMU(layer="blocks.0"), steps=2)
    assert not torch.equal(out.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)


def test_dpo_refusal_keeps_the_prefix(tiny_opt):
    task, model, forget, _ = tiny_opt
    ids = forget.tensors[0][:2]
    win = posthoc.DPORefusal()._win_batch(model, task, (ids,))[0]
    assert win.shape == ids.shape and torch.equal(win[:, :8], ids[:, :8])
    assert (win[:, 8:] == model.config.eos_token_id).all()
    win = posthoc.DPORefusal(refusal_ids=(5, 6))._win_batch(model, task, (ids,))[0]
    assert win[0, 8:].tolist() == [5, 6] * 4


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_algorithm_steps_on_a_tiny_opt(tiny_opt, name):
    task, model, forget, retain = tiny_opt
    out = posthoc.unlearn(clone_model(model), task, forget, retain, name, steps=1, lr=1e-3, batch_size=4)
    moved = sum(float((a - b).abs().sum()) for a, b in zip(out.parameters(), model.parameters(), strict=True))
    assert math.isfinite(moved) and moved > 0
    assert math.isfinite(_forget_loss(out, task, forget))
