"""A minimal in-memory dataset: a tuple of aligned tensors (first dimension = samples).

:func:`as_tensor_data` brings what users have into it: a torch ``Dataset`` or ``DataLoader`` whose
items are tuples (or dicts) of tensors, or a Hugging Face ``datasets.Dataset`` (its numeric columns,
or the ``columns`` you name, in that order). A client's private data is small enough to hold in
memory: per-sample gradients for the Fisher and the research metrics index it at random.
"""

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

    def subset(self, index: torch.Tensor | list[int]) -> TensorData:
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(tuple(t[index] for t in self.tensors))

    def head(self, n: int) -> TensorData:
        return TensorData(tuple(t[:n] for t in self.tensors))

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield tuple(t[idx] for t in self.tensors)


def _stack(items: list, where: str) -> TensorData:
    if not items:
        raise ValueError(f"{where} is empty")
    first = items[0]
    if isinstance(first, dict):
        keys = list(first)
        items = [tuple(it[k] for k in keys) for it in items]
    elif not isinstance(first, (tuple, list)):
        items = [(it,) for it in items]
    try:
        return TensorData(tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(len(items[0]))))
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{where}: items must be tensors (or tuples/dicts of tensors) of one shape each: {err}"
        ) from None


def as_tensor_data(data, *, columns: tuple[str, ...] | list[str] | None = None, name: str = "data") -> TensorData:
    """``data`` as :class:`TensorData`: TensorData, a torch Dataset/DataLoader, or a Hugging Face Dataset.

    ``columns``: the Hugging Face columns to take, in order (default: every numeric column, e.g.
    ``("pixel_values", "label")`` after your preprocessing). ``name`` names the field in errors."""
    if isinstance(data, TensorData):
        return data
    try:  # Hugging Face datasets, without importing it when it is not what we were given
        import datasets

        is_hf = isinstance(data, datasets.Dataset)
    except ImportError:
        is_hf = False
    if is_hf:
        cols = (
            list(columns)
            if columns
            else [c for c, f in data.features.items() if getattr(f, "dtype", "list") not in ("string", "large_string")]
        )
        missing = [c for c in cols if c not in data.column_names]
        if missing or not cols:
            raise ValueError(
                f"{name}: Hugging Face dataset has columns {data.column_names}; "
                f"cannot take {missing or 'any numeric one'} (pass columns=...)"
            )
        table = data.with_format("torch", columns=cols)
        values = [table[c] for c in cols]
        return TensorData(tuple(v if isinstance(v, torch.Tensor) else torch.stack(list(v)) for v in values))
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, DataLoader):
        parts = []
        for batch in data:  # a batch: a tensor, a tuple/list of tensors, or a dict of them
            batch = tuple(batch.values()) if isinstance(batch, dict) else (batch,) if torch.is_tensor(batch) else batch
            parts.append(tuple(torch.as_tensor(t) for t in batch))
        if not parts:
            raise ValueError(f"{name}: the DataLoader yields no batch")
        return TensorData(tuple(torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))))
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return _stack([data[i] for i in range(len(data))], name)
    raise TypeError(
        f"{name} must be a TensorData, a torch Dataset or DataLoader, or a Hugging Face Dataset; "
        f"got {type(data).__name__}"
    )
