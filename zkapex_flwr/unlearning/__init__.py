"""The ZK-APEX unlearning math: scope and blocks, Fisher, provider mask (and its per-request size), client Group-OBS."""

from .apply import BlockUpdate, compute_update, mask_only, write_update
from .fisher import BlockFisher, diag_fisher, per_sample_grads
from .group_obs import GroupOBSResult, certificate_residual, group_obs, kkt_residuals
from .mask import UnlearningMask
from .saliency import saliency_scores, select_mask
from .scope import DEFAULT_SCOPE, BlockLayout
from .sizing import SIZING_FRACTIONS, SIZING_TARGET, MaskSizing, size_mask

__all__ = [
    "BlockLayout",
    "DEFAULT_SCOPE",
    "UnlearningMask",
    "BlockFisher",
    "diag_fisher",
    "per_sample_grads",
    "saliency_scores",
    "select_mask",
    "size_mask",
    "MaskSizing",
    "SIZING_FRACTIONS",
    "SIZING_TARGET",
    "group_obs",
    "kkt_residuals",
    "certificate_residual",
    "GroupOBSResult",
    "BlockUpdate",
    "compute_update",
    "write_update",
    "mask_only",
]
