"""MPU Pre-Process: m perturbed, reparameterized copies of θ with zero-sum noise.

The server holds θ and must not reveal it; a client holds a private forget set. The server sends

    copy_k = R_k(θ + α_k·ε_k [+ defence noise]),   k = 0 … m−1,

where R_k is a secret function-preserving reparameterization (:mod:`zkapex_flwr.mpu.reparam`) and the base
noises sum to zero, Σ_k ε_k = 0 (:func:`zero_sum_noise`), each tensor's noise scaled to κ·RMS(tensor).
The client runs a local unlearning algorithm U on every copy; the server inverts R_k and averages the
updates Δ_k = R_k⁻¹(U(copy_k)) − (θ + α_k ε_k) with harmonic weights w_k ∝ 1/α_k
(:mod:`zkapex_flwr.mpu.denoise`). To first order Δ_k = Δ(θ) + α_k·J·ε_k (J the Jacobian of the update
map), so Σ_k w_k Δ_k = Δ(θ) + c·J·Σ_k ε_k = Δ(θ): the noise term cancels.

**The leak, and the defences.** The same algebra works for the client: Σ_k w_k (θ + α_k ε_k) = θ
*exactly*. A client who knows m, the α's and the scheme only has to undo the reparameterizations, and
those are alignable — hidden-unit permutations by weight matching, head transforms by orthogonal
Procrustes on head blocks (:mod:`zkapex_flwr.mpu.attack`). Without a defence the client rebuilds θ up to a
function-preserving reparameterization, i.e. it obtains the server's model. ``MPUConfig.defence`` adds
noise the zero-sum cancellation cannot remove, at ``defence_kappa``·RMS per tensor:

* ``"common-noise"``: one δ shared by all copies, copy_k = R_k(θ + δ + α_k ε_k). The attack now rebuilds
  θ + δ, a relative error of about ``defence_kappa``. The cost: every copy's update is computed at θ + δ,
  so the aggregate carries J·δ, the first-order term of a *single* noised copy at ``defence_kappa``
  (what MPU was meant to remove) — the privacy floor and the utility cost are the same number.
* ``"independent-noise"``: a fresh ν_k per copy, copy_k = R_k(θ + α_k ε_k + ν_k). The attack rebuilds
  θ + Σ_k w_k ν_k, an error of about ``defence_kappa``·√(Σ_k w_k²) (0.65·κ_d for α = 1, 2, 4); the
  aggregate carries J·Σ_k w_k ν_k, equally reduced. Per unit of residual utility noise, both give the
  client the same uncertainty about θ: the zero-sum noise itself buys no privacy against this attack.

Reparameterizations and noises are drawn afresh every round (every :func:`make_copies` call); that does
not stop a per-round reconstruction. Each copy on its own is also a usable model (θ with κ·α_k noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .reparam import HEAD_TRANSFORMS, Reparam, State, random_reparam

DEFENCES = ("none", "common-noise", "independent-noise")


@dataclass(frozen=True)
class MPUConfig:
    """MPU's parameters (defaults: the public reference implementation's R = 5, m = 3, α = 1, 2, 4, κ = 0.1,
    10 local steps at lr 5e-4).

    * ``copies`` m ≥ 2 and ``alphas`` (m positive scales; copy k's noise is α_k·ε_k);
    * ``kappa`` κ: each base noise ε_k has, per tensor, RMS κ·RMS(θ tensor) on average over the copies;
    * ``rounds`` R of Pre-Process → local unlearning → Post-Process;
    * ``algorithm``, ``steps``, ``lr``, ``batch_size``, ``optimizer``: the client's local algorithm
      (a :mod:`zkapex_flwr.posthoc` name) and its per-copy, per-round budget;
    * ``reparameterize``: draw a random R_k per copy (False: R_k = identity); ``head_transform``: the
      per-head attention transform (:func:`~zkapex_flwr.mpu.reparam.random_reparam`);
    * ``defence`` / ``defence_kappa``: non-cancelling noise against the reconstruction attack (module
      docstring): ``"none"``, ``"common-noise"`` or ``"independent-noise"``, at ``defence_kappa``·RMS.
    """

    copies: int = 3
    alphas: tuple[float, ...] = (1.0, 2.0, 4.0)
    kappa: float = 0.1
    rounds: int = 5
    algorithm: str = "ga"
    steps: int = 10
    lr: float = 5e-4
    batch_size: int = 32
    optimizer: str = "adam"
    reparameterize: bool = True
    head_transform: str = "orthogonal"
    defence: str = "none"
    defence_kappa: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if self.copies < 2:
            raise ValueError(f"MPU needs at least 2 copies (zero-sum noise), got {self.copies}")
        if len(self.alphas) != self.copies:
            raise ValueError(f"need one alpha per copy: {self.copies} copies, alphas {self.alphas}")
        if any(not a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be positive, got {self.alphas}")
        if self.kappa < 0 or self.defence_kappa < 0:
            raise ValueError(f"kappa and defence_kappa must be ≥ 0, got {self.kappa}, {self.defence_kappa}")
        if self.rounds < 1 or self.steps < 0:
            raise ValueError(f"need rounds ≥ 1 and steps ≥ 0, got {self.rounds}, {self.steps}")
        if self.defence not in DEFENCES:
            raise ValueError(f"unknown defence '{self.defence}'; choose one of {DEFENCES}")
        if self.head_transform not in HEAD_TRANSFORMS:
            raise ValueError(f"unknown head_transform '{self.head_transform}'; choose one of {HEAD_TRANSFORMS}")


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor's entries (0 for an empty tensor)."""
    return float(t.detach().to(torch.float64).pow(2).mean().sqrt()) if t.numel() else 0.0


def tied_groups(state: State) -> list[list[str]]:
    """Keys of ``state`` that alias one tensor (e.g. OPT's ``lm_head.weight`` and ``embed_tokens.weight`` in
    ``model.state_dict()``), in state order. Noise must be drawn once per group so the copy stays tied."""
    groups: dict[tuple, list[str]] = {}
    for k, v in state.items():
        groups.setdefault((v.data_ptr(), v.dtype, tuple(v.shape), v.stride()), []).append(k)
    return list(groups.values())


def noised_keys(state: State) -> list[list[str]]:
    """The tied groups of floating-point tensors: what the noise touches (integer buffers are left alone)."""
    return [g for g in tied_groups(state) if state[g[0]].is_floating_point()]


def _scaled_gaussian(like: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian tensor normalised to RMS exactly ``scale`` (float64)."""
    z = torch.randn(like.shape, generator=generator, dtype=torch.float64)
    r = float(z.pow(2).mean().sqrt()) if z.numel() else 0.0
    return z * (scale / r) if r > 0 else z * 0.0


def zero_sum_noise(
    state: State, cfg: MPUConfig, generator: torch.Generator, *, groups: list[list[str]] | None = None
) -> list[State]:
    """m base noises ε_0 … ε_{m−1} with Σ_k ε_k = 0 per tensor, scaled per tensor to κ·RMS(θ tensor).

    Per tensor: z_k ~ N(0, I) i.i.d., ε_k = c·(z_k − mean_j z_j), with one scalar c chosen so that the
    mean over copies of RMS(ε_k)² is (κ·RMS(θ))² — one scale for all copies keeps the sum exactly zero
    (up to float rounding; drawn in float64, returned in the tensor's dtype). A tensor with RMS 0 (e.g. a
    zero-initialised bias) gets no noise. Tied keys (``groups``; default: detected by aliasing in
    ``state``) get one draw, the same tensor object in every group member."""
    groups = noised_keys(state) if groups is None else groups
    m = cfg.copies
    out: list[State] = [{} for _ in range(m)]
    for group in groups:
        theta = state[group[0]]
        target = cfg.kappa * rms(theta)
        z = torch.randn((m, *theta.shape), generator=generator, dtype=torch.float64)
        eps = z - z.mean(0, keepdim=True)
        mean_sq = float(eps.pow(2).mean()) if eps.numel() else 0.0
        eps = eps * (target / mean_sq**0.5) if mean_sq > 0 else eps * 0.0
        for k in range(m):
            e = eps[k].to(theta.dtype)
            for key in group:
                out[k][key] = e
    return out


@dataclass
class Copy:
    """One perturbed, reparameterized copy and the secret to undo it.

    ``state`` is what is sent (plain tensors, ArrayRecord-able); ``alpha`` its noise scale and ``secret``
    its :class:`~zkapex_flwr.mpu.reparam.Reparam` never leave the server."""

    state: State
    alpha: float
    secret: Reparam


def defence_noise(state: State, cfg: MPUConfig, generator: torch.Generator, groups=None) -> list[State]:
    """The non-cancelling noise each copy gets under ``cfg.defence`` (empty dicts for ``"none"``): one δ shared
    by all copies (``"common-noise"``) or an independent ν_k per copy (``"independent-noise"``), each
    normalised per tensor to RMS ``defence_kappa``·RMS(θ tensor)."""
    m = cfg.copies
    if cfg.defence == "none" or cfg.defence_kappa == 0:
        return [{} for _ in range(m)]
    groups = noised_keys(state) if groups is None else groups

    def draw() -> State:
        d: State = {}
        for group in groups:
            theta = state[group[0]]
            e = _scaled_gaussian(theta, cfg.defence_kappa * rms(theta), generator).to(theta.dtype)
            d.update(dict.fromkeys(group, e))
        return d

    if cfg.defence == "common-noise":
        shared = draw()
        return [shared for _ in range(m)]
    return [draw() for _ in range(m)]


def perturbed_states(model_or_state, cfg: MPUConfig, generator: torch.Generator) -> list[State]:
    """θ + α_k ε_k (+ defence noise) for k = 0 … m−1, before reparameterization (the bases Δ_k is measured from)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    groups = noised_keys(state)
    eps = zero_sum_noise(state, cfg, generator, groups=groups)
    extra = defence_noise(state, cfg, generator, groups=groups)
    bases = []
    for k, alpha in enumerate(cfg.alphas):
        base = {key: v.detach().clone() for key, v in state.items()}
        for group in groups:
            theta = state[group[0]]
            noisy = theta.detach() + alpha * eps[k][group[0]]
            if group[0] in extra[k]:
                noisy = noisy + extra[k][group[0]]
            for key in group:
                base[key] = noisy
        bases.append(base)
    return bases


def make_copies(model: nn.Module, cfg: MPUConfig, generator: torch.Generator) -> list[Copy]:
    """Pre-Process: the m copies R_k(θ + α_k ε_k [+ defence]) of ``model``'s current parameters, each with
    a fresh secret R_k (identity when ``cfg.reparameterize`` is False). Tied keys stay equal in every copy."""
    bases = perturbed_states(model, cfg, generator)
    copies = []
    for base, alpha in zip(bases, cfg.alphas, strict=True):
        secret = (
            random_reparam(model, generator, head_transform=cfg.head_transform)
            if cfg.reparameterize
            else Reparam.identity()
        )
        copies.append(Copy(state=secret.apply(base), alpha=alpha, secret=secret))
    return copies
