"""MPU math: reparameterizations, zero-sum noise, harmonic denoising, the in-process loop, the
reconstruction attack and its defences, the consistency screen."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from zkapex_flwr.data.images import load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.models import build_vit, clone_model, create_lm
from zkapex_flwr.mpu.attack import reconstruct, reconstruction_error
from zkapex_flwr.mpu.denoise import harmonic_weights, inverted_updates, post_process
from zkapex_flwr.mpu.perturb import MPUConfig, make_copies, rms, zero_sum_noise
from zkapex_flwr.mpu.reparam import Reparam, find_sites, random_reparam
from zkapex_flwr.mpu.run import client_round, mpu_unlearn
from zkapex_flwr.mpu.screen import DEFAULT_THRESHOLD, consistency, details, flag
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.training import accuracy, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is fastest (and the file's budget is one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _small_vit(global_pool: str = "token") -> nn.Module:
    return build_vit((1, 8, 8), 10, embed_dim=32, depth=2, num_heads=4, global_pool=global_pool, seed=0).eval()


def _small_opt() -> nn.Module:
    return create_lm("opt", vocab_size=50, seq_len=16, hidden=32, layers=2, ffn=64, heads=4, seed=0).eval()


def _loaded(model: nn.Module, state) -> nn.Module:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m.eval()


# ---- reparameterization ------------------------------------------------------------------------------


@pytest.mark.parametrize("head_transform", ["orthogonal", "general", "none"])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_vit_reparam_preserves_function_and_inverts(head_transform, pool):
    model = _small_vit(pool)
    mlps, attns = find_sites(model)
    assert len(mlps) == 2 and len(attns) == 2 and all(a.qk_transform for a in attns)
    theta = _state(model)
    r = random_reparam(model, torch.Generator().manual_seed(1), head_transform=head_transform)
    sent = r.apply(theta)
    for key in ("blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.1.mlp.fc1.weight"):
        assert (sent[key] - theta[key]).abs().max() > 1e-2  # it does change the parameters
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(_loaded(model, sent)(x), model(x), atol=1e-5, rtol=0)
    back = r.invert(sent)
    assert all(torch.allclose(back[k], theta[k], atol=1e-6, rtol=0) for k in theta)


@pytest.mark.parametrize("head_transform", ["orthogonal", "general"])
def test_opt_reparam_preserves_function_keeps_ties_and_inverts(head_transform):
    model = _small_opt()
    _, attns = find_sites(model)
    assert len(attns) == 2 and attns[0].heads == 4 and attns[0].head_dim == 8
    theta = model.state_dict()  # aliased: lm_head.weight is embed_tokens.weight
    r = random_reparam(model, torch.Generator().manual_seed(3), head_transform=head_transform)
    sent = r.apply(theta)
    emb, head = "model.decoder.embed_tokens.weight", "lm_head.weight"
    assert sent[emb] is theta[emb] and sent[head] is theta[head]  # embeddings untouched, still tied
    assert (sent["model.decoder.layers.0.fc1.weight"] - theta["model.decoder.layers.0.fc1.weight"]).abs().max() > 1e-2
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, ref = _loaded(model, sent)(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    back = r.invert(sent)
    assert all(torch.allclose(back[k], theta[k], atol=1e-6, rtol=0) for k in theta)


def test_invert_update_is_the_linear_inverse():
    model = _small_vit()
    r = random_reparam(model, torch.Generator().manual_seed(5), head_transform="general")
    a = _state(model)
    b = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(6)) for k, v in a.items()}
    ra, rb = r.apply(a), r.apply(b)
    delta = r.invert_update({k: (rb[k] - ra[k]).double() for k in a})
    assert all(torch.allclose(delta[k].float(), b[k] - a[k], atol=1e-6) for k in a)
    assert Reparam.identity().apply(a)["head.weight"] is a["head.weight"]


# ---- noise and denoising --------------------------------------------------------------------------------


def test_zero_sum_noise_is_zero_sum_rms_scaled_and_tied():
    model = _small_opt()
    state = model.state_dict()
    cfg = MPUConfig(kappa=0.1)
    eps = zero_sum_noise(state, cfg, torch.Generator().manual_seed(0))
    assert len(eps) == 3
    for key, theta in state.items():
        total = sum(e[key].double() for e in eps)
        assert total.abs().max() < 1e-6 * max(rms(theta), 1e-12) + 1e-9, key
        mean_sq = sum(rms(e[key]) ** 2 for e in eps) / 3
        assert mean_sq**0.5 == pytest.approx(0.1 * rms(theta), rel=1e-4, abs=1e-12), key
    assert all(e["lm_head.weight"] is e["model.decoder.embed_tokens.weight"] for e in eps)  # tied: one draw
    # copies: R_k⁻¹(copy_k) = θ + α_k ε_k, and the harmonic combination of the bases is θ exactly
    copies = make_copies(model, cfg, torch.Generator().manual_seed(1))
    w = harmonic_weights(cfg.alphas)
    bases = [c.secret.invert(c.state) for c in copies]
    for key in ("model.decoder.layers.1.fc2.weight", "model.decoder.layers.0.self_attn.q_proj.weight"):
        comb = sum(float(w[k]) * bases[k][key].double() for k in range(3))
        assert torch.allclose(comb.float(), state[key], atol=1e-6)
        assert rms(bases[2][key] - state[key]) > 3 * rms(bases[0][key] - state[key])  # α = 4 vs α = 1
    assert all(c.state["lm_head.weight"] is c.state["model.decoder.embed_tokens.weight"] for c in copies)


def test_harmonic_weights():
    w = harmonic_weights([1.0, 2.0, 4.0])
    assert float(w.sum()) == pytest.approx(1.0)
    assert torch.allclose(w * torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64), torch.full((3,), 4 / 7).double())
    with pytest.raises(ValueError):
        harmonic_weights([1.0, 0.0])


def test_harmonic_weights_cancel_first_order_noise_exactly_for_an_affine_update():
    """Gradient descent on a quadratic loss of a linear model: the update map is affine in θ, so
    Σ w_k Δ_k = Δ(θ) exactly with harmonic weights — and not with uniform ones."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    model = nn.Linear(6, 2).double()

    def gd(state, steps=5, lr=0.1):
        m = _loaded(model, state)
        for _ in range(steps):
            loss = 0.5 * (m(x) - y).pow(2).mean()
            grads = torch.autograd.grad(loss, list(m.parameters()))
            with torch.no_grad():
                for p, g in zip(m.parameters(), grads, strict=True):
                    p -= lr * g
        return _state(m)

    theta = _state(model)
    clean = gd(theta)
    cfg = MPUConfig(kappa=0.3)
    copies = make_copies(model, cfg, torch.Generator().manual_seed(0))
    returned = [gd(c.state) for c in copies]
    new = post_process(theta, copies, returned)
    assert all(torch.allclose(new[k], clean[k], atol=1e-10) for k in theta)
    # uniform weights leave the first-order term J·Σ ε_k/3·α_k ≠ 0
    deltas = inverted_updates(copies, returned)
    uniform = {k: theta[k] + sum(d[k] for d in deltas) / 3 for k in theta}
    assert max(float((uniform[k] - clean[k]).abs().max()) for k in theta) > 1e-3


