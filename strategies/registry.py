"""The provider's persistent commitment registry (docs/protocol.md §1): one entry per client node.

An entry is what the node committed in phase 2 (:class:`~zkapex_flwr.proof.BlockCommitments`: KZG
commitments of θp per proof unit and of its inverse-Fisher stripes) plus the circuit it registered
with. After a compliant unlearning the θ commitments move to θu. Nothing is overwritten: every change
adds version k+1 of the node's row in the ``registry`` table of the :class:`~strategies.store.ProviderStore`,
inside a transaction (the provider writes a verdict's ledger row in the same one), so a crash at any
instant leaves the previous registry intact and a restarted provider reloads exactly what was recorded.

Every version carries the *registration epoch* of the commitment it descends from (the provider's
event clock when the node committed) and its kind: ``commit`` (phase 2), ``unlearn`` (θ moved to θu
by a compliant verdict; it keeps its registration epoch) or ``repersonalize``. Registering a node
twice is refused: a node that saw a request's mask must not be judged against commitments made after
it. The one way to replace an entry is :meth:`Registry.repersonalize`, explicit and logged; the provider
then asks the node every active request again. Commit failures are recorded here too, so a restarted
provider still knows which nodes failed to commit, and when.

Entries and failures carry the node's stable *identity* when it has one (its node config's, reported at
commit; with SuperNode authentication the node id itself is stable). One identity registers under one
node id: a node that comes back under a new node id cannot start afresh.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zkapex_flwr.proof import BlockCommitments
from zkapex_flwr.proof.circuit import CircuitSpec
from zkapex_flwr.protocol import spec_from_json, spec_to_json

from .store import ProviderStore, StoreError, open_store

log = logging.getLogger("strategies.registry")
KINDS = ("commit", "unlearn", "repersonalize")


class RegistryError(StoreError):
    """The registry does not hold what was asked for, or an entry in it is unreadable."""


class DuplicateCommitments(RegistryError):
    """A node registers commitments another node already registered."""


class DuplicateIdentity(RegistryError):
    """A node id claims a stable identity that another node id registered (or failed to commit) under."""


def _digests(entry: BlockCommitments) -> tuple[str, str]:
    import hashlib

    return hashlib.sha256(entry.theta.tobytes()).hexdigest(), hashlib.sha256(entry.columns.tobytes()).hexdigest()


def _key(node_id: int) -> str:
    return str(int(node_id))  # Flower node ids are unsigned 64-bit: SQLite integers are signed


class Registry:
    def __init__(self, store: ProviderStore | str | Path):
        self.store = open_store(store)
        self._cache: dict[int, tuple[int, BlockCommitments]] = {}  # node -> (version, entry)

    def __contains__(self, node_id: int) -> bool:
        return bool(self.store.query("SELECT 1 FROM registry WHERE node_id = ? LIMIT 1", (_key(node_id),)))

    def __len__(self) -> int:
        return self.store.query("SELECT COUNT(DISTINCT node_id) FROM registry")[0][0]

    def nodes(self) -> list[int]:
        return sorted(int(r[0]) for r in self.store.query("SELECT DISTINCT node_id FROM registry"))

    def record(self, node_id: int) -> dict:
        """The node's latest entry (without the commitment bytes)."""
        rows = self.store.query(
            "SELECT version, circuit, circuit_id, layout, partition_id, round, digest, kind, epoch, "
            "identity FROM registry WHERE node_id = ? ORDER BY version DESC LIMIT 1",
            (_key(node_id),),
        )
        if not rows:
            raise RegistryError(f"node {node_id} has no registry entry (it never committed)")
        keys = (
            "version",
            "circuit",
            "circuit_id",
            "layout",
            "partition_id",
            "round",
            "digest",
            "kind",
            "epoch",
            "identity",
        )
        return dict(zip(keys, rows[0]))

    def partitions(self) -> dict[int, int]:
        """Node → the partition id it reported at commit (simulation bookkeeping), for nodes that reported one."""
        rows = self.store.query(
            "SELECT node_id, partition_id FROM registry r WHERE partition_id IS NOT NULL AND "
            "version = (SELECT MAX(version) FROM registry WHERE node_id = r.node_id)"
        )
        return {int(n): int(p) for n, p in rows}

    def versions(self, node_id: int) -> list[int]:
        return [
            r[0]
            for r in self.store.query(
                "SELECT version FROM registry WHERE node_id = ? ORDER BY version", (_key(node_id),)
            )
        ]

    def circuit_of(self, node_id: int) -> tuple[CircuitSpec, str]:
        rec = self.record(node_id)
        return spec_from_json(rec["circuit"]), rec["circuit_id"]

    def get(self, node_id: int) -> BlockCommitments:
        version = self.record(node_id)["version"]
        cached = self._cache.get(node_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        ((blob, digest),) = self.store.query(
            "SELECT entry, digest FROM registry WHERE node_id = ? AND version = ?", (_key(node_id), version)
        )
        try:
            entry = BlockCommitments.from_bytes(blob)
        except (ValueError, KeyError) as err:
            raise RegistryError(
                f"registry entry v{version} of node {node_id} in {self.store.path} is unreadable: {err}"
            ) from None
        if entry.digest() != digest:
            raise RegistryError(
                f"registry entry v{version} of node {node_id} in {self.store.path} does not match "
                "its recorded digest (damaged)"
            )
        self._cache[node_id] = (version, entry)
        return entry

    def _write(self, node_id: int, entry: BlockCommitments, rec: dict, kind: str) -> int:
        with self.store.transaction() as db:
            epoch = rec["epoch"] if kind == "unlearn" else self.store.next_epoch()
            theta_d, columns_d = _digests(entry)
            db.execute(
                "INSERT INTO registry (node_id, version, circuit, circuit_id, layout, partition_id, round, "
                "digest, entry, kind, epoch, theta_digest, columns_digest, identity) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _key(node_id),
                    int(rec.get("version", 0)) + 1,
                    rec["circuit"],
                    rec["circuit_id"],
                    rec["layout"],
                    rec.get("partition_id"),
                    rec.get("round"),
                    entry.digest(),
                    entry.to_bytes(),
                    kind,
                    epoch,
                    theta_d,
                    columns_d,
                    rec.get("identity") or None,
                ),
            )
        return epoch

    def duplicate_of(self, node_id: int, entry: BlockCommitments) -> int | None:
        """Another node whose entry, now or in any earlier version, holds the same θ or the same Fisher
        commitments (copied verbatim: two real personalizations never commit the same values)."""
        theta_d, columns_d = _digests(entry)
        rows = self.store.query(
            "SELECT node_id FROM registry WHERE node_id != ? AND (theta_digest = ? OR columns_digest = ?) LIMIT 1",
            (_key(node_id), theta_d, columns_d),
        )
        return int(rows[0][0]) if rows else None

    def identity_holder(self, identity: str) -> int | None:
        """The node that registered, or failed to commit, under ``identity`` ('' names no identity)."""
        if not identity:
            return None
        rows = self.store.query(
            "SELECT node_id FROM registry WHERE identity = ? UNION "
            "SELECT node_id FROM commit_failures WHERE identity = ? LIMIT 1",
            (identity, identity),
        )
        return int(rows[0][0]) if rows else None

    def register(
        self,
        node_id: int,
        entry: BlockCommitments,
        spec: CircuitSpec,
        *,
        partition_id: int | None = None,
        round_: int | None = None,
        unique: bool = True,
        identity: str = "",
    ) -> int:
        """Record the node's phase-2 commitments; returns the registration epoch. A second call is refused.

        ``identity``: the node's stable identity (from its node config); an identity another node id
        registered or failed under is refused (:class:`DuplicateIdentity`): a node cannot shed its entry,
        obligations or quarantine by coming back under a new node id. ``unique=False`` skips the
        copied-commitments check: only for load tests that register a few real clients' entries under
        many node ids (``benchmarks/verify_load.py``); a provider never does."""
        if spec is None or entry.circuit_id == "":
            raise RegistryError(f"node {node_id}: a registry entry needs its circuit")
        if node_id in self:
            rec = self.record(node_id)
            raise RegistryError(
                f"node {node_id} is already registered (v{rec['version']}, epoch {rec['epoch']}): "
                "replacing an entry is refused; a new personalization goes through repersonalize(), "
                "which must prove every active deletion again"
            )
        holder = self.identity_holder(identity)
        if holder is not None and holder != int(node_id):
            raise DuplicateIdentity(
                f"node {node_id} claims identity {identity!r}, which node {holder} holds: refused "
                "(a node keeps its identity's entry, obligations and quarantine)"
            )
        other = self.duplicate_of(node_id, entry) if unique else None
        if other is not None:
            raise DuplicateCommitments(
                f"node {node_id} registers commitments that node {other} registered: refused "
                "(a copied entry lets one node answer with another's proofs)"
            )
        return self._write(
            node_id,
            entry,
            {
                "version": 0,
                "circuit": spec_to_json(spec),
                "circuit_id": entry.circuit_id,
                "layout": entry.layout_digest,
                "partition_id": partition_id,
                "round": round_,
                "identity": identity,
            },
            "commit",
        )

    def repersonalize(
        self, node_id: int, entry: BlockCommitments, spec: CircuitSpec, *, reason: str, round_: int | None = None
    ) -> int:
        """Replace a registered node's commitments after an explicit re-personalization (logged).

        The new entry gets a new registration epoch; the provider must then ask the node every active
        request again, judged against this entry (:meth:`registration`)."""
        if not reason or not isinstance(reason, str):
            raise RegistryError(f"node {node_id}: a re-personalization needs a stated reason (it is logged)")
        rec = self.record(node_id)  # raises for a node that never registered
        if spec is None or entry.circuit_id == "":
            raise RegistryError(f"node {node_id}: a registry entry needs its circuit")
        other = self.duplicate_of(node_id, entry)
        if other is not None:
            raise DuplicateCommitments(
                f"node {node_id} re-personalizes with commitments that node {other} registered: refused"
            )
        epoch = self._write(
            node_id,
            entry,
            {
                "version": rec["version"],
                "circuit": spec_to_json(spec),
                "circuit_id": entry.circuit_id,
                "layout": entry.layout_digest,
                "partition_id": rec["partition_id"],
                "round": round_,
                "identity": rec["identity"],
            },
            "repersonalize",
        )
        log.warning(
            "node %d re-personalized at epoch %d (was v%d, epoch %d): %s",
            node_id,
            epoch,
            rec["version"],
            rec["epoch"],
            reason,
        )
        return epoch

    def registration(self, node_id: int) -> tuple[int, str]:
        """(epoch, kind) of the commitment the node's current entry descends from: 'commit' or 'repersonalize'."""
        rows = self.store.query(
            "SELECT epoch, kind FROM registry WHERE node_id = ? AND kind != 'unlearn' ORDER BY version DESC LIMIT 1",
            (_key(node_id),),
        )
        if not rows:
            raise RegistryError(f"node {node_id} has no registry entry (it never committed)")
        return int(rows[0][0]), str(rows[0][1])

    def update_theta(self, node_id: int, new_theta: dict[int, bytes]) -> None:
        """After a compliant verdict the node's θ commitments move to θu (a new version, same registration)."""
        self._write(node_id, self.get(node_id).with_theta(new_theta), self.record(node_id), "unlearn")

    # ------------------------------------------------------------------------- commit failures
    def record_failure(self, node_id: int, reason: str, detail: str, identity: str = "") -> int:
        """Persist a node's failed commit (the first one stands); returns its epoch. ``identity``: the one
        it claimed, unless another node holds it (the failure then stays the node id's own)."""
        with self.store.transaction() as db:
            known = db.execute("SELECT epoch FROM commit_failures WHERE node_id = ?", (_key(node_id),)).fetchone()
            if known:
                return int(known[0])
            holder = self.identity_holder(identity)
            epoch = self.store.next_epoch()
            db.execute(
                "INSERT INTO commit_failures (node_id, reason, detail, epoch, identity) VALUES (?, ?, ?, ?, ?)",
                (
                    _key(node_id),
                    reason,
                    detail,
                    epoch,
                    identity if identity and holder in (None, int(node_id)) else None,
                ),
            )
        return epoch

    def failures(self) -> dict[int, tuple[str, str, int]]:
        """Node → (reason, detail, epoch) of every recorded commit failure."""
        return {
            int(n): (r, d or "", int(e))
            for n, r, d, e in self.store.query("SELECT node_id, reason, detail, epoch FROM commit_failures")
        }
