"""The provider's side of the math, per request: how large a sample request's mask must be.

A fixed mask fraction forgets a sample request unevenly: the same 16 % that brings one seed's D_f to
retrain's membership score overshoots on the next (docs/research/forgetting.md §4.2). The provider can
size the mask itself, on θg, before it sends anything: for each candidate fraction it applies the very
transformation a client will apply — the mask, then the Group-OBS compensation from a block Fisher, here
of the provider's own retain data — and scores D_f against never-trained data it holds
(``provider_holdout``) with a loss-threshold AUC. It sends the smallest candidate whose AUC is at most
``target``.

Nothing about the proof changes: the chosen mask is a public input like any other, and the statement
the client proves is the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..data.tensors import TensorData
from .apply import compute_update, write_update
from .fisher import BlockFisher
from .mask import UnlearningMask
from .saliency import select_mask
from .scope import BlockLayout

# chosen on the tuning seed of the sample-request benchmark (docs/research/forgetting.md §4.2): below 0.5
# because the client's update on θp removes more membership than the same update on θg shows
SIZING_TARGET = 0.465
SIZING_FRACTIONS = (0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.20, 0.24)


@dataclass
class MaskSizing:
    """The chosen fraction and its mask, with every candidate's provider-side score."""

    fraction: float
    mask: UnlearningMask
    target: float
    table: list[dict] = field(default_factory=list)  # one row per candidate: fraction, masked weights, loss_auc


def check_sizing(fractions: tuple[float, ...], target: float) -> None:
    """Refuse candidate fractions that are not increasing in (0, 1), or a target outside (0, 1)."""
    f = tuple(fractions)
    if not f or list(f) != sorted(f) or not all(0 < x < 1 for x in f):
        raise ValueError(f"sizing_fractions must be increasing and in (0, 1), got {fractions}")
    if not 0 < target < 1:
        raise ValueError(f"sizing_target must be in (0, 1), got {target}")


def loss_auc(model: nn.Module, task, members: TensorData, non_members: TensorData) -> float:
    """AUC of the loss-threshold attack (lower loss = member): 0.5 means D_f looks like unseen data."""
    from sklearn.metrics import roc_auc_score

    from ..training import per_sample_stats

    if len(members) == 0 or len(non_members) == 0:
        raise ValueError(f"a loss AUC needs members and non-members, got {len(members)} and {len(non_members)}")
    lf = per_sample_stats(model, task, members)["loss"].double().numpy()
    lh = per_sample_stats(model, task, non_members)["loss"].double().numpy()
    labels = np.r_[np.ones(len(lf)), np.zeros(len(lh))]
    return float(roc_auc_score(labels, -np.r_[lf, lh]))


def size_mask(
    model: nn.Module,
    task,
    scores: torch.Tensor,
    layout: BlockLayout,
    fisher: BlockFisher,
    forget: TensorData,
    holdout: TensorData,
    *,
    damping: float,
    fractions: tuple[float, ...] = SIZING_FRACTIONS,
    target: float = SIZING_TARGET,
    max_blocks: int | None = None,
    grouping: tuple[int, int] | None = None,
    exclude: str | None = None,
) -> MaskSizing:
    """The smallest of ``fractions`` whose update, applied to ``model`` (θg), scores D_f at or below ``target``.

    ``fisher`` is a :class:`BlockFisher` of ``model`` on the provider's retain data, over ``layout``;
    ``scores``, ``max_blocks``, ``grouping`` and ``exclude`` are those of :func:`select_mask`. When no
    candidate reaches the target, the largest one is chosen (and the table shows it).
    """
    from ..models import clone_model

    check_sizing(fractions, target)
    if holdout is None or len(holdout) == 0:
        raise ValueError("mask sizing needs the provider's holdout data (never trained on); these splits have none")
    table, chosen = [], None
    for fraction in fractions:
        mask = select_mask(scores, layout, fraction, max_blocks, grouping, exclude)
        moved = clone_model(model)
        write_update(moved, compute_update(model, mask, fisher, damping), layout)
        auc = loss_auc(moved, task, forget, holdout)
        table.append({"fraction": fraction, "masked_weights": len(mask), "loss_auc": auc})
        if auc <= target:
            chosen = (fraction, mask)
            break
    if chosen is None:
        chosen = (fraction, mask)
    return MaskSizing(fraction=chosen[0], mask=chosen[1], target=target, table=table)
