"""The deletable key/value memory of a MUNKEY model: one row per training instance.

Each row is ``(id, label, key, value)``: ``id`` a unique non-negative int64 instance id, ``label`` the
instance's class, ``key`` a float32 vector of width ``D`` (the frozen backbone's embedding of the instance) and
``value`` a float32 vector of width ``V`` (computed from that instance alone, e.g. its label one-hot). The rows
are buffers, so ``state_dict()`` (and a Flower ``ArrayRecord`` built from it) carries the memory.

Rows are kept in ascending id order. Every operation keeps that invariant, so the memory holding a set of
instances is the same tensors whatever order they were added or deleted in: deleting ``S`` from a memory
built on ``A`` gives, bit for bit, the memory built on ``A \\ S`` (rows are copied, never recomputed).

:meth:`KeyValueMemory.entry_bytes` is the canonical byte encoding of one row that a commitment hashes:
``id`` (int64), ``label`` (int64), ``D`` and ``V`` (int64), then ``key`` and ``value`` (float32), all
little-endian.
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from torch import nn


def _as_ids(ids) -> torch.Tensor:
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    return ids.cpu()


class KeyValueMemory(nn.Module):
    """A key/value memory with one row per instance id; rows sorted by id; delete by id or by class."""

    def __init__(self, key_dim: int, value_dim: int):
        super().__init__()
        if key_dim <= 0 or value_dim <= 0:
            raise ValueError(f"key_dim and value_dim must be positive, got {key_dim} and {value_dim}")
        self.register_buffer("ids", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("keys", torch.zeros(0, key_dim, dtype=torch.float32))
        self.register_buffer("values", torch.zeros(0, value_dim, dtype=torch.float32))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.int64))

    @property
    def key_dim(self) -> int:
        return int(self.keys.shape[1])

    @property
    def value_dim(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __contains__(self, instance_id) -> bool:
        return bool((self.ids == int(instance_id)).any())

    def _set(self, ids, keys, values, labels) -> None:
        order = torch.argsort(ids, stable=True)
        self.ids = ids[order].contiguous()
        self.keys = keys[order].contiguous()
        self.values = values[order].contiguous()
        self.labels = labels[order].contiguous()

    def add(self, ids, keys, values, labels) -> None:
        """Add rows. ``ValueError`` naming any id that is negative, repeated in ``ids`` or already held."""
        ids = _as_ids(ids).to(self.ids.device)
        n = ids.shape[0]
        keys = torch.as_tensor(keys).detach().to(device=self.keys.device, dtype=torch.float32)
        values = torch.as_tensor(values).detach().to(device=self.values.device, dtype=torch.float32)
        if n == 0:  # nothing to add (an empty state, an empty batch): only the widths must agree
            keys, values = keys.reshape(0, self.key_dim), values.reshape(0, self.value_dim)
        else:
            keys, values = keys.reshape(n, -1), values.reshape(n, -1)
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).to(self.labels.device)
        if keys.shape[1] != self.key_dim:
            raise ValueError(f"keys have width {keys.shape[1]}, the memory holds width {self.key_dim}")
        if values.shape[1] != self.value_dim:
            raise ValueError(f"values have width {values.shape[1]}, the memory holds width {self.value_dim}")
        if labels.shape[0] != n:
            raise ValueError(f"{n} ids but {labels.shape[0]} labels")
        if n == 0:
            return
        if bool((ids < 0).any()):
            raise ValueError(f"instance ids must be >= 0, got {ids[ids < 0].tolist()}")
        unique, counts = torch.unique(ids, return_counts=True)
        if bool((counts > 1).any()):
            raise ValueError(f"duplicate instance ids in this batch: {unique[counts > 1].tolist()}")
        held = torch.isin(ids, self.ids)
        if bool(held.any()):
            raise ValueError(f"duplicate instance ids, already in the memory: {ids[held].tolist()}")
        self._set(
            torch.cat([self.ids, ids]),
            torch.cat([self.keys, keys]),
            torch.cat([self.values, values]),
            torch.cat([self.labels, labels]),
        )

    def delete(self, ids) -> None:
        """Delete the rows of ``ids``. ``KeyError`` naming the ids the memory does not hold (nothing deleted)."""
        ids = _as_ids(ids).to(self.ids.device)
        missing = ~torch.isin(ids, self.ids)
        if bool(missing.any()):
            raise KeyError(f"instance ids not in the memory: {ids[missing].tolist()}")
        keep = ~torch.isin(self.ids, ids)
        self._set(self.ids[keep], self.keys[keep], self.values[keep], self.labels[keep])

    def delete_class(self, label: int) -> torch.Tensor:
        """Delete every row of class ``label``; returns the deleted ids (ascending; empty if none)."""
        gone = self.ids[self.labels == int(label)].clone()
        if gone.numel():
            self.delete(gone)
        return gone

    def index_of(self, ids) -> torch.Tensor:
        """Row positions of ``ids`` (``KeyError`` naming the ids not held)."""
        ids = _as_ids(ids).to(self.ids.device)
        missing = ~torch.isin(ids, self.ids)
        if bool(missing.any()):
            raise KeyError(f"instance ids not in the memory: {ids[missing].tolist()}")
        return torch.searchsorted(self.ids, ids)

    def entry_bytes(self, i: int) -> bytes:
        """Canonical bytes of row ``i``: id, label, D, V (int64), key, value (float32), all little-endian."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for a memory of {n} rows")
        head = struct.pack("<qqqq", int(self.ids[i]), int(self.labels[i]), self.key_dim, self.value_dim)
        key = self.keys[i].detach().cpu().numpy().astype("<f4", copy=False).tobytes()
        value = self.values[i].detach().cpu().numpy().astype("<f4", copy=False).tobytes()
        return head + key + value

    def state(self) -> dict[str, torch.Tensor]:
        """The memory as plain CPU tensors (``ids``, ``keys``, ``values``, ``labels``), copies."""
        return {
            "ids": self.ids.detach().cpu().clone(),
            "keys": self.keys.detach().cpu().clone(),
            "values": self.values.detach().cpu().clone(),
            "labels": self.labels.detach().cpu().clone(),
        }

    @classmethod
    def from_state(cls, state: dict) -> KeyValueMemory:
        """Rebuild from :meth:`state` (or ``state_dict()``); validates shapes and unique ids."""
        keys = torch.as_tensor(np.asarray(state["keys"]) if not torch.is_tensor(state["keys"]) else state["keys"])
        values = torch.as_tensor(
            np.asarray(state["values"]) if not torch.is_tensor(state["values"]) else state["values"]
        )
        if keys.ndim != 2 or values.ndim != 2:
            raise ValueError("keys and values must be 2-D")
        memory = cls(int(keys.shape[1]), int(values.shape[1]))
        memory.add(state["ids"], keys, values, state["labels"])
        return memory

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the rows are variable-sized buffers: size them to the checkpoint, then let nn.Module copy (and check)
        names = ("ids", "keys", "values", "labels")
        if all(prefix + name in state_dict for name in names):
            rows = {name: state_dict[prefix + name] for name in names}
            n = int(rows["ids"].shape[0])
            if any(int(rows[name].shape[0]) != n for name in names):
                raise ValueError("ids, keys, values and labels must have the same number of rows")
            ids = torch.as_tensor(rows["ids"])
            if ids.numel() and (bool((ids < 0).any()) or torch.unique(ids).numel() != n):
                raise ValueError("instance ids in the state must be unique and >= 0")
            if n > 1 and not bool((ids[1:] > ids[:-1]).all()):
                raise ValueError("instance ids in the state must be in ascending order")
            self.ids = torch.zeros(n, dtype=torch.int64, device=self.ids.device)
            self.labels = torch.zeros(n, dtype=torch.int64, device=self.labels.device)
            self.keys = torch.zeros(n, int(rows["keys"].shape[1]), dtype=torch.float32, device=self.keys.device)
            self.values = torch.zeros(n, int(rows["values"].shape[1]), dtype=torch.float32, device=self.values.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"rows={len(self)}, key_dim={self.key_dim}, value_dim={self.value_dim}"
