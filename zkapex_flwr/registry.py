"""The provider's persistent commitment registry (docs/protocol.md §1): one entry per client node.

An entry is what the node committed in phase 2 (:class:`~zkapex_flwr.proof.BlockCommitments`: KZG
commitments of θp per proof unit and of its inverse-Fisher stripes) plus the circuit it registered
with. After a compliant unlearning the θ commitments move to θu. Nothing is overwritten: every change
adds version k+1 of the node's row in the ``registry`` table of the :class:`~zkapex_flwr.store.ProviderStore`,
inside a transaction (the provider writes a verdict's ledger row in the same one), so a crash at any
instant leaves the previous registry intact and a restarted provider reloads exactly what was recorded.
"""
from __future__ import annotations

from pathlib import Path

from .proof import BlockCommitments
from .proof.circuit import CircuitSpec
from .protocol import spec_from_json, spec_to_json
from .store import ProviderStore, StoreError, open_store


class RegistryError(StoreError):
    """The registry does not hold what was asked for, or an entry in it is unreadable."""


def _key(node_id: int) -> str:
    return str(int(node_id))   # Flower node ids are unsigned 64-bit: SQLite integers are signed


class Registry:
    def __init__(self, store: ProviderStore | str | Path):
        self.store = open_store(store)
        self._cache: dict[int, tuple[int, BlockCommitments]] = {}   # node -> (version, entry)

    def __contains__(self, node_id: int) -> bool:
        return bool(self.store.query("SELECT 1 FROM registry WHERE node_id = ? LIMIT 1", (_key(node_id),)))

    def __len__(self) -> int:
        return self.store.query("SELECT COUNT(DISTINCT node_id) FROM registry")[0][0]

    def nodes(self) -> list[int]:
        return sorted(int(r[0]) for r in self.store.query("SELECT DISTINCT node_id FROM registry"))

    def record(self, node_id: int) -> dict:
        """The node's latest entry (without the commitment bytes)."""
        rows = self.store.query("SELECT version, circuit, circuit_id, layout, partition_id, round, digest FROM registry "
                                "WHERE node_id = ? ORDER BY version DESC LIMIT 1", (_key(node_id),))
        if not rows:
            raise RegistryError(f"node {node_id} has no registry entry (it never committed)")
        keys = ("version", "circuit", "circuit_id", "layout", "partition_id", "round", "digest")
        return dict(zip(keys, rows[0]))

    def partitions(self) -> dict[int, int]:
        """Node → the partition id it reported at commit (simulation bookkeeping), for nodes that reported one."""
        rows = self.store.query("SELECT node_id, partition_id FROM registry r WHERE partition_id IS NOT NULL AND "
                                "version = (SELECT MAX(version) FROM registry WHERE node_id = r.node_id)")
        return {int(n): int(p) for n, p in rows}

    def versions(self, node_id: int) -> list[int]:
        return [r[0] for r in self.store.query("SELECT version FROM registry WHERE node_id = ? ORDER BY version",
                                               (_key(node_id),))]

    def circuit_of(self, node_id: int) -> tuple[CircuitSpec, str]:
        rec = self.record(node_id)
        return spec_from_json(rec["circuit"]), rec["circuit_id"]

    def get(self, node_id: int) -> BlockCommitments:
        version = self.record(node_id)["version"]
        cached = self._cache.get(node_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        (blob, digest), = self.store.query("SELECT entry, digest FROM registry WHERE node_id = ? AND version = ?",
                                           (_key(node_id), version))
        try:
            entry = BlockCommitments.from_bytes(blob)
        except (ValueError, KeyError) as err:
            raise RegistryError(f"registry entry v{version} of node {node_id} in {self.store.path} is unreadable: "
                                f"{err}") from None
        if entry.digest() != digest:
            raise RegistryError(f"registry entry v{version} of node {node_id} in {self.store.path} does not match "
                                "its recorded digest (damaged)")
        self._cache[node_id] = (version, entry)
        return entry

    def _write(self, node_id: int, entry: BlockCommitments, rec: dict) -> None:
        with self.store.transaction() as db:
            db.execute("INSERT INTO registry (node_id, version, circuit, circuit_id, layout, partition_id, round, "
                       "digest, entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (_key(node_id), int(rec.get("version", 0)) + 1, rec["circuit"], rec["circuit_id"],
                        rec["layout"], rec.get("partition_id"), rec.get("round"), entry.digest(), entry.to_bytes()))

    def register(self, node_id: int, entry: BlockCommitments, spec: CircuitSpec, *, partition_id: int | None = None,
                 round_: int | None = None) -> None:
        """Record (or replace, as a new version) the node's phase-2 commitments."""
        if spec is None or entry.circuit_id == "":
            raise RegistryError(f"node {node_id}: a registry entry needs its circuit")
        old = self.record(node_id)["version"] if node_id in self else 0
        self._write(node_id, entry, {"version": old, "circuit": spec_to_json(spec), "circuit_id": entry.circuit_id,
                                     "layout": entry.layout_digest, "partition_id": partition_id, "round": round_})

    def update_theta(self, node_id: int, new_theta: dict[int, bytes]) -> None:
        """After a compliant verdict the node's θ commitments move to θu (a new version)."""
        self._write(node_id, self.get(node_id).with_theta(new_theta), self.record(node_id))
