"""The MPU loop in one process (no Flower): what the benchmark and the tests run.

:func:`mpu_unlearn` runs R rounds of a local unlearning algorithm (a :mod:`zkapex_flwr.posthoc` name) in
one of three modes, each with the same local steps per trajectory (``cfg.steps`` per round):

* ``"clean"`` — the algorithm on θ itself, R·steps steps in R rounds (the noise-free reference; it needs
  the client to see θ);
* ``"noised"`` — the naive private baseline: each round one copy R(θ + ε), ε at the same κ·RMS per
  tensor (α = 1, no zero-sum partner), the server applies the inverted update θ ← θ + R⁻¹(U(copy) − copy).
  Its aggregate carries the first-order noise term J·ε every round;
* ``"mpu"`` — the full scheme: m copies (:func:`~zkapex_flwr.mpu.perturb.make_copies`), U on each, the
  harmonic Post-Process (:func:`~zkapex_flwr.mpu.denoise.post_process`). The client spends m× the steps
  of one trajectory.

Within a round every trajectory uses the same data order (seed ``seed·1000 + round``), as one client
running the same program on each copy would; reference-based algorithms compare with the copy they
were given (the only model the client has).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.tensors import TensorData
from ..models import clone_model
from .denoise import post_process
from .perturb import MPUConfig, make_copies, noised_keys, rms
from .reparam import Reparam, random_reparam

MODES = ("clean", "noised", "mpu")


def _default_unlearn() -> Callable:
    from ..posthoc import unlearn

    return unlearn


def _local(unlearn_fn, work: nn.Module, task, forget, retain, cfg: MPUConfig, seed: int) -> nn.Module:
    return unlearn_fn(
        work,
        task,
        forget,
        retain,
        cfg.algorithm,
        steps=cfg.steps,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=seed,
        device=next(work.parameters()).device,
        optimizer=cfg.optimizer,
    )


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def client_round(
    model: nn.Module,
    sent: list[dict[str, torch.Tensor]],
    task,
    forget: TensorData,
    retain: TensorData | None,
    cfg: MPUConfig,
    *,
    seed: int,
    unlearn: Callable | None = None,
) -> list[dict[str, torch.Tensor]]:
    """What an honest client does with the copies it receives: load each into a model of ``model``'s
    architecture, run ``cfg``'s local algorithm with its forget (and retain) set, return the states."""
    unlearn_fn = unlearn or _default_unlearn()
    out = []
    for state in sent:
        work = clone_model(model)
        work.load_state_dict(state)
        _local(unlearn_fn, work, task, forget, retain, cfg, seed)
        out.append(_state(work))
    return out


def _noised_round(model, cfg: MPUConfig, gen: torch.Generator, local) -> dict[str, torch.Tensor]:
    theta = _state(model)
    state = model.state_dict()
    secret = random_reparam(model, gen, head_transform=cfg.head_transform) if cfg.reparameterize else Reparam()
    base = dict(theta)
    for group in noised_keys(state):
        t = theta[group[0]]
        z = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        r = float(z.pow(2).mean().sqrt()) if z.numel() else 0.0
        noisy = t + (z * (cfg.kappa * rms(t) / r) if r > 0 else z * 0).to(t.dtype)
        for key in group:
            base[key] = noisy
    sent = secret.apply(base)
    returned = local(sent)
    delta = secret.invert_update(
        {k: returned[k].to(torch.float64) - v.to(torch.float64) for k, v in sent.items() if v.is_floating_point()}
    )
    return {k: (v.to(torch.float64) + delta[k]).to(v.dtype) if k in delta else v for k, v in theta.items()}


def mpu_unlearn(
    model: nn.Module,
    task,
    forget: TensorData,
    retain: TensorData | None,
    cfg: MPUConfig,
    *,
    seed: int = 0,
    mode: str = "mpu",
    unlearn: Callable | None = None,
    on_round: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Unlearn ``forget`` from ``model`` (in place; returned) in ``mode`` ``"clean"``, ``"noised"`` or ``"mpu"``
    (module docstring), R = ``cfg.rounds`` rounds of ``cfg.steps`` local steps per trajectory.

    ``unlearn``: the local algorithm runner (default :func:`zkapex_flwr.posthoc.unlearn`; any callable with its
    signature). ``on_round(r, model)`` is called after each round (e.g. to record metrics)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {MODES}")
    unlearn_fn = unlearn or _default_unlearn()
    gen = torch.Generator().manual_seed(seed)

    def local(state: dict[str, torch.Tensor], round_seed: int) -> dict[str, torch.Tensor]:
        work = clone_model(model)
        work.load_state_dict(state)
        _local(unlearn_fn, work, task, forget, retain, cfg, round_seed)
        return _state(work)

    for r in range(cfg.rounds):
        round_seed = seed * 1000 + r
        if mode == "clean":
            _local(unlearn_fn, model, task, forget, retain, cfg, round_seed)
        elif mode == "noised":
            model.load_state_dict(_noised_round(model, cfg, gen, lambda s, rs=round_seed: local(s, rs)))
        else:
            theta = _state(model)
            copies = make_copies(model, cfg, gen)
            returned = [local(c.state, round_seed) for c in copies]
            model.load_state_dict(post_process(theta, copies, returned))
        model.eval()
        if on_round is not None:
            on_round(r, model)
    return model
