"""MPU Post-Process: invert each copy's reparameterization and aggregate the updates with harmonic weights.

Copy k was sent as R_k(θ + α_k ε_k) with Σ_k ε_k = 0 (:mod:`zkapex_flwr.mpu.perturb`); the client returns
U(copy_k). R_k is linear, so the update in θ's coordinates is

    Δ_k = R_k⁻¹(U(copy_k)) − (θ + α_k ε_k) = R_k⁻¹(U(copy_k) − copy_k)        (:func:`inverted_updates`).

If the local algorithm commutes with R_k (permutations always; rotations for SGD) then
Δ_k = D(θ + α_k ε_k) with D(x) = U(x) − x, and a Taylor expansion gives
Δ_k = D(θ) + α_k·J_D(θ)·ε_k + O(α_k² ε²). Any weights with Σ_k w_k = 1 keep D(θ); the first-order term
Σ_k w_k α_k J ε_k vanishes for *every* zero-sum draw exactly when w_k α_k is the same for all k,
i.e. w_k = (1/α_k) / Σ_j (1/α_j) — the harmonic weights (:func:`harmonic_weights`). Then
θ ← θ + Σ_k w_k Δ_k (:func:`post_process`) equals θ + D(θ) up to second order in the noise; when D is
affine in θ (a linear model under a quadratic loss trained by gradient descent) it is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .perturb import Copy
from .reparam import State


def harmonic_weights(alphas: Sequence[float]) -> torch.Tensor:
    """w_k = (1/α_k) / Σ_j 1/α_j (float64, Σ w = 1): the unique normalised weights with w_k·α_k constant,
    so Σ_k w_k α_k ε_k = (Σ_j 1/α_j)⁻¹·Σ_k ε_k = 0 for zero-sum ε."""
    a = torch.as_tensor(list(alphas), dtype=torch.float64)
    if a.numel() == 0 or not bool((a > 0).all()):
        raise ValueError(f"alphas must be a non-empty list of positive numbers, got {list(alphas)}")
    inv = 1.0 / a
    return inv / inv.sum()


def _check(sent: State, got: State, k: int) -> None:
    missing, extra = sorted(set(sent) - set(got)), sorted(set(got) - set(sent))
    if missing or extra:
        raise ValueError(f"returned copy {k}: missing keys {missing[:5]}, unexpected keys {extra[:5]}")
    for key, v in sent.items():
        g = got[key]
        if tuple(g.shape) != tuple(v.shape):
            raise ValueError(f"returned copy {k}: '{key}' has shape {tuple(g.shape)}, sent {tuple(v.shape)}")
        if g.is_floating_point() and not bool(torch.isfinite(g).all()):
            raise ValueError(f"returned copy {k}: '{key}' has non-finite entries")


def inverted_updates(copies: Sequence[Copy], returned: Sequence[State]) -> list[State]:
    """Δ_k = R_k⁻¹(returned_k − sent_k) for every floating-point key (in θ's coordinates; float32 or the
    tensor's dtype). Raises ValueError on a count, key, shape or finiteness mismatch."""
    if len(returned) != len(copies):
        raise ValueError(f"expected {len(copies)} returned copies, got {len(returned)}")
    out = []
    for k, (c, got) in enumerate(zip(copies, returned, strict=True)):
        _check(c.state, got, k)
        diff = {
            key: got[key].detach().to(v.device, torch.float64) - v.detach().to(torch.float64)
            for key, v in c.state.items()
            if v.is_floating_point()
        }
        # R acts on float64 values here and casts back to the float64 dtype of the diff: no rounding to float32
        out.append(c.secret.invert_update(diff))
    return out


def aggregate(updates: Sequence[State], alphas: Sequence[float]) -> State:
    """Σ_k w_k Δ_k with harmonic weights (float64)."""
    w = harmonic_weights(alphas)
    if len(updates) != len(w):
        raise ValueError(f"{len(updates)} updates for {len(w)} alphas")
    return {key: sum(float(w[k]) * updates[k][key] for k in range(len(w))) for key in updates[0]}


def post_process(theta: State, copies: Sequence[Copy], returned: Sequence[State]) -> State:
    """The new θ: θ + Σ_k w_k Δ_k, with Δ_k = R_k⁻¹(returned_k − copy_k.state) and w the harmonic weights
    of the copies' α's. Non-floating keys are kept from θ; dtypes follow θ."""
    step = aggregate(inverted_updates(copies, returned), [c.alpha for c in copies])
    out = {}
    for key, v in theta.items():
        if key in step and v.is_floating_point():
            out[key] = (v.detach().to(torch.float64) + step[key].to(v.device)).to(v.dtype)
        else:
            out[key] = v.detach().clone()
    return out
