"""The provider's deletion requests and masks (docs/protocol.md §2.3): saliency on θg, then a sparse mask.

A :class:`DeletionRequest` names the data to forget (D_f, samples or classes the provider can name). The
:class:`SaliencyMasker` scores the scope weights of the current global model θg against D_f,
normalised on the provider's retain data, and keeps the top ``mask_fraction`` — column-structured per
proof unit when ``group`` > 1, and within the block budget ``max_blocks`` when set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord
from torch import nn

from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.unlearning import BlockLayout, UnlearningMask, saliency_scores, select_mask


@dataclass
class DeletionRequest:
    request_id: str
    forget: TensorData  # D_f as the provider can name it
    after_round: int = 0  # the request arrives after this training round (0: before training)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.request_id or not isinstance(self.request_id, str):
            raise ValueError("a deletion request needs a non-empty string id")
        if len(self.forget) == 0:
            raise ValueError(f"deletion request '{self.request_id}' names no data to forget")
        if self.after_round < 0:
            raise ValueError(f"deletion request '{self.request_id}': after_round must be >= 0")


class SaliencyMasker:
    """``masker(arrays, request) -> UnlearningMask``, scored on θg = ``arrays`` loaded into ``model_fn()``."""

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        task,
        retain: TensorData,
        *,
        scope: str,
        block_size: int,
        mask_fraction: float = 0.04,
        max_blocks: int | None = None,
        group: int = 1,
        slots: int = 2,
        saliency: str = "margin",
        gamma: float = 0.1,
        max_samples: int = 512,
    ):
        self.model_fn, self.task, self.retain = model_fn, task, retain
        self.scope, self.block_size = scope, block_size
        self.mask_fraction, self.max_blocks, self.group, self.slots = mask_fraction, max_blocks, group, slots
        self.saliency, self.gamma, self.max_samples = saliency, gamma, max_samples

    def layout(self) -> BlockLayout:
        return BlockLayout.from_model(self.model_fn(), self.block_size, self.scope)

    def __call__(self, arrays: ArrayRecord, request: DeletionRequest) -> UnlearningMask:
        model = self.model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        layout = BlockLayout.from_model(model, self.block_size, self.scope)
        scores = saliency_scores(
            model,
            self.task,
            request.forget,
            self.retain,
            layout,
            method=self.saliency,
            gamma=self.gamma,
            max_samples=self.max_samples,
        )
        group = (self.group, self.slots) if self.group > 1 else None
        return select_mask(scores, layout, self.mask_fraction, self.max_blocks, group)
