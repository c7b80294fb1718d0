"""Screening one client's MPU reply: do its m inverted updates agree as honest ones must?

An honest client runs the same algorithm on copies that differ only by noise, so its inverted updates
Δ_k = R_k⁻¹(returned_k − sent_k) (:func:`zkapex_flwr.mpu.denoise.inverted_updates`) share the update on θ
and differ by the first-order noise terms α_k·J·ε_k (and, with Adam under rotated heads, by the optimiser's
frame). :func:`consistency` scores that agreement as the weighted mean pairwise cosine similarity of the
flattened Δ_k (each in θ's coordinates, where the R_k no longer scramble them). A pair's disagreement
grows with its noise scales, so pair (i, j) is weighted by w_i·w_j, the harmonic weights of its α's (uniform
weights when no α's are given):

* honest replies score well above 0, and closer to 1 the smaller κ·α (the shared direction against the
  noise terms; Adam's sign-like first steps lower it: ≈ 0.4 at κ = 0.1, α = 1, 2, 4 on a small ViT, where the
  α = 4 copy carries 40 % noise and is beyond the first-order regime);
* arbitrary updates ("garbage": each copy changed independently) score near 0 — about 1/√n for n
  parameters: in θ's coordinates the copies' changes point in unrelated directions;
* a zero update (the copies returned unchanged, or any Δ_k with norm below ``min_norm`` relative to the
  largest) scores 0: there is nothing to agree on;
* a non-finite update scores −1.

:func:`flag` marks a score below a threshold (:data:`DEFAULT_THRESHOLD`).

**What it cannot catch.** Agreement is all it checks, not *what* was computed. An update computed
consistently on other data (the same wrong forget set on every copy, or retain data instead of the forget
set) agrees like an honest one and passes; so does any update a client computes once in θ's frame and
maps into every copy's frame — which the reconstruction attack (:mod:`zkapex_flwr.mpu.attack`) makes
possible, since it recovers the alignments. Whether the forget set was actually unlearned needs an
evaluation on it (which the server cannot run without the data) or a proof.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .denoise import harmonic_weights
from .reparam import State

DEFAULT_THRESHOLD = 0.1  # far above garbage's ≈ 1/√n, below honest replies at κ ≤ 0.1


def _flat(update: State, keys: list[str]) -> torch.Tensor:
    return torch.cat([update[k].detach().reshape(-1).to(torch.float64) for k in keys])


def details(updates: Sequence[State], alphas: Sequence[float] | None = None, *, min_norm: float = 1e-3) -> dict:
    """The numbers behind :func:`consistency`: ``cosines`` (pairwise, i<j), ``norms`` (per update),
    ``score`` and ``reason`` (``"ok"``, ``"zero update"``, ``"non-finite update"``, ``"fewer than 2 updates"``).

    ``alphas``: the copies' noise scales, for the pair weights w_i·w_j (None: uniform). ``min_norm``: an update whose norm is below
    ``min_norm``·(largest norm), or exactly zero, counts as a zero update."""
    if alphas is not None and len(alphas) != len(updates):
        raise ValueError(f"{len(updates)} updates for {len(alphas)} alphas")
    if len(updates) < 2:
        return {"score": 0.0, "cosines": [], "norms": [], "reason": "fewer than 2 updates"}
    keys = sorted(k for k, v in updates[0].items() if v.is_floating_point())
    flats = [_flat(u, keys) for u in updates]
    if not all(bool(torch.isfinite(f).all()) for f in flats):
        return {"score": -1.0, "cosines": [], "norms": [], "reason": "non-finite update"}
    norms = [float(f.norm()) for f in flats]
    top = max(norms)
    if top == 0 or min(norms) <= min_norm * top:
        return {"score": 0.0, "cosines": [], "norms": norms, "reason": "zero update"}
    w = harmonic_weights(alphas).tolist() if alphas is not None else [1.0] * len(flats)
    pairs = [(i, j) for i in range(len(flats)) for j in range(i + 1, len(flats))]
    cos = [float(flats[i] @ flats[j]) / (norms[i] * norms[j]) for i, j in pairs]
    pw = [w[i] * w[j] for i, j in pairs]
    score = sum(c * p for c, p in zip(cos, pw, strict=True)) / sum(pw)
    return {"score": score, "cosines": cos, "norms": norms, "reason": "ok"}


def consistency(updates: Sequence[State], alphas: Sequence[float] | None = None, *, min_norm: float = 1e-3) -> float:
    """Weighted mean pairwise cosine of one client's m inverted updates (1: all agree; ≈0: unrelated; 0 for a
    zero update; −1 for a non-finite one). See the module docstring for what it can and cannot catch."""
    return float(details(updates, alphas, min_norm=min_norm)["score"])


def flag(score: float, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """True when ``score`` is below ``threshold``: the reply should be rejected (or the round retried)."""
    return bool(score < threshold)
