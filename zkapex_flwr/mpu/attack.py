"""The client-side reconstruction attack on MPU, and how to measure it.

The client receives copy_k = R_k(θ + α_k ε_k), k = 0 … m−1, and knows m, the α's and the scheme
(Σ_k ε_k = 0, the kinds of reparameterization), not the draws. If it can bring every copy into one
coordinate frame — copy 0's, R_0 — the harmonic combination cancels the noise *exactly*:

    Σ_k w_k R_0(θ + α_k ε_k) = R_0(θ + Σ_k w_k α_k ε_k) = R_0(θ),   w_k ∝ 1/α_k,

which is θ up to a function-preserving reparameterization: the server's model. :func:`align` brings a copy
into a reference frame, site by site (:func:`~zkapex_flwr.mpu.reparam.find_sites`):

* **MLP hidden units**: unit i is described by its fc1 row, fc1 bias and fc2 column (each block scaled
  by its RMS); the permutation is the minimum-cost matching of squared distances
  (``scipy.optimize.linear_sum_assignment``). Distinct units of a trained or random layer are far apart
  compared with the noise, so the matching is exact for κ·α of a few tenths.
* **Attention heads**: heads are matched on the transform invariants [Q_h q_h]ᵀ[K_h k_h] (A cancels) and
  P_h [V_h v_h] (B cancels). Then, per head, the relative transform is estimated by least squares from
  both sides at once: for orthogonal transforms an orthogonal Procrustes fit of T with
  T·[Q K] ≈ [Q_ref K_ref] (and S with S·[V Pᵀ] ≈ [V_ref P_refᵀ]); for general invertible transforms the
  normal equations T·QQᵀ + K_ref K_refᵀ·T = Q_ref Qᵀ + K_ref Kᵀ, a Sylvester equation
  (``scipy.linalg.solve_sylvester``), then K ← T⁻ᵀK (and likewise V ← S V, P ← P S⁻¹).

:func:`reconstruct` aligns copies 1 … m−1 to copy 0, takes Σ_k w_k·copy_k, and repeats the alignment
against that estimate (less noisy than copy 0) a few times, copy 0's frame fixed. The head fits absorb a
small part of the noise (d_h² fitted parameters per head against d_h·(2D+2) observations), so attention
tensors come back with a small residual error; everything else (embeddings, norms, MLPs, the head) comes
back to float rounding. :func:`reconstruction_error` measures a reconstruction against the true θ after
aligning it to θ (the error *up to* function-preserving reparameterization, the one that matters); the
defences in :class:`~zkapex_flwr.mpu.perturb.MPUConfig` are what raise it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.linalg import solve_sylvester
from scipy.optimize import linear_sum_assignment
from torch import nn

from .denoise import harmonic_weights
from .reparam import HEAD_TRANSFORMS, AttentionSite, MLPSite, State, _cols, _rows, _set_cols, _set_rows, find_sites


def _f64(state: State) -> State:
    return {k: v.detach().to(torch.float64).clone() if v.is_floating_point() else v for k, v in state.items()}


def _unit_features(state: State, site: MLPSite) -> torch.Tensor:
    blocks = [state[site.fc1_weight]]
    if site.fc1_bias:
        blocks.append(state[site.fc1_bias][:, None])
    blocks.append(state[site.fc2_weight].T)
    blocks += [state[k][:, None] for k in site.hidden_vectors]
    return torch.cat([b / max(float(b.pow(2).mean().sqrt()), 1e-12) for b in blocks], dim=1)


def _match(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """perm with other[perm] ≈ ref row by row: minimum total squared distance (Hungarian)."""
    cost = torch.cdist(ref, other).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)


def _align_mlp(ref: State, work: State, site: MLPSite) -> None:
    perm = _match(_unit_features(ref, site), _unit_features(work, site))
    for key in [site.fc1_weight, *([site.fc1_bias] if site.fc1_bias else []), *site.hidden_vectors]:
        work[key] = work[key][perm].clone()
    work[site.fc2_weight] = work[site.fc2_weight][:, perm].clone()


def _augmented(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(H, d, D) weights and (H, d) biases → (H, d, D+1) rows [W b]."""
    return w if b is None else torch.cat([w, b[..., None]], dim=-1)


def _heads(state: State, site: AttentionSite):
    h, d = site.heads, site.head_dim
    q, k, v = (_augmented(*_rows(state, p, h, d)) for p in (site.q, site.k, site.v))
    p = _cols(state, site.out_weight, h, d).permute(1, 0, 2)  # (H, D, d): P_h
    return q, k, v, p


