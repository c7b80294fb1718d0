"""The unlearning scope and its canonical flattening into Fisher blocks.

The scope is the set of weight tensors the provider may mask (default: every transformer block's MLP
up-projection ``fc1.weight``, as in the paper). Scope tensors are taken in the model's parameter order,
each flattened row-major, and concatenated into one vector of ``size`` entries; that vector is cut into
contiguous Fisher blocks of ``block_size`` entries (a block never spans two tensors). A global index
``i`` therefore names the weight ``i % block_size`` of block ``i // block_size``. Provider, client,
circuit and verifier all use this one layout, identified by :meth:`BlockLayout.digest`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_SCOPE = r"(^|\.)fc1\.weight$"  # the paper's scope: every transformer block's MLP up-projection
CLASSIFIER_HEAD = r"^head\.weight$"  # a timm ViT's classifier: one row of weights per class
VERIFIED_SCOPE = DEFAULT_SCOPE + "|" + CLASSIFIER_HEAD  # the verified default for image classifiers
# the verified default for language models: both MLP projections of every block (a causal LM's output head
# is tied to its embeddings, so it cannot be the class-specific lever the ViT head is)
VERIFIED_LM_SCOPE = r"(^|\.)fc[12]\.weight$"


@dataclass(frozen=True)
class ScopeTensor:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class BlockLayout:
    tensors: tuple[ScopeTensor, ...]
    block_size: int

    @staticmethod
    def from_model(model: nn.Module, block_size: int = 64, pattern: str = DEFAULT_SCOPE) -> BlockLayout:
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        rx = re.compile(pattern)
        tensors, offset = [], 0
        for name, p in model.named_parameters():
            if rx.search(name):
                t = ScopeTensor(name, tuple(p.shape), offset)
                if t.numel % block_size:
                    raise ValueError(
                        f"scope tensor '{name}' has {t.numel} entries, not a multiple of the "
                        f"Fisher block size {block_size}"
                    )
                tensors.append(t)
                offset += t.numel
        if not tensors:
            raise ValueError(f"the unlearning scope pattern {pattern!r} matches no parameter of the model")
        return BlockLayout(tuple(tensors), block_size)

    @property
    def size(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def n_blocks(self) -> int:
        return self.size // self.block_size

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """The scope of ``model`` as one flat float64 vector (a copy)."""
        params = dict(model.named_parameters())
        return torch.cat([params[t.name].detach().reshape(-1).double() for t in self.tensors])

    def flatten_grads(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample gradients ``{name: (m, *shape)}`` → ``(m, size)`` in layout order."""
        return torch.cat([grads[t.name].reshape(grads[t.name].shape[0], -1) for t in self.tensors], dim=1)

    def assign(self, model: nn.Module, flat: torch.Tensor) -> None:
        """Write a flat scope vector back into ``model``'s parameters (in place)."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat scope vector has shape {tuple(flat.shape)}, expected ({self.size},)")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for t in self.tensors:
                p = params[t.name]
                p.copy_(flat[t.offset : t.offset + t.numel].reshape(t.shape).to(p.dtype))

    def tensor_mask(self, pattern: str) -> torch.Tensor:
        """Boolean ``(size,)``: the scope entries of the tensors whose names match ``pattern``."""
        rx = re.compile(pattern)
        out = torch.zeros(self.size, dtype=torch.bool)
        for t in self.tensors:
            if rx.search(t.name):
                out[t.offset : t.offset + t.numel] = True
        return out

    def check_model(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for t in self.tensors:
            if t.name not in params:
                raise ValueError(f"model has no scope tensor '{t.name}'")
            if tuple(params[t.name].shape) != t.shape:
                raise ValueError(
                    f"scope tensor '{t.name}' has shape {tuple(params[t.name].shape)}, layout says {t.shape}"
                )

    def to_dict(self) -> dict:
        return {
            "block_size": self.block_size,
            "tensors": [{"name": t.name, "shape": list(t.shape), "offset": t.offset} for t in self.tensors],
        }

    @staticmethod
    def from_dict(d: dict) -> BlockLayout:
        return BlockLayout(
            tuple(ScopeTensor(t["name"], tuple(t["shape"]), int(t["offset"])) for t in d["tensors"]),
            int(d["block_size"]),
        )

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
