"""The provider's side of the math: score scope weights against a forget set and select the mask.

Two saliencies, both normalised against retain data (γ > 0 keeps weights that matter to neither set
from winning on a 0/0 ratio):

* ``margin`` (default): first-order |g⊙w| saliency of the model's *margin* (true-class logit minus the
  best other logit; mean log-probability for code). a_i(D) = mean_D w_i ∂m/∂w_i is how much the margins
  of D drop when w_i is zeroed. Score s_i = max(a_i(D_f), 0) / (mean_{D_r}|w_i ∂m/∂w_i| + γ·mean).
  Weights that consistently support the forget set's predictions, and few others, score high.
* ``fisher``: second-order OBS saliency ρ_i(D) = ½ w_i² F_ii(D) with a diagonal empirical Fisher,
  s_i = ρ_i(D_f) / (ρ_i(D_r) + γ·mean ρ(D_r)). Loss gradients vanish on well-fit samples, so this one
  forgets little when the model is confident on D_f (measured in README).

The provider masks the top ``fraction`` of scope weights — optionally only inside the ``max_blocks``
blocks with the highest total score among their candidates, because proof cost grows with touched
blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.tensors import TensorData
from .fisher import diag_fisher, per_sample_grads
from .mask import UnlearningMask
from .scope import BlockLayout

SALIENCY_METHODS = ("margin", "fisher")


def _margin_contributions(model, task, data, layout, max_samples) -> tuple[torch.Tensor, torch.Tensor]:
    w = layout.flatten(model)
    signed, absolute, m = torch.zeros_like(w), torch.zeros_like(w), 0
    for g in per_sample_grads(model, task, data, layout, max_samples=max_samples, objective="margin"):
        c = g.double() * w
        signed += c.sum(0)
        absolute += c.abs().sum(0)
        m += g.shape[0]
    return signed / m, absolute / m


def saliency_scores(
    model: nn.Module,
    task,
    forget: TensorData,
    retain: TensorData,
    layout: BlockLayout,
    *,
    method: str = "margin",
    gamma: float = 0.1,
    max_samples: int | None = 512,
) -> torch.Tensor:
    """Forget-vs-retain saliency of every scope weight of ``model`` (float64, ``(layout.size,)``)."""
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method '{method}'; choose one of {SALIENCY_METHODS}")
    if len(forget) == 0:
        raise ValueError("the forget set is empty: nothing to score the mask against")
    if len(retain) == 0:
        raise ValueError("the retain set is empty: saliency needs retain data to normalise against")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    if method == "margin":
        a_f, _ = _margin_contributions(model, task, forget, layout, max_samples)
        _, b_r = _margin_contributions(model, task, retain, layout, max_samples)
        return a_f.clamp_min(0) / (b_r + gamma * b_r.mean().clamp_min(1e-30))
    w2 = layout.flatten(model) ** 2
    rho_f = 0.5 * w2 * diag_fisher(model, task, forget, layout, max_samples=max_samples)
    rho_r = 0.5 * w2 * diag_fisher(model, task, retain, layout, max_samples=max_samples)
    return rho_f / (rho_r + gamma * rho_r.mean().clamp_min(1e-30))


def select_mask(
    scores: torch.Tensor,
    layout: BlockLayout,
    fraction: float = 0.04,
    max_blocks: int | None = None,
    group: tuple[int, int] | None = None,
    exclude: str | None = None,
) -> UnlearningMask:
    """Mask the top ``fraction`` of scope weights by score, within at most ``max_blocks`` blocks.

    ``exclude`` (a regular expression over scope tensor names) keeps the mask off those tensors: the
    verified default keeps sample requests off the classifier head, whose rows carry whole classes.

    ``group=(G, K)`` makes the mask column-structured: in every group of G consecutive blocks at most
    K distinct local positions are masked (the K with the largest total score over the group), the
    shape a wide-packed proof can commit to before the mask (docs/research/grouped-packing.md). With a
    group, ``max_blocks`` counts every block of a touched group: at most ``max_blocks // G`` groups
    (proof units) are touched, those whose K best positions hold the most candidate score.
    """
    if exclude is not None:
        if scores.shape != (layout.size,):
            raise ValueError(f"scores have shape {tuple(scores.shape)}, expected ({layout.size},)")
        if not torch.isfinite(scores).all():  # checked before the exclusion writes its own -inf
            raise ValueError("saliency scores contain NaN or inf")
        off = layout.tensor_mask(exclude)
        if bool(off.all()):
            raise ValueError(f"the mask exclusion {exclude!r} covers the whole unlearning scope")
        scores = torch.where(off, torch.full_like(scores, float("-inf")), scores)
        k = max(1, int(round(fraction * layout.size)))
        if k > int((~off).sum()):
            raise ValueError(
                f"the mask fraction {fraction} asks for {k} weights, more than the "
                f"{int((~off).sum())} outside {exclude!r}"
            )
    if group is not None:
        return _select_grouped(scores, layout, fraction, *group, max_blocks=max_blocks)
    if scores.shape != (layout.size,):
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected ({layout.size},)")
    if not 0 < fraction < 1:
        raise ValueError(f"mask fraction must be in (0, 1), got {fraction}")
    if exclude is None and not torch.isfinite(scores).all():
        raise ValueError("saliency scores contain NaN or inf")
    k = max(1, int(round(fraction * layout.size)))
    if max_blocks is None or max_blocks >= layout.n_blocks:
        return UnlearningMask(torch.topk(scores, k).indices, layout)
    if max_blocks < 1:
        raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
    d = layout.block_size
    if max_blocks * d < k:
        raise ValueError(
            f"a budget of {max_blocks} blocks of {d} weights holds at most {max_blocks * d} weights, "
            f"fewer than the {k} the mask fraction {fraction} asks for"
        )
    candidates = torch.zeros_like(scores)
    top = torch.topk(scores, k).indices
    candidates[top] = scores[top]
    block_score = candidates.reshape(-1, d).sum(-1)
    blocks = torch.topk(block_score, max_blocks).indices
    allowed = torch.full_like(scores, float("-inf")).reshape(-1, d)
    allowed[blocks] = scores.reshape(-1, d)[blocks]
    return UnlearningMask(torch.topk(allowed.reshape(-1), k).indices, layout)


def _select_grouped(
    scores: torch.Tensor,
    layout: BlockLayout,
    fraction: float,
    group: int,
    positions: int,
    max_blocks: int | None = None,
) -> UnlearningMask:
    d = layout.block_size
    if scores.shape != (layout.size,):
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected ({layout.size},)")
    if not 0 < fraction < 1:
        raise ValueError(f"mask fraction must be in (0, 1), got {fraction}")
    if group < 1 or not 1 <= positions <= d:
        raise ValueError(f"group mask needs G >= 1 and 1 <= K <= d={d}, got G={group}, K={positions}")
    if layout.n_blocks % group:
        raise ValueError(f"{layout.n_blocks} Fisher blocks do not split into groups of {group}")
    k = max(1, int(round(fraction * layout.size)))
    n_groups = layout.n_blocks // group
    max_groups = n_groups if max_blocks is None else max_blocks // group
    if max_groups < 1:
        raise ValueError(f"a budget of {max_blocks} blocks holds no group of {group} blocks")
    max_groups = min(max_groups, n_groups)
    allowed_count = max_groups * group * positions
    if k > allowed_count:
        raise ValueError(
            f"{max_groups} groups of {group} blocks with {positions} positions each hold at most "
            f"{allowed_count} weights, fewer than the {k} the mask fraction {fraction} asks for"
        )
    grouped = scores.reshape(-1, group, d)
    best = torch.topk(grouped.clamp_min(0).sum(1), positions, dim=-1).indices  # (n_groups, K)
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(2, best[:, None, :].expand(-1, group, -1), True)
    if max_groups < n_groups:  # block budget: keep the groups whose allowed positions hold the most candidates
        top = torch.topk(torch.where(keep, grouped, torch.zeros_like(grouped)).reshape(-1), k).indices
        cand = torch.zeros(grouped.numel(), dtype=scores.dtype)
        cand[top] = scores[top].clamp_min(0)
        chosen = torch.topk(cand.reshape(n_groups, -1).sum(1), max_groups).indices
        group_ok = torch.zeros(n_groups, dtype=torch.bool)
        group_ok[chosen] = True
        keep &= group_ok[:, None, None]
    allowed = torch.where(keep, grouped, torch.full_like(grouped, float("-inf"))).reshape(-1)
    return UnlearningMask(torch.topk(allowed, k).indices, layout)
