"""Group-OBS: remove the masked weights of every touched Fisher block and compensate the rest.

For block b with curvature C_b (d×d, SPD), personalized weights w (d) and mask M (k entries):

    minimise ½ δᵀ C_b δ   subject to  (w + δ)_M = 0
    δ = −C_b⁻¹ E_M (E_Mᵀ C_b⁻¹ E_M)⁻¹ w_M,      λ = (E_Mᵀ C_b⁻¹ E_M)⁻¹ w_M

and (δ, λ) satisfy the linear KKT system  C_b δ + E_M λ = 0,  (w + δ)_M = 0  (docs/protocol.md §3).
All touched blocks are solved at once in float64: one batched Cholesky of C, one batched triangular
solve for the k masked columns (no d×d inverse), and one batched Cholesky of the k×k Schur block,
with blocks of different k padded by identity rows that do not interact with real entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GroupOBSResult:
    theta_u: torch.Tensor  # (T, d) unlearned block weights, exactly 0 on the mask
    delta: torch.Tensor  # (T, d) theta_u - theta_p
    multipliers: torch.Tensor  # (T, kmax) Lagrange multipliers λ (0 on padding)
    mask_index: torch.Tensor  # (T, kmax) local masked positions (padding repeats position 0)
    valid: torch.Tensor  # (T, kmax) which entries of mask_index are real


def _padded_mask_index(local_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = local_mask.sum(-1)
    if int(k.min()) == 0:
        raise ValueError("a block passed to Group-OBS has no masked entry")
    kmax = int(k.max())
    # stable sort puts masked positions first, in increasing order
    order = torch.sort((~local_mask).to(torch.int8), dim=-1, stable=True).indices[:, :kmax]
    valid = torch.arange(kmax)[None, :] < k[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


def group_obs(theta_p: torch.Tensor, fisher: torch.Tensor, local_mask: torch.Tensor) -> GroupOBSResult:
    """Closed-form Group-OBS update for ``T`` blocks at once (float64).

    ``theta_p`` (T, d), ``fisher`` (T, d, d) damped SPD curvature, ``local_mask`` (T, d) bool.
    """
    if theta_p.ndim != 2 or fisher.shape != theta_p.shape + theta_p.shape[-1:] or local_mask.shape != theta_p.shape:
        raise ValueError(
            f"shape mismatch: theta {tuple(theta_p.shape)}, fisher {tuple(fisher.shape)}, "
            f"mask {tuple(local_mask.shape)}"
        )
    w = theta_p.double()
    c = fisher.double()
    if not torch.isfinite(c).all() or not torch.isfinite(w).all():
        raise ValueError("Group-OBS input contains NaN or inf")
    idx, valid = _padded_mask_index(local_mask.bool())
    t, d = w.shape
    kmax = idx.shape[1]
    chol, info = torch.linalg.cholesky_ex(c)
    if int(info.max()) > 0:
        bad = int(torch.nonzero(info > 0)[0, 0])
        raise ValueError(
            f"Fisher block {bad} (of the touched blocks) is singular or not positive definite; use damping > 0"
        )
    e_m = torch.zeros(t, d, kmax, dtype=torch.float64)
    e_m.scatter_(1, idx[:, None, :], valid[:, None, :].double())
    h_cols = torch.cholesky_solve(e_m, chol)  # C⁻¹ E_M, zero columns on padding
    schur = torch.gather(h_cols, 1, idx[:, :, None].expand(t, kmax, kmax))  # E_Mᵀ C⁻¹ E_M
    pad = ~(valid[:, :, None] & valid[:, None, :])
    eye = torch.eye(kmax, dtype=torch.float64).expand(t, kmax, kmax)
    schur = torch.where(pad, eye * (~valid[:, :, None]), schur)
    w_m = torch.where(valid, torch.gather(w, 1, idx), torch.zeros((), dtype=torch.float64))
    schur_chol, info = torch.linalg.cholesky_ex(schur)
    if int(info.max()) > 0:
        raise ValueError(
            "the masked sub-block of C⁻¹ is not positive definite (ill-conditioned Fisher); increase damping"
        )
    lam = torch.cholesky_solve(w_m[:, :, None], schur_chol)[:, :, 0]
    delta = -(h_cols @ lam[:, :, None])[:, :, 0]
    theta_u = w + delta
    theta_u[local_mask.bool()] = 0.0  # exact feasibility (the solve leaves ~1e-17)
    return GroupOBSResult(theta_u=theta_u, delta=theta_u - w, multipliers=lam, mask_index=idx, valid=valid)


def kkt_residuals(
    theta_p: torch.Tensor,
    theta_u: torch.Tensor,
    fisher: torch.Tensor,
    local_mask: torch.Tensor,
    multipliers: torch.Tensor,
    mask_index: torch.Tensor,
    valid: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-block KKT residuals of a claimed update, scale-free.

    ``feasibility`` = max |θu_M|;  ``stationarity`` = max |Ĉ δ + E_M λ̂| with Ĉ = C / max|C| and
    λ̂ = λ / max|C| (so the residual is in units of weights, whatever the Fisher's scale).
    """
    c = fisher.double()
    scale = c.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(torch.float64).tiny)
    delta = (theta_u - theta_p).double()
    stat = (c @ delta[:, :, None])[:, :, 0]
    stat = stat.scatter_add(
        1, mask_index, torch.where(valid, multipliers.double(), torch.zeros((), dtype=torch.float64))
    )
    feas = torch.where(local_mask.bool(), theta_u.double().abs(), torch.zeros((), dtype=torch.float64)).amax(-1)
    return {"feasibility": feas, "stationarity": stat.abs().amax(-1) / scale}


def certificate_residual(
    theta_p: torch.Tensor, theta_u: torch.Tensor, fisher: torch.Tensor, local_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """KKT residuals of *any* claimed θu (honest or not), with the best possible multipliers.

    The verifier's certificate asks for λ with Ĉδ + E_M λ = 0; the λ that minimises the residual is
    −(Ĉδ)_M, leaving the off-mask part of Ĉδ as the stationarity residual. Used to show how far
    baselines and cheats sit from the Group-OBS certificate.
    """
    c = fisher.double()
    scale = c.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(torch.float64).tiny)
    cd = (c @ (theta_u - theta_p).double()[:, :, None])[:, :, 0] / scale[:, None]
    m = local_mask.bool()
    zero = torch.zeros((), dtype=torch.float64)
    return {
        "feasibility": torch.where(m, theta_u.double().abs(), zero).amax(-1),
        "stationarity": torch.where(m, zero, cd.abs()).amax(-1),
    }
