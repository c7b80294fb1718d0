"""The provider's persistent commitment registry (PROTOCOL.md §1): one entry per client node.

An entry is what the node committed in phase 2 (:class:`~zkapex_flwr.proof.BlockCommitments`: KZG
commitments of θp per proof unit and of its inverse-Fisher stripes) plus the circuit it registered
with. After a compliant unlearning the θ commitments move to θu. Nothing is overwritten: every change
writes a new version file ``<node>-v<k>.npz`` and then, atomically, the index ``registry.json`` that
points at the latest versions, so a crash mid-write leaves the previous registry intact and a
restarted provider reloads exactly what was recorded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .proof import BlockCommitments
from .proof.circuit import CircuitSpec
from .protocol import spec_from_json, spec_to_json


class RegistryError(RuntimeError):
    """The registry on disk is unreadable or does not hold what was asked for."""


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "registry.json"
        self._index: dict[str, dict] = {}
        self._cache: dict[int, BlockCommitments] = {}
        if self.index_path.exists():
            try:
                self._index = json.loads(self.index_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise RegistryError(f"registry index {self.index_path} is corrupt: {err}") from None

    def __contains__(self, node_id: int) -> bool:
        return str(node_id) in self._index

    def __len__(self) -> int:
        return len(self._index)

    def nodes(self) -> list[int]:
        return sorted(int(n) for n in self._index)

    def record(self, node_id: int) -> dict:
        if str(node_id) not in self._index:
            raise RegistryError(f"node {node_id} has no registry entry (it never committed)")
        return dict(self._index[str(node_id)])

    def circuit_of(self, node_id: int) -> tuple[CircuitSpec, str]:
        rec = self.record(node_id)
        return spec_from_json(rec["circuit"]), rec["circuit_id"]

    def get(self, node_id: int) -> BlockCommitments:
        if node_id not in self._cache:
            rec = self.record(node_id)
            path = self.root / rec["file"]
            try:
                self._cache[node_id] = BlockCommitments.from_bytes(path.read_bytes())
            except (OSError, ValueError, KeyError) as err:
                raise RegistryError(f"registry entry {path} of node {node_id} is unreadable: {err}") from None
        return self._cache[node_id]

    def _write(self, node_id: int, entry: BlockCommitments, rec: dict) -> None:
        version = int(rec.get("version", 0)) + 1
        name = f"{node_id}-v{version}.npz"
        atomic_write(self.root / name, entry.to_bytes())
        index = dict(self._index)
        index[str(node_id)] = {**rec, "version": version, "file": name, "digest": entry.digest()}
        atomic_write(self.index_path, json.dumps(index, indent=1, sort_keys=True).encode())
        self._index = index
        self._cache[node_id] = entry

    def register(self, node_id: int, entry: BlockCommitments, spec: CircuitSpec, *, partition_id: int | None = None,
                 round_: int | None = None) -> None:
        """Record (or replace, as a new version) the node's phase-2 commitments."""
        if spec is None or entry.circuit_id == "":
            raise RegistryError(f"node {node_id}: a registry entry needs its circuit")
        old = self._index.get(str(node_id), {})
        self._write(node_id, entry, {"version": old.get("version", 0), "circuit": spec_to_json(spec),
                                     "circuit_id": entry.circuit_id, "layout": entry.layout_digest,
                                     "partition_id": partition_id, "round": round_})

    def update_theta(self, node_id: int, new_theta: dict[int, bytes]) -> None:
        """After a compliant verdict the node's θ commitments move to θu (a new version)."""
        self._write(node_id, self.get(node_id).with_theta(new_theta), self.record(node_id))
