"""A hiding, binding commitment to a MUNKEY key/value memory: a salted SHA-256 Merkle tree (docs/munkey-proofs.md).

The client commits to its memory once (``train.munkey-commit``) and sends the provider only a
:class:`Commitment` — the Merkle root, the entry count N and the tree depth (41 bytes). Construction:

* **slots** — one slot per entry, entries sorted by instance id, the slot count padded to a power of two
  (at least 1) with the constant :data:`EMPTY` leaf. Positions are fixed for the life of the
  commitment: deleting an entry turns its slot into :data:`EMPTY`, nothing moves.
* **content** — ``c_i = SHA-256(0x03 ‖ salt_i ‖ entry_bytes(i))`` with a fresh random 32-byte salt per
  entry, kept by the client. ``entry_bytes`` is :meth:`KeyValueMemory.entry_bytes` (id, label, key,
  value, little-endian int64/float32). The salt makes ``c_i`` hiding: the provider, even one who can
  guess a key (it holds the instance and the backbone), cannot test the guess.
* **leaf** — ``H(0x00 ‖ id_i ‖ c_i)`` (``id_i`` as 8 bytes little-endian): the leaf names its instance
  id, so a deletion proof can reveal the id and ``c_i`` without the key or the value.
* **node** — ``H(0x01 ‖ left ‖ right)``; 0x00/0x01 is RFC 6962's domain separation, so no leaf can be
  read as a node or a node as a leaf. :data:`EMPTY` is ``H(0x02 ‖ "zkapex-munkey/empty/v1")``: a third
  domain, so it is neither a leaf nor a node preimage.

Binding: opening slot p to an id and content other than the committed ones needs a SHA-256 collision
(or second preimage). Hiding: every non-empty leaf is a hash of a 256-bit secret salt, so the root
reveals N and the depth, nothing about the ids, keys or values (in the random-oracle model).

Why not a library: PyPI's maintained Merkle packages (pymerkle: an append-only log with inclusion and
consistency proofs; merkly, merkletreepy: static trees) do not update a leaf in place at a fixed
position, which is what a deletion is; sparse-merkle-tree keys slots by a hash of the key (a different,
unmaintained design). Sixty lines of hashlib are easier to audit than an adapter.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

LEAF, NODE, EMPTY_TAG, CONTENT = b"\x00", b"\x01", b"\x02", b"\x03"
EMPTY = hashlib.sha256(EMPTY_TAG + b"zkapex-munkey/empty/v1").digest()
HASH_BYTES = 32
SALT_BYTES = 32
MAX_DEPTH = 40  # 2^40 slots: far beyond any memory, and a bound for length-checked parsing
MAX_ID = 2**63 - 1  # instance ids are int64 ≥ 0
COMMITMENT_BYTES = 32 + 8 + 1
STATE_MAGIC = b"MKCS\x01"


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def content_hash(salt: bytes, entry: bytes) -> bytes:
    """``c = H(0x03 ‖ salt ‖ entry_bytes)``: the hiding commitment to one entry."""
    return _sha(CONTENT + salt + entry)


def leaf_hash(instance_id: int, content: bytes) -> bytes:
    """``H(0x00 ‖ id (int64 LE) ‖ c)``."""
    return _sha(LEAF + struct.pack("<q", instance_id) + content)


def node_hash(left: bytes, right: bytes) -> bytes:
    """``H(0x01 ‖ left ‖ right)``."""
    return _sha(NODE + left + right)


def depth_for(n: int) -> int:
    """The depth of a tree with at least ``n`` slots (a power of two, at least one slot)."""
    return max(int(n) - 1, 0).bit_length()


class CommitmentError(ValueError):
    """A commitment or a client's committed state is malformed or does not match the memory."""


@dataclass(frozen=True)
class Commitment:
    """What the provider registers: the Merkle root, the number of entries N and the tree depth."""

    root: bytes
    count: int
    depth: int

    def __post_init__(self):
        if not isinstance(self.root, bytes) or len(self.root) != HASH_BYTES:
            raise CommitmentError(f"commitment: the root must be {HASH_BYTES} bytes")
        if not (0 <= self.depth <= MAX_DEPTH) or not (0 <= self.count <= 2**self.depth):
            raise CommitmentError(f"commitment: count {self.count} does not fit depth {self.depth}")

    def to_bytes(self) -> bytes:
        return self.root + struct.pack("<QB", self.count, self.depth)

    @staticmethod
    def from_bytes(data: bytes) -> Commitment:
        if not isinstance(data, (bytes, bytearray)) or len(data) != COMMITMENT_BYTES:
            raise CommitmentError(f"commitment: expected {COMMITMENT_BYTES} bytes, got {len(data)}")
        count, depth = struct.unpack("<QB", data[32:])
        return Commitment(bytes(data[:32]), count, depth)

    def hex(self) -> str:
        return self.to_bytes().hex()


