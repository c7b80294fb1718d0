"""Verified deletion for MUNKEY: prove, and check, that a committed key set lost exactly the requested ids.

A deletion is a change of the client's :class:`~zkapex_flwr.munkey.commitment.Commitment` from ``old``
(registered with the provider) to ``new``. The client proves it with a :class:`DeletionProof`:

* for every deleted id, the opening of its old leaf — slot position, instance id and the entry's hiding
  content hash ``c`` (never the key, the value or the salt);
* the authentication paths of those slots as one multi-proof: the sibling hashes
  (:func:`~zkapex_flwr.munkey.commitment.needed_siblings`) a verifier needs to rebuild the old root from
  the opened leaves, each shared node sent once;
* the statement: the request binding (request id, the provider's round nonce, the node id), ``old`` and
  ``new``.

:func:`verify_deletion` checks the openings against ``old``, checks the opened ids are exactly the
requested ones, and recomputes the root **itself** from the same paths with the opened slots set to
``EMPTY``; it equals the client's ``new`` only if ``new`` commits to the old set minus exactly those
ids and nothing else changed (docs/munkey-proofs.md gives the argument). Cost: O(k log N) hashes for k
deletions, both sides; the proof is ``155 + 48 k + 32 m`` bytes with ``m ≤ k · depth`` siblings.

Usage (the benchmark's and the Flower mod's)::

    state = commit_memory(memory)                       # client, at commit; send state.commitment
    binding = DeletionBinding.for_node("r1", nonce, node_id)
    proof, new_state = prove_deletion(state, ids, binding)
    memory.delete(ids)                                  # and keep new_state for the next request
    verdict = verify_deletion(state.commitment, proof.new, proof.to_bytes(), ids, binding)
    assert verdict.ok, verdict.reason
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .commitment import (
    COMMITMENT_BYTES,
    EMPTY,
    HASH_BYTES,
    MAX_ID,
    Commitment,
    CommitmentError,
    MemoryCommitment,
    leaf_hash,
    needed_siblings,
    node_hash,
)

MAGIC = b"MKDP"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 1 + HASH_BYTES + 2 * COMMITMENT_BYTES + 4
OPENING_BYTES = 8 + 8 + HASH_BYTES
MAX_DIAGNOSE = 32  # a failed root check with at most this many deletions names the id the client kept

# Reason codes of a deletion verdict (the provider's ledger carries one per row)
REASONS = (
    "compliant",
    "malformed",  # the proof bytes do not parse, or contradict the reply they came in
    "replay",  # bound to another request, round nonce or node
    "stale-root",  # proven against a commitment other than the one the provider has registered
    "wrong-ids",  # the opened ids are not exactly the requested ones (missing, extra, duplicate)
    "invalid-opening",  # the openings and paths do not rebuild the registered root
    "count-mismatch",  # the new commitment's N or depth is not the old one's minus the deletions
    "kept-key",  # the new root still commits an entry the client opened as deleted
    "root-mismatch",  # the new root is not the old tree with exactly those slots emptied
)


class MalformedProof(ValueError):
    """Deletion-proof bytes that do not parse (the message says where)."""


@dataclass(frozen=True)
class DeletionBinding:
    """What a deletion proof answers: the request, the provider's round nonce and the node."""

    request_id: str
    nonce: str = ""
    node: str = ""

    @staticmethod
    def for_node(request_id: str, nonce: str, node_id: int) -> DeletionBinding:
        return DeletionBinding(str(request_id), str(nonce), str(int(node_id)))

    def digest(self) -> bytes:
        return binding_digest(self)


