"""Group-OBS against brute force, KKT residuals, and its error messages."""

import pytest
import torch

from zkapex_flwr.unlearning.group_obs import certificate_residual, group_obs, kkt_residuals


def random_problem(t=6, d=24, p=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(t, 3 * d, d, generator=g, dtype=torch.float64)
    c = a.transpose(1, 2) @ a / (3 * d) + 0.05 * torch.eye(d, dtype=torch.float64)
    w = torch.randn(t, d, generator=g, dtype=torch.float64)
    m = torch.rand(t, d, generator=g) < p
    m[:, 0] = True  # every block touched
    m[1] = True  # one block fully masked
    m[2] = False
    m[2, 5] = True  # one block with a single masked weight
    return w, c, m


def brute_force(w, c, m):
    """Equality-constrained least squares min ½δᵀCδ s.t. (w+δ)_M = 0, solved as one KKT system per block."""
    deltas, lams = [], []
    for b in range(w.shape[0]):
        idx = torch.nonzero(m[b]).flatten()
        d, k = w.shape[1], len(idx)
        e = torch.zeros(d, k, dtype=torch.float64)
        e[idx, torch.arange(k)] = 1.0
        kkt = torch.zeros(d + k, d + k, dtype=torch.float64)
        kkt[:d, :d], kkt[:d, d:], kkt[d:, :d] = c[b], e, e.T
        sol = torch.linalg.solve(kkt, torch.cat([torch.zeros(d, dtype=torch.float64), -w[b, idx]]))
        deltas.append(sol[:d])
        lams.append(sol[d:])
    return deltas, lams


def test_group_obs_equals_brute_force_kkt_solution():
    w, c, m = random_problem()
    res = group_obs(w, c, m)
    deltas, lams = brute_force(w, c, m)
    for b in range(w.shape[0]):
        assert torch.allclose(res.delta[b], deltas[b], atol=1e-10, rtol=0)
        k = int(m[b].sum())
        assert torch.allclose(res.multipliers[b, :k], lams[b], atol=1e-10, rtol=0)
        assert torch.all(res.multipliers[b, k:] == 0)


def test_masked_weights_exactly_zero_and_kkt_residual_tiny():
    w, c, m = random_problem(t=32, d=64, p=0.05, seed=3)
    res = group_obs(w, c, m)
    assert torch.all(res.theta_u[m] == 0.0)
    r = kkt_residuals(w, res.theta_u, c, m, res.multipliers, res.mask_index, res.valid)
    assert float(r["feasibility"].max()) == 0.0
    assert float(r["stationarity"].max()) <= 1e-9


def test_certificate_residual_separates_honest_from_mask_only():
    w, c, m = random_problem(seed=5)
    honest = group_obs(w, c, m).theta_u
    cheat = torch.where(m, torch.zeros_like(w), w)
    assert float(certificate_residual(w, honest, c, m)["stationarity"].max()) <= 1e-9
    assert float(certificate_residual(w, cheat, c, m)["stationarity"].max()) > 1e-3


def test_singular_fisher_without_damping_raises():
    w, c, m = random_problem()
    c = c.clone()
    c[0] = torch.zeros_like(c[0])
    c[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="singular or not positive definite; use damping > 0"):
        group_obs(w, c, m)


def test_nan_and_unmasked_block_are_rejected():
    w, c, m = random_problem()
    with pytest.raises(ValueError, match="no masked entry"):
        group_obs(w, c, torch.zeros_like(m))
    w = w.clone()
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        group_obs(w, c, m)