# ---- the loop on a tiny digits ViT ----------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_vit():
    torch.manual_seed(0)
    x, y = load_images("digits")
    train_set, test = TensorData((x[:1400], y[:1400])), TensorData((x[1400:], y[1400:]))
    model = build_vit((1, 8, 8), 10, embed_dim=32, depth=2, num_heads=4, patch_size=4, global_pool="avg", seed=0)
    task = ImageTask()
    train(model, task, train_set, epochs=6, lr=4e-3, batch_size=64)
    is_f, is_t = train_set.tensors[1] == 3, test.tensors[1] == 3
    forget, retain = train_set.subset(torch.nonzero(is_f)[:, 0]), train_set.subset(torch.nonzero(~is_f)[:, 0])
    retain_test = test.subset(torch.nonzero(~is_t)[:, 0])
    assert accuracy(model, task, forget) > 0.9 and accuracy(model, task, retain_test) > 0.8
    return model, task, forget, retain, retain_test


def test_mpu_unlearn_forgets_like_clean(digits_vit):
    model, task, forget, retain, retain_test = digits_vit
    cfg = MPUConfig(rounds=3, steps=5, lr=3e-4, algorithm="ga")
    out = {mode: mpu_unlearn(clone_model(model), task, forget, retain, cfg, mode=mode) for mode in ("clean", "mpu")}
    f = {mode: accuracy(m, task, forget) for mode, m in out.items()}
    r = {mode: accuracy(m, task, retain_test) for mode, m in out.items()}
    assert f["clean"] < 0.2 and f["mpu"] < 0.2 and abs(f["mpu"] - f["clean"]) < 0.15, f
    assert r["mpu"] > r["clean"] - 0.1, r
    with pytest.raises(ValueError, match="mode"):
        mpu_unlearn(clone_model(model), task, forget, retain, cfg, mode="other")


