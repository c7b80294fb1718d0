"""The witness of one block's certificate, split into proof steps of at most K masked columns.

For block b with personalized weights θp (d), normalised inverse Fisher Ĥ = C⁻¹/max|C⁻¹| and mask M
(k entries), the Group-OBS update is θu = θp − Ĥ[:, M] y with y = Ĥ[M, M]⁻¹ θp_M, so θu_M = 0.
All values are fixed-point at scale S (multiples of 2^-S) so that the committed values and the
circuit's arithmetic agree exactly. When k > K the columns are split into G = ⌈k/K⌉ groups and the
update is applied as a chain θ_0 = θp → θ_1 → … → θ_G = θu, one proof step per group:
θ_g = round(θ_{g−1} − Ĥ[:, M_g] y_g); the final step also zeroes θu_M (the circuit's m ⊙ θ_out
output, with m = 0 on intermediate steps). The chain telescopes to the single certificate.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def quantize(x, scale: int) -> np.ndarray:
    """Round to the fixed-point grid 2^-scale (values are then exact in float32 and in ezkl's felts)."""
    return np.round(np.asarray(x, dtype=np.float64) * 2.0**scale) / 2.0**scale


def normalized_inverse(c: np.ndarray, scale: int) -> np.ndarray:
    """Ĥ = C⁻¹ / max|C⁻¹| per block, quantised: ``c`` (…, d, d) SPD → same shape."""
    c = np.asarray(c, dtype=np.float64)
    h = np.linalg.inv(c)
    h = 0.5 * (h + np.swapaxes(h, -1, -2))
    h /= np.abs(h).max(axis=(-2, -1), keepdims=True)
    return quantize(h, scale)


@dataclass
class Step:
    theta_in: np.ndarray   # (d,)
    theta_out: np.ndarray  # (d,)
    mask: np.ndarray       # (d,) 0/1: the block's mask on the final step, zeros before
    y: np.ndarray          # (len(columns),)
    columns: list[int]     # local indices of the Ĥ columns this step uses
    h: np.ndarray          # (d, len(columns)) those columns

    def inputs(self, spec) -> list[list[float]]:
        """Flat input lists in the circuit's ONNX input order, padded to ``spec.slots`` columns."""
        k, d = len(self.columns), spec.d
        if k > spec.slots:
            raise ValueError(f"a step has {k} columns but the circuit has {spec.slots} slots")
        y = np.zeros(spec.slots)
        y[:k] = self.y
        cols = [self.h[:, j] for j in range(k)] + [np.zeros(d)] * (spec.slots - k)
        return [self.theta_in.tolist(), self.theta_out.tolist(), self.mask.astype(float).tolist(), y.tolist()] + \
            [c.tolist() for c in cols]


def honest_block_steps(theta_p: np.ndarray, h_hat: np.ndarray, mask: np.ndarray, spec,
                       h_is_fisher: bool = True) -> list[Step]:
    """The honest proof steps of one block.

    ``h_hat`` is the block's quantised Ĥ, or (``h_is_fisher=True``, for calibration only) its Fisher C.
    """
    s = spec.scale
    theta = quantize(theta_p, s)
    h = normalized_inverse(h_hat, s) if h_is_fisher else np.asarray(h_hat, dtype=np.float64)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise ValueError("a touched block has no masked entry")
    y = quantize(np.linalg.solve(h[np.ix_(idx, idx)], theta[idx]), s)
    steps, current = [], theta
    groups = [idx[i:i + spec.slots] for i in range(0, idx.size, spec.slots)]
    for g, cols in enumerate(groups):
        yg = y[g * spec.slots:g * spec.slots + cols.size]
        nxt = quantize(current - h[:, cols] @ yg, s)
        last = g == len(groups) - 1
        m = np.zeros(spec.d)
        if last:
            nxt[idx] = 0.0
            m[idx] = 1.0
        steps.append(Step(current, nxt, m, yg, cols.tolist(), h[:, cols]))
        current = nxt
    return steps


def residual_tolerance(scale: int, masked: int, steps: int) -> float:
    """Largest honest |r| on any step: the rounding of θ_out (2^-(S+1)) plus, on the final step's masked
    entries, the rounding of y through Ĥ[M, M] (|Ĥ| ≤ 1) and of the earlier links: (k + G + 1)·2^-(S+1)."""
    return (masked + steps + 1) * 2.0 ** -(scale + 1)
