"""A minimal in-memory dataset: a tuple of aligned tensors (first dimension = samples)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorData:
    """Aligned tensors, e.g. ``(images, labels)`` or ``(token_ids,)``."""

    tensors: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if not self.tensors:
            raise ValueError("TensorData needs at least one tensor")
        n = self.tensors[0].shape[0]
        for t in self.tensors:
            if t.shape[0] != n:
                raise ValueError(f"TensorData tensors disagree on length: {[t.shape[0] for t in self.tensors]}")

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def subset(self, index: torch.Tensor | list[int]) -> "TensorData":
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(tuple(t[index] for t in self.tensors))

    def head(self, n: int) -> "TensorData":
        return TensorData(tuple(t[:n] for t in self.tensors))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield tuple(t[idx] for t in self.tensors)