def _procrustes(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Orthogonal T minimising ‖T·source − target‖_F (both d × n)."""
    u, _, vt = torch.linalg.svd(target @ source.T)
    return u @ vt


def _sylvester(a: torch.Tensor, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(solve_sylvester(a.numpy(), b.numpy(), q.numpy()), dtype=torch.float64)


def _align_attention(ref: State, work: State, site: AttentionSite, head_transform: str) -> None:
    h = site.heads
    rq, rk, rv, rp = _heads(ref, site)
    wq, wk, wv, wp = _heads(work, site)
    # 1. match heads on the transform invariants
    inv_ref = torch.cat([(rq.transpose(1, 2) @ rk).flatten(1), (rp @ rv).flatten(1)], dim=1)
    inv_work = torch.cat([(wq.transpose(1, 2) @ wk).flatten(1), (wp @ wv).flatten(1)], dim=1)
    perm = _match(inv_ref, inv_work)
    wq, wk, wv, wp = wq[perm], wk[perm], wv[perm], wp[perm]
    # 2. per head, the relative transform by least squares
    nq, nk, nv, np_ = (torch.empty_like(x) for x in (wq, wk, wv, wp))
    qk = head_transform if site.qk_transform else "none"  # the server leaves A = I where q/k are not linear
    for j in range(h):
        if qk == "orthogonal":  # Q' = AᵀQ and K' = AᵀK: one rotation T for both
            t = _procrustes(torch.cat([rq[j], rk[j]], 1), torch.cat([wq[j], wk[j]], 1))
            nq[j], nk[j] = t @ wq[j], t @ wk[j]
        elif qk == "general":  # Q' = AᵀQ, K' = A⁻¹K: T on q, T⁻ᵀ on k
            t = _sylvester(rk[j] @ rk[j].T, wq[j] @ wq[j].T, rq[j] @ wq[j].T + rk[j] @ wk[j].T)
            nq[j], nk[j] = t @ wq[j], torch.linalg.solve(t.T, wk[j])
        else:
            nq[j], nk[j] = wq[j], wk[j]
        if head_transform == "orthogonal":  # V' = BV, P' = PBᵀ: S on v, S on Pᵀ
            s = _procrustes(torch.cat([rv[j], rp[j].T], 1), torch.cat([wv[j], wp[j].T], 1))
            nv[j], np_[j] = s @ wv[j], wp[j] @ s.T
        elif head_transform == "general":  # V' = BV, P' = PB⁻¹: S on v, S⁻¹ on the right of P
            s = _sylvester(rp[j].T @ rp[j], wv[j] @ wv[j].T, rv[j] @ wv[j].T + rp[j].T @ wp[j])
            nv[j], np_[j] = s @ wv[j], torch.linalg.solve(s.T, wp[j].T).T
        else:
            nv[j], np_[j] = wv[j], wp[j]
    for p, x in zip((site.q, site.k, site.v), (nq, nk, nv), strict=True):
        has_bias = p.bias is not None
        _set_rows(work, p, x[..., :-1] if has_bias else x, x[..., -1] if has_bias else None)
    _set_cols(work, site.out_weight, np_.permute(1, 0, 2))


def align(reference: State, state: State, model_template: nn.Module, *, head_transform: str = "orthogonal") -> State:
    """``state`` brought into ``reference``'s coordinate frame (float64): hidden units and heads permuted to
    match, head transforms undone by least squares (module docstring). ``head_transform`` is the attacker's
    knowledge of the scheme: ``"orthogonal"`` (MPU's default), ``"general"`` or ``"none"``."""
    if head_transform not in HEAD_TRANSFORMS:
        raise ValueError(f"unknown head_transform '{head_transform}'; choose one of {HEAD_TRANSFORMS}")
    ref, work = _f64(reference), _f64(state)
    mlps, attns = find_sites(model_template)
    for site in mlps:
        _align_mlp(ref, work, site)
    for site in attns:
        _align_attention(ref, work, site, head_transform)
    return work


def reconstruct(
    copies_sent: Sequence[State],
    alphas: Sequence[float],
    model_template: nn.Module,
    *,
    head_transform: str = "orthogonal",
    iterations: int = 3,
) -> State:
    """The attacker's estimate of θ (in copy 0's frame, the dtype of copy 0): align every copy, take
    Σ_k w_k·copy_k with harmonic weights, re-align to that estimate ``iterations`` − 1 more times."""
    if len(copies_sent) != len(alphas) or len(copies_sent) < 1:
        raise ValueError(f"{len(copies_sent)} copies for {len(alphas)} alphas")
    w = harmonic_weights(alphas)
    first = copies_sent[0]
    estimate = _f64(first)
    for _ in range(max(iterations, 1)):
        aligned = [_f64(first)] + [
            align(estimate, c, model_template, head_transform=head_transform) for c in copies_sent[1:]
        ]
        estimate = {
            k: sum(float(w[i]) * aligned[i][k] for i in range(len(aligned))) if v.is_floating_point() else v
            for k, v in estimate.items()
        }
    return {k: v.to(first[k].dtype) if v.is_floating_point() else v.clone() for k, v in estimate.items()}


def reconstruction_error(
    reconstructed: State,
    theta: State,
    model_template: nn.Module | None = None,
    *,
    head_transform: str = "orthogonal",
) -> dict:
    """Relative L2 error ‖r − θ‖/‖θ‖ of a reconstruction, per floating-point tensor and overall (tied keys
    counted once), after aligning ``reconstructed`` to ``theta`` with :func:`align` when ``model_template``
    is given (the error up to function-preserving reparameterization). Returns
    ``{"overall": float, "per_tensor": {key: float}}``; a tensor with ‖θ‖ = 0 reports its absolute error."""
    r = align(theta, reconstructed, model_template, head_transform=head_transform) if model_template else reconstructed
    per, num, den, seen = {}, 0.0, 0.0, set()
    for k, t in theta.items():
        if not t.is_floating_point():
            continue
        a, b = r[k].to(torch.float64), t.detach().to(torch.float64)
        err, norm = float((a - b).pow(2).sum()), float(b.pow(2).sum())
        per[k] = (err / norm) ** 0.5 if norm > 0 else err**0.5
        ident = (t.data_ptr(), tuple(t.shape))
        if ident in seen:
            continue
        seen.add(ident)
        num, den = num + err, den + norm
    return {"overall": (num / den) ** 0.5 if den > 0 else num**0.5, "per_tensor": per}