def binding_digest(binding) -> bytes:
    """SHA-256 over the canonical JSON of (request, nonce, node), domain-separated from every other hash
    here. Accepts a :class:`DeletionBinding` or anything with those three attributes (e.g. ZK-APEX's
    ``Binding``)."""
    text = json.dumps(
        {"request": str(binding.request_id), "nonce": str(binding.nonce), "node": str(binding.node)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(b"zkapex-munkey/binding/v1|" + text.encode()).digest()


@dataclass(frozen=True)
class DeletionProof:
    """The public proof of one deletion (see the module docstring); :meth:`to_bytes` is canonical."""

    binding: bytes  # binding_digest of the request it answers
    old: Commitment
    new: Commitment
    openings: tuple[tuple[int, int, bytes], ...]  # (slot, instance id, content hash), slots ascending
    siblings: tuple[bytes, ...]  # needed_siblings(slots, old.depth) order

    @property
    def ids(self) -> list[int]:
        return [i for _, i, _ in self.openings]

    def to_bytes(self) -> bytes:
        parts = [
            MAGIC,
            bytes([VERSION]),
            self.binding,
            self.old.to_bytes(),
            self.new.to_bytes(),
            struct.pack("<I", len(self.openings)),
        ]
        parts += [struct.pack("<Qq", p, i) + c for p, i, c in self.openings]
        parts += list(self.siblings)
        return b"".join(parts)

    @staticmethod
    def from_bytes(data) -> DeletionProof:
        """Parse, checking every length and range first; :class:`MalformedProof` says what is wrong."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MalformedProof(f"a deletion proof is bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < HEADER_BYTES:
            raise MalformedProof(f"{len(data)} bytes, shorter than the {HEADER_BYTES}-byte header")
        if data[:4] != MAGIC:
            raise MalformedProof(f"bad magic {data[:4]!r} (expected {MAGIC!r})")
        if data[4] != VERSION:
            raise MalformedProof(f"unknown version {data[4]} (this verifier reads {VERSION})")
        off = 5
        binding = data[off : off + HASH_BYTES]
        off += HASH_BYTES
        try:
            old = Commitment.from_bytes(data[off : off + COMMITMENT_BYTES])
            new = Commitment.from_bytes(data[off + COMMITMENT_BYTES : off + 2 * COMMITMENT_BYTES])
        except CommitmentError as err:
            raise MalformedProof(str(err)) from None
        off += 2 * COMMITMENT_BYTES
        (k,) = struct.unpack("<I", data[off : off + 4])
        off += 4
        size = 2**old.depth
        if k > size:
            raise MalformedProof(f"{k} openings in a tree of {size} slots")
        if len(data) < off + k * OPENING_BYTES:
            raise MalformedProof(f"{len(data)} bytes cannot hold {k} openings")
        openings = []
        for j in range(k):
            p, i = struct.unpack("<Qq", data[off : off + 16])
            if p >= size:
                raise MalformedProof(f"opening {j}: slot {p} outside the tree of {size} slots")
            if openings and p <= openings[-1][0]:
                raise MalformedProof(f"opening {j}: slot {p} not after slot {openings[-1][0]} (slots ascend)")
            if not 0 <= i <= MAX_ID:
                raise MalformedProof(f"opening {j}: instance id {i} is not an int64 >= 0")
            openings.append((p, i, data[off + 16 : off + OPENING_BYTES]))
            off += OPENING_BYTES
        m = len(needed_siblings([p for p, _, _ in openings], old.depth))
        if len(data) != off + m * HASH_BYTES:
            raise MalformedProof(
                f"{len(data) - off} bytes after the openings, expected {m} sibling hashes ({m * HASH_BYTES} bytes)"
            )
        siblings = tuple(data[off + j * HASH_BYTES : off + (j + 1) * HASH_BYTES] for j in range(m))
        return DeletionProof(binding, old, new, tuple(openings), siblings)


@dataclass(frozen=True)
class Verdict:
    """The verifier's decision: ``ok`` iff ``reason == "compliant"``; ``detail`` says why, for the ledger."""

    ok: bool
    reason: str
    detail: str = ""
    verify_ms: float = 0.0
    ids: tuple[int, ...] = field(default=())  # the ids the proof shows deleted (when it parsed)

    @property
    def compliant(self) -> bool:
        return self.ok


class DeletionError(KeyError):
    """The client cannot prove a deletion (an id it never committed, or one already deleted)."""


def prove_deletion(state: MemoryCommitment, ids: Iterable[int], binding) -> tuple[DeletionProof, MemoryCommitment]:
    """Prove that ``ids`` leave the committed memory ``state``; returns the proof and the client's next state.

    ``binding``: a :class:`DeletionBinding` (``DeletionBinding.for_node(request_id, nonce, node_id)``).
    The next state has the same slots with the deleted ones empty; its ``.commitment`` is ``proof.new``.
    Raises :class:`DeletionError` naming ids the state does not hold. The memory itself is not touched:
    delete the rows from it too (``memory.delete(ids)``); ``state.mismatches(memory)`` checks the two
    agree. Cost: O(k log N) hashes (no pass over the N entries)."""
    ids = [int(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise DeletionError(f"ids to delete repeat: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    pos = state.position()
    missing = [i for i in ids if i not in pos]
    if missing:
        raise DeletionError(f"ids not in the committed memory: {sorted(missing)}")
    slots = sorted(pos[i] for i in ids)
    openings = tuple((p, state.slots[p][0], state.slots[p][2]) for p in slots)
    siblings = tuple(state.tree.siblings(slots))
    tree = state.tree.copy()
    tree.set_leaves(dict.fromkeys(slots, EMPTY))
    new_slots = list(state.slots)
    for p in slots:
        new_slots[p] = None
    new_state = MemoryCommitment(new_slots, tree)
    index = dict(pos)
    for i in ids:
        del index[i]
    new_state._position = index  # the next request's lookup comes free
    proof = DeletionProof(binding_digest(binding), state.commitment, new_state.commitment, openings, siblings)
    return proof, new_state


def _rebuild(depth: int, leaves: dict[int, bytes], siblings, emptied: set[int]) -> tuple[bytes, bytes]:
    """(old root, new root) from opened leaves and the multi-proof; ``emptied`` slots become EMPTY in new."""
    old = dict(leaves)
    new = {p: (EMPTY if p in emptied else h) for p, h in leaves.items()}
    it = iter(siblings)
    for _ in range(depth):
        for s in sorted({p ^ 1 for p in old} - old.keys()):
            old[s] = new[s] = next(it)
        parents = sorted({p >> 1 for p in old})
        old = {q: node_hash(old[2 * q], old[2 * q + 1]) for q in parents}
        new = {q: node_hash(new[2 * q], new[2 * q + 1]) for q in parents}
    if not leaves:
        return EMPTY, EMPTY  # no opening: no root to rebuild (the caller compares old and new directly)
    return old[0], new[0]


def verify_deletion(
    old: Commitment,
    new: Commitment,
    proof,
    requested_ids: Iterable[int] | None,
    binding,
    *,
    extra_allowed: bool = False,
    protected_ids: Iterable[int] = (),
) -> Verdict:
    """Decide whether ``proof`` shows ``new`` = ``old`` minus exactly ``requested_ids``. Never raises on
    bad input: every failure is a :class:`Verdict` with a reason code from :data:`REASONS`.

    ``old``: the commitment the provider has registered for the node; ``new``: the one the client
    claims now; ``proof``: the proof bytes (or a :class:`DeletionProof`); ``binding``: rebuilt by the
    provider from its own records (request id, the nonce it sent, the node id).

    ``requested_ids``: ids that must be opened (all of them, none twice). With ``extra_allowed`` the
    client may open more (its own ids of a requested class: the provider cannot list them), except any
    in ``protected_ids`` (ids the provider holds and did not ask to delete). ``None`` means ``()``.
    """
    t0 = time.perf_counter()

    def verdict(reason: str, detail: str = "", ids=()) -> Verdict:
        return Verdict(reason == "compliant", reason, detail, (time.perf_counter() - t0) * 1e3, tuple(ids))

    try:
        if not isinstance(old, Commitment) or not isinstance(new, Commitment):
            return verdict("malformed", "the old and new commitments must be Commitment values")
        try:
            p = proof if isinstance(proof, DeletionProof) else DeletionProof.from_bytes(proof)
        except MalformedProof as err:
            return verdict("malformed", f"deletion proof: {err}")
        if p.binding != binding_digest(binding):
            return verdict(
                "replay",
                f"the proof is bound to another request, round nonce or node (expected request "
                f"{str(binding.request_id)[:80]!r}, nonce {str(binding.nonce)[:40]!r}, node {binding.node})",
            )
        if p.old != old:
            return verdict(
                "stale-root",
                f"proven against commitment {p.old.hex()[:16]}… (N={p.old.count}); the registered one is "
                f"{old.hex()[:16]}… (N={old.count})",
            )
        if p.new != new:
            return verdict("malformed", "the proof's new commitment is not the one the reply claims")
        ids = p.ids
        want = sorted({int(i) for i in (requested_ids or ())})
        dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        missing = sorted(set(want) - set(ids))
        extra = sorted(set(ids) - set(want))
        if dup or missing or (extra and not extra_allowed):
            parts = [
                f"{name} {_ids(v)}" for name, v in (("missing", missing), ("extra", extra), ("repeated", dup)) if v
            ]
            return verdict("wrong-ids", "opened ids differ from the request: " + "; ".join(parts), ids)
        protected = sorted(set(extra) & {int(i) for i in protected_ids})
        if protected:
            return verdict("wrong-ids", f"deletes provider-held ids it was not asked to: {_ids(protected)}", ids)
        leaves = {pos: leaf_hash(i, c) for pos, i, c in p.openings}
        slots = set(leaves)
        if not leaves:
            if new.root != old.root or new.count != old.count or new.depth != old.depth:
                return verdict("root-mismatch", "nothing was deleted, yet the commitment changed", ids)
            return verdict("compliant", "no entry to delete", ids)
        old_root, new_root = _rebuild(old.depth, leaves, p.siblings, slots)
        if old_root != old.root:
            return verdict("invalid-opening", "the openings and their paths do not rebuild the registered root", ids)
        if new.depth != old.depth or new.count != old.count - len(ids):
            return verdict(
                "count-mismatch",
                f"new commitment N={new.count}, depth {new.depth}; deleting {len(ids)} of N={old.count} "
                f"at depth {old.depth} gives N={old.count - len(ids)}, depth {old.depth}",
                ids,
            )
        if new_root != new.root:
            kept = _kept(old.depth, leaves, p, new.root)
            if kept is not None:
                return verdict("kept-key", f"the new root still commits id(s) {_ids(kept)}", ids)
            return verdict(
                "root-mismatch",
                "the new root is not the old tree with exactly the opened slots emptied (another entry changed)",
                ids,
            )
        return verdict("compliant", f"{len(ids)} entr{'y' if len(ids) == 1 else 'ies'} deleted", ids)
    except Exception as err:  # a verifier bug must not take the round down; the reply is refused
        return verdict("malformed", f"the deletion proof could not be verified ({type(err).__name__}: {err})")


def _kept(depth: int, leaves: dict[int, bytes], p: DeletionProof, claimed: bytes) -> list[int] | None:
    """The opened ids the claimed root still commits: all of them, or (k ≤ MAX_DIAGNOSE) one of them."""
    if claimed == p.old.root:
        return p.ids
    if len(leaves) > MAX_DIAGNOSE:
        return None
    slot_id = {pos: i for pos, i, _ in p.openings}
    for keep in leaves:
        if _rebuild(depth, leaves, p.siblings, set(leaves) - {keep})[1] == claimed:
            return [slot_id[keep]]
    return None


def _ids(values: list[int], most: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:most])
    return f"[{shown}{', …' if len(values) > most else ''}] ({len(values)})"
