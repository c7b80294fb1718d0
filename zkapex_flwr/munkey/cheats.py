"""Dishonest MUNKEY clients: each a real code path whose reply goes to the real verifier (docs/munkey-proofs.md).

A behaviour is a function ``behaviour(task: DeletionTask) -> DeletionReply``: it sees what an honest
client sees when a deletion request arrives (its committed state, its live memory, the ids the request
maps to, the binding, what it sent before) and returns the commitment and proof bytes it sends. It may
change the live memory (what the model then predicts with) — that is the point of most cheats. The
verifier and the registry are never touched.

======================  =====================================================  ===================
behaviour               what the client does                                   verdict
======================  =====================================================  ===================
``honest``              deletes the rows, proves it                            compliant
``keep_key``            opens every id, but keeps one row and claims a root    kept-key
                        that still commits it
``omit_id``             deletes and proves all ids but one, keeps that one     wrong-ids
``wrong_ids``           deletes another (unrequested) row instead of one of    wrong-ids
                        the requested ones
``reinsert``            deletes the rows, re-adds each under a fresh id        root-mismatch
``edit_values``         deletes the rows, overwrites the nearest kept rows     root-mismatch
                        with the forgotten keys/values (re-encoding them)
``replay``              sends the proof it sent for an earlier request         replay
``stale_root``          proves from the state it committed first (ignoring a   stale-root
                        deletion the provider already registered)
``hidden_copy``         proves an honest deletion, keeps the rows in the live  compliant (missed)
                        memory: the commitment is not the memory it uses
======================  =====================================================  ===================

What the scheme cannot catch is state outside the commitment. ``hidden_copy`` keeps the forgotten rows
verbatim; :func:`backbone_shift` moves the forgotten instances' signal into the backbone weights (which
the memory commitment does not cover) by fine-tuning on them after an honest deletion. Both are
compliant to the verifier; the benchmark measures how much forgotten signal they keep.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .commitment import Commitment, MemoryCommitment, recommit_in_place
from .deletion import DeletionBinding, DeletionProof, prove_deletion


@dataclass
class DeletionTask:
    """What a client holds when a deletion request arrives."""

    state: MemoryCommitment  # the committed state the provider has registered (if the client is in sync)
    memory: object  # the live KeyValueMemory the model predicts with
    ids: list[int]  # the ids the request maps to on this client
    binding: DeletionBinding
    history: list[tuple[MemoryCommitment, bytes]] = field(default_factory=list)  # earlier (pre-state, proof sent)
    first_state: MemoryCommitment | None = None  # the state committed at commit time


@dataclass
class DeletionReply:
    """What the client sends: its new commitment and the proof bytes; ``state`` is what it keeps."""

    new: Commitment
    proof: bytes
    state: MemoryCommitment | None = None  # the client's next committed state (None: it has none to keep)


Behaviour = Callable[[DeletionTask], DeletionReply]


def honest(task: DeletionTask) -> DeletionReply:
    """Delete the rows and prove it (what :class:`~zkapex_flwr.client.munkey.MunkeyMod` does)."""
    proof, new_state = prove_deletion(task.state, task.ids, task.binding)
    if task.ids:
        task.memory.delete(task.ids)
    return DeletionReply(proof.new, proof.to_bytes(), new_state)


def _relabel(proof: DeletionProof, new: Commitment) -> bytes:
    """The same openings and paths with another claimed new commitment (well-formed bytes)."""
    return DeletionProof(proof.binding, proof.old, new, proof.openings, proof.siblings).to_bytes()


def keep_key(task: DeletionTask) -> DeletionReply:
    """Open every requested id as deleted, keep the first one's row, and claim the root that still commits it
    (with the count an honest deletion would have)."""
    gone = task.ids[1:]  # task.ids[0] stays
    proof, _ = prove_deletion(task.state, task.ids, task.binding)
    partial, state = prove_deletion(task.state, gone, task.binding)
    if gone:
        task.memory.delete(gone)
    new = Commitment(partial.new.root, task.state.count - len(task.ids), partial.new.depth)
    return DeletionReply(new, _relabel(proof, new), state)


def omit_id(task: DeletionTask) -> DeletionReply:
    """Delete and prove all requested ids but the first (an honest proof of a smaller deletion)."""
    gone = task.ids[1:]
    proof, state = prove_deletion(task.state, gone, task.binding)
    if gone:
        task.memory.delete(gone)
    return DeletionReply(proof.new, proof.to_bytes(), state)


def wrong_ids(task: DeletionTask) -> DeletionReply:
    """Keep the first requested row; delete (and prove) another row of the memory in its place."""
    other = next(i for i in task.state.ids() if i not in set(task.ids))
    ids = [other] + task.ids[1:]
    proof, state = prove_deletion(task.state, ids, task.binding)
    task.memory.delete(ids)
    return DeletionReply(proof.new, proof.to_bytes(), state)


def _rows(memory, ids) -> dict[str, torch.Tensor]:
    idx = memory.index_of(ids)
    return {
        "keys": memory.keys[idx].clone(),
        "values": memory.values[idx].clone(),
        "labels": memory.labels[idx].clone(),
    }


def reinsert(task: DeletionTask) -> DeletionReply:
    """Delete the rows, then add them back under fresh ids; prove the deletion and send the root of the
    memory it actually holds (with the count the provider expects)."""
    rows = _rows(task.memory, task.ids)
    proof, after = prove_deletion(task.state, task.ids, task.binding)
    task.memory.delete(task.ids)
    held = set(task.state.ids())
    fresh, nxt = [], max(held, default=0) + 1
    while len(fresh) < len(task.ids):
        if nxt not in held:
            fresh.append(nxt)
        nxt += 1
    task.memory.add(fresh, rows["keys"], rows["values"], rows["labels"])
    state = recommit_in_place(after, task.memory)
    new = Commitment(state.tree.root, proof.new.count, state.tree.depth)
    return DeletionReply(new, _relabel(proof, new), state)


def edit_values(task: DeletionTask, neighbours: int = 3) -> DeletionReply:
    """Delete the rows, and re-encode each forgotten instance into the kept rows nearest to it: their keys
    and values are overwritten with the forgotten key and value, so a query for the forgotten instance
    still finds it. Sends the root of the memory it holds."""
    rows = _rows(task.memory, task.ids)
    proof, after = prove_deletion(task.state, task.ids, task.binding)
    task.memory.delete(task.ids)
    keys, values = task.memory.keys.clone(), task.memory.values.clone()
    for j in range(len(task.ids)):
        near = (keys @ rows["keys"][j]).topk(min(neighbours, len(keys))).indices
        keys[near], values[near] = rows["keys"][j], rows["values"][j]
    task.memory.keys, task.memory.values = keys.contiguous(), values.contiguous()
    state = recommit_in_place(after, task.memory)
    new = Commitment(state.tree.root, proof.new.count, state.tree.depth)
    return DeletionReply(new, _relabel(proof, new), state)


def replay(task: DeletionTask) -> DeletionReply:
    """Send the proof sent for the previous request again (its new commitment with it); delete nothing."""
    if not task.history:
        raise RuntimeError("replay: this client has sent no earlier proof to replay")
    _, sent = task.history[-1]
    old = DeletionProof.from_bytes(sent)
    return DeletionReply(old.new, sent, task.state)


def stale_root(task: DeletionTask) -> DeletionReply:
    """Prove this request from the state committed at commit time, as if no earlier deletion had happened
    (the rows an earlier request removed are back in that state's root)."""
    first = task.first_state or task.state
    proof, state = prove_deletion(first, task.ids, task.binding)
    return DeletionReply(proof.new, proof.to_bytes(), state)


def hidden_copy(task: DeletionTask) -> DeletionReply:
    """Prove an honest deletion but keep the rows in the live memory (a copy outside the commitment).
    The verifier cannot see it: the proof is about the committed set, not the memory the model reads."""
    proof, new_state = prove_deletion(task.state, task.ids, task.binding)
    return DeletionReply(proof.new, proof.to_bytes(), new_state)


def garbage(task: DeletionTask) -> DeletionReply:
    """Random bytes for a proof (and the old commitment as the new one)."""
    return DeletionReply(task.state.commitment, secrets.token_bytes(200), task.state)


def backbone_shift(model, x, y, *, steps: int = 30, lr: float = 1e-3, seed: int = 0) -> None:
    """After an honest deletion, fine-tune ``model.backbone`` on the forgotten instances ``(x, y)`` (memory
    frozen, without their rows), so the model still predicts them from weights no commitment covers.
    In place; the deletion proof stays honest and compliant."""
    import torch.nn.functional as F

    params = list(model.backbone.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(32, len(x)),), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    model.eval()


BEHAVIOURS: dict[str, Behaviour] = {
    "honest": honest,
    "keep-key": keep_key,
    "omit-id": omit_id,
    "wrong-ids": wrong_ids,
    "reinsert": reinsert,
    "edit-values": edit_values,
    "replay": replay,
    "stale-root": stale_root,
    "hidden-copy": hidden_copy,
    "garbage": garbage,
}
# The verdict the real verifier gives each behaviour (tests/test_munkey_deletion.py checks every one)
EXPECTED = {
    "honest": "compliant",
    "keep-key": "kept-key",
    "omit-id": "wrong-ids",
    "wrong-ids": "wrong-ids",
    "reinsert": "root-mismatch",
    "edit-values": "root-mismatch",
    "replay": "replay",
    "stale-root": "stale-root",
    "hidden-copy": "compliant",  # not caught: state outside the commitment (docs/munkey-proofs.md §4)
    "garbage": "malformed",
}
UNCATCHABLE = ("hidden-copy", "backbone-shift")
