"""The client's unlearning step on a whole model: zero the mask, Group-OBS inside touched blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .fisher import BlockFisher
from .group_obs import GroupOBSResult, group_obs, kkt_residuals
from .mask import UnlearningMask


@dataclass
class BlockUpdate:
    """Everything the proof of one unlearning needs, per touched block (float64)."""

    blocks: torch.Tensor  # (T,) touched block ids, increasing
    theta_p: torch.Tensor  # (T, d) personalized weights
    fisher: torch.Tensor  # (T, d, d) damped curvature C_b
    local_mask: torch.Tensor  # (T, d) bool
    result: GroupOBSResult

    def residuals(self) -> dict[str, torch.Tensor]:
        r = self.result
        return kkt_residuals(
            self.theta_p, r.theta_u, self.fisher, self.local_mask, r.multipliers, r.mask_index, r.valid
        )

    def max_residual(self) -> float:
        res = self.residuals()
        return float(max(res["feasibility"].max(), res["stationarity"].max()))


def compute_update(model: nn.Module, mask: UnlearningMask, fisher: BlockFisher, damping: float) -> BlockUpdate:
    """The Group-OBS update of ``model``'s scope for ``mask`` (does not modify the model)."""
    layout = mask.layout
    if fisher.layout.digest() != layout.digest():
        raise ValueError("the Fisher was estimated on a different scope/block layout than the mask")
    layout.check_model(model)
    blocks = mask.touched_blocks()
    theta = layout.flatten(model).reshape(-1, layout.block_size)[blocks]
    c = fisher.damped(blocks, damping)
    local = mask.local_masks(blocks)
    return BlockUpdate(blocks, theta, c, local, group_obs(theta, c, local))


def write_update(model: nn.Module, update: BlockUpdate, layout) -> None:
    """Write the unlearned blocks into ``model`` in place."""
    flat = layout.flatten(model).reshape(-1, layout.block_size)
    flat[update.blocks] = update.result.theta_u
    layout.assign(model, flat.reshape(-1))


def mask_only(model: nn.Module, mask: UnlearningMask) -> None:
    """Zero the masked weights with no compensation (a baseline and a cheat)."""
    flat = mask.layout.flatten(model)
    flat[mask.indices] = 0.0
    mask.layout.assign(model, flat)