class MerkleTree:
    """A complete binary tree over 2^depth leaf hashes; every level is kept (level 0: the leaves)."""

    def __init__(self, leaves: list[bytes]):
        size = len(leaves)
        if size < 1 or size & (size - 1):
            raise CommitmentError(f"a Merkle tree needs a power-of-two number of leaves, got {size}")
        self.levels: list[list[bytes]] = [list(leaves)]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)])

    @property
    def depth(self) -> int:
        return len(self.levels) - 1

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def copy(self) -> MerkleTree:
        new = MerkleTree.__new__(MerkleTree)
        new.levels = [list(level) for level in self.levels]
        return new

    def set_leaves(self, updates: dict[int, bytes]) -> None:
        """Set leaves (position → hash) and rehash their ancestors only (O(k log N))."""
        touched = set()
        for pos, h in updates.items():
            self.levels[0][pos] = h
            touched.add(pos)
        for lvl in range(1, len(self.levels)):
            touched = {p >> 1 for p in touched}
            below = self.levels[lvl - 1]
            for p in touched:
                self.levels[lvl][p] = node_hash(below[2 * p], below[2 * p + 1])

    def siblings(self, positions: Iterable[int]) -> list[bytes]:
        """The multi-proof of these leaf positions: :func:`needed_siblings`' hashes, in that order."""
        return [self.levels[lvl][p] for lvl, p in needed_siblings(sorted(set(positions)), self.depth)]


def needed_siblings(positions: list[int], depth: int) -> list[tuple[int, int]]:
    """(level, position) of every hash a verifier needs, beyond the leaves at ``positions``, to rebuild
    the root: level by level from the leaves, positions ascending. A function of the positions only, so
    prover and verifier agree on it and a proof carries exactly these hashes (one authentication path
    per leaf, shared nodes sent once)."""
    out = []
    known = positions
    for lvl in range(depth):
        have = set(known)
        out.extend((lvl, s) for s in sorted({p ^ 1 for p in known} - have))
        known = sorted({p >> 1 for p in known})
    return out