# ---- the attack and the defences --------------------------------------------------------------------


@pytest.mark.parametrize("make", [_small_vit, _small_opt])
def test_attack_rebuilds_theta_and_the_defences_stop_it(make):
    model = make()
    theta = _state(model)
    errors = {}
    for defence in ("none", "common-noise", "independent-noise"):
        cfg = MPUConfig(kappa=0.1, defence=defence, defence_kappa=0.1)
        copies = make_copies(model, cfg, torch.Generator().manual_seed(7))
        rec = reconstruct([c.state for c in copies], cfg.alphas, model)
        errors[defence] = reconstruction_error(rec, theta, model)["overall"]
        if defence == "none":  # each copy alone is θ + α κ noise; the combination cancels it
            assert reconstruction_error(copies[0].state, theta, model)["overall"] > 0.08
            x = torch.randint(0, 50, (2, 10)) if make is _small_opt else torch.randn(4, 1, 8, 8)
            with torch.no_grad():
                a, b = (_loaded(model, s) for s in (rec, theta))
                fa, fb = (a(input_ids=x).logits, b(input_ids=x).logits) if make is _small_opt else (a(x), b(x))
            assert (fa - fb).abs().max() < 0.05 * fb.abs().max()
    assert errors["none"] < 0.01, errors
    assert errors["common-noise"] > 0.08 and errors["independent-noise"] > 0.05, errors


# ---- the screen ------------------------------------------------------------------------------------


def test_screen_flags_garbage_and_zero_not_consistent_updates(digits_vit):
    model, task, forget, retain, _ = digits_vit
    cfg = MPUConfig(steps=5, lr=3e-4, algorithm="ga")
    copies = make_copies(model, cfg, torch.Generator().manual_seed(0))
    sent = [c.state for c in copies]

    def score(returned):
        return consistency(inverted_updates(copies, returned), cfg.alphas)

    honest_returned = client_round(model, sent, task, forget, retain, cfg, seed=0)
    honest = score(honest_returned)
    g = torch.Generator().manual_seed(1)
    garbage = score([{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in s.items()} for s in sent])
    zero = score([{k: v.clone() for k, v in s.items()} for s in sent])
    is5 = retain.tensors[1] == 5  # the same algorithm, consistently, on the wrong data: looks honest
    other = score(client_round(model, sent, task, retain.subset(torch.nonzero(is5)[:, 0]), None, cfg, seed=0))
    assert not flag(honest) and honest > 0.25, honest
    assert flag(garbage) and abs(garbage) < 0.05, garbage
    assert flag(zero) and zero == 0.0
    assert not flag(other), other
    half_zero = [{k: v.clone() for k, v in sent[0].items()}, *honest_returned[1:]]  # copy 0 left untouched
    assert details(inverted_updates(copies, half_zero))["reason"] == "zero update"
    assert flag(0.0, DEFAULT_THRESHOLD) and not flag(0.9)
