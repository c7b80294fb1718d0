"""A deletion mask: sorted global indices into the unlearning scope, validated against its layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .scope import BlockLayout


@dataclass(frozen=True)
class UnlearningMask:
    indices: torch.Tensor  # int64, sorted, unique, in [0, layout.size)
    layout: BlockLayout

    def __post_init__(self) -> None:
        idx = torch.as_tensor(self.indices)
        if idx.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"mask indices must be integers, got {idx.dtype}")
        if idx.ndim != 1:
            raise ValueError(f"mask indices must be one-dimensional, got shape {tuple(idx.shape)}")
        if idx.numel() == 0:
            raise ValueError("the mask is empty: nothing to unlearn")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.layout.size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"mask index {bad} is outside the unlearning scope of {self.layout.size} weights")
        idx = idx.long()
        uniq = torch.unique(idx)
        if uniq.numel() != idx.numel():
            raise ValueError(f"mask has {idx.numel() - uniq.numel()} duplicate indices")
        object.__setattr__(self, "indices", uniq)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def touched_blocks(self) -> torch.Tensor:
        return torch.unique(self.indices // self.layout.block_size)

    def dense(self) -> torch.Tensor:
        """The mask as a boolean vector over the whole scope, ``(layout.size,)``."""
        dense = torch.zeros(self.layout.size, dtype=torch.bool)
        dense[self.indices] = True
        return dense

    def local_masks(self, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean ``(T, d)`` masks of the touched blocks (or of ``blocks``), in block order."""
        blocks = self.touched_blocks() if blocks is None else blocks
        return self.dense().reshape(-1, self.layout.block_size)[blocks]

    def to_bytes(self) -> bytes:
        """Compact wire form: little-endian uint32 (scopes below 2^32 weights) or int64 indices."""
        dtype = np.uint32 if self.layout.size < 2**32 else np.int64
        return self.indices.numpy().astype(dtype).tobytes()

    @staticmethod
    def from_bytes(data: bytes, layout: BlockLayout) -> UnlearningMask:
        dtype = np.uint32 if layout.size < 2**32 else np.int64
        if len(data) % np.dtype(dtype).itemsize:
            raise ValueError(f"mask bytes length {len(data)} is not a multiple of {np.dtype(dtype).itemsize}")
        return UnlearningMask(torch.from_numpy(np.frombuffer(data, dtype=dtype).astype(np.int64)), layout)