@dataclass
class MemoryCommitment:
    """The client's side of a commitment (secret: never sent): the slots, the salts and the tree.

    ``slots[p]`` is ``(id, salt, content)`` for an occupied slot and None for an empty one. Build it with
    :func:`commit_memory`; :func:`~zkapex_flwr.munkey.deletion.prove_deletion` returns the next one."""

    slots: list[tuple[int, bytes, bytes] | None]
    tree: MerkleTree
    _position: dict[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def commitment(self) -> Commitment:
        return Commitment(self.tree.root, self.count, self.tree.depth)

    @property
    def count(self) -> int:
        return len(self.slots) - self.slots.count(None)

    def position(self) -> dict[int, int]:
        """Instance id → slot (computed once; the slots of a state never change)."""
        if self._position is None:
            self._position = {s[0]: p for p, s in enumerate(self.slots) if s is not None}
        return self._position

    def ids(self) -> list[int]:
        return [s[0] for s in self.slots if s is not None]

    @property
    def salts(self) -> dict[int, bytes]:
        return {s[0]: s[1] for s in self.slots if s is not None}

    def mismatches(self, memory) -> list[int]:
        """Ids whose committed content differs from ``memory`` (and ids only one side holds): [] when the
        memory is exactly the committed set. A client checks it before proving."""
        rows = {int(i): r for r, i in enumerate(memory.ids.tolist())}
        bad = sorted(set(rows) ^ set(self.position()))
        for s in self.slots:
            if s is not None and s[0] in rows and content_hash(s[1], memory.entry_bytes(rows[s[0]])) != s[2]:
                bad.append(s[0])
        return sorted(set(bad))

    def to_bytes(self) -> bytes:
        """Canonical bytes for the node's own storage (Context / disk): depth, then the occupied slots."""
        parts = [STATE_MAGIC, struct.pack("<BQ", self.tree.depth, self.count)]
        for p, s in enumerate(self.slots):
            if s is not None:
                parts.append(struct.pack("<Qq", p, s[0]) + s[1] + s[2])
        return b"".join(parts)

    @staticmethod
    def from_bytes(data: bytes) -> MemoryCommitment:
        head = len(STATE_MAGIC) + 9
        row = 16 + SALT_BYTES + HASH_BYTES
        if len(data) < head or data[: len(STATE_MAGIC)] != STATE_MAGIC:
            raise CommitmentError("committed state: bad header")
        depth, count = struct.unpack("<BQ", data[len(STATE_MAGIC) : head])
        if depth > MAX_DEPTH or len(data) != head + count * row:
            raise CommitmentError(f"committed state: {len(data)} bytes do not hold {count} slots at depth {depth}")
        slots: list = [None] * (2**depth)
        for k in range(count):
            off = head + k * row
            p, i = struct.unpack("<Qq", data[off : off + 16])
            if p >= len(slots) or slots[p] is not None:
                raise CommitmentError(f"committed state: slot {p} out of range or repeated")
            slots[p] = (i, data[off + 16 : off + 16 + SALT_BYTES], data[off + 16 + SALT_BYTES : off + row])
        return MemoryCommitment(slots, MerkleTree([EMPTY if s is None else leaf_hash(s[0], s[2]) for s in slots]))


def commit_entries(entries: dict[int, bytes], salts: dict[int, bytes] | None = None) -> MemoryCommitment:
    """Commit id → entry bytes (the memory-free core of :func:`commit_memory`)."""
    salts = dict(salts or {})
    ids = sorted(entries)
    slots: list = []
    for i in ids:
        if not 0 <= i <= MAX_ID:
            raise CommitmentError(f"instance id {i} is not an int64 ≥ 0")
        salt = salts.get(i) or secrets.token_bytes(SALT_BYTES)
        if len(salt) != SALT_BYTES:
            raise CommitmentError(f"the salt of id {i} is {len(salt)} bytes, expected {SALT_BYTES}")
        slots.append((i, salt, content_hash(salt, entries[i])))
    slots += [None] * (2 ** depth_for(len(ids)) - len(ids))
    return MemoryCommitment(slots, MerkleTree([EMPTY if s is None else leaf_hash(s[0], s[2]) for s in slots]))


def commit_memory(memory, salts: dict[int, bytes] | None = None) -> MemoryCommitment:
    """Commit a :class:`~zkapex_flwr.munkey.memory.KeyValueMemory`: fresh salts unless given (by id).

    Returns the client's secret :class:`MemoryCommitment`; send only ``.commitment`` (a
    :class:`Commitment`). Cost: N content hashes + 2^depth node hashes (N = 5 000: ~15 ms)."""
    ids = [int(i) for i in memory.ids.tolist()]
    if len(set(ids)) != len(ids):
        raise CommitmentError("the memory holds a duplicate instance id")
    return commit_entries(dict(zip(ids, all_entry_bytes(memory))), salts)


def all_entry_bytes(memory) -> list[bytes]:
    """``[memory.entry_bytes(i) for i in range(len(memory))]``, encoded in one numpy pass (20× faster).

    The layout is :meth:`KeyValueMemory.entry_bytes`'; the first and last rows are checked against it, so a
    change of that encoding fails loudly here instead of silently committing other bytes."""
    import numpy as np

    n = len(memory)
    if n == 0:
        return []
    keys = memory.keys.detach().cpu().numpy().astype("<f4", copy=False)
    values = memory.values.detach().cpu().numpy().astype("<f4", copy=False)
    head = np.empty((n, 4), dtype="<i8")
    head[:, 0] = memory.ids.detach().cpu().numpy()
    head[:, 1] = memory.labels.detach().cpu().numpy()
    head[:, 2], head[:, 3] = keys.shape[1], values.shape[1]
    rows = np.concatenate([head.view(np.uint8), keys.view(np.uint8), values.view(np.uint8)], axis=1)
    out = [r.tobytes() for r in rows]
    for i in {0, n - 1}:
        if out[i] != memory.entry_bytes(i):
            raise CommitmentError(f"row {i}: the bulk encoding differs from memory.entry_bytes (layout changed?)")
    return out


def recommit_in_place(state: MemoryCommitment, memory) -> MemoryCommitment:
    """The commitment of ``memory`` at ``state``'s fixed positions (its salts; new ids take the first empty
    slots with fresh salts). What a client that changes its memory without a deletion would have to send:
    used by the cheats, whose roots the verifier then refuses."""
    rows = {int(i): r for r, i in enumerate(memory.ids.tolist())}
    pos = state.position()
    slots: list = [None] * len(state.slots)
    for i, p in pos.items():
        if i in rows:
            salt = state.slots[p][1]
            slots[p] = (i, salt, content_hash(salt, memory.entry_bytes(rows[i])))
    free = iter(p for p in range(len(slots)) if slots[p] is None and state.slots[p] is None)
    for i in sorted(set(rows) - set(pos)):
        p = next(free, None)
        if p is None:
            raise CommitmentError("no empty slot left for a new entry")
        salt = secrets.token_bytes(SALT_BYTES)
        slots[p] = (i, salt, content_hash(salt, memory.entry_bytes(rows[i])))
    tree = state.tree.copy()
    tree.set_leaves(
        {p: (EMPTY if s is None else leaf_hash(s[0], s[2])) for p, s in enumerate(slots) if s != state.slots[p]}
    )
    return MemoryCommitment(slots, tree)
