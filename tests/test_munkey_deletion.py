"""MUNKEY verified deletion: the commitment, the prover, the verifier and every dishonest client.

Each cheat in zkapex_flwr.munkey.cheats runs against the real verifier, with the real prover's honest
proof of the same request as the positive control; malformed and tampered proof bytes are fuzzed.
"""

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zkapex_flwr.munkey import cheats
from zkapex_flwr.munkey.commitment import (
    EMPTY,
    Commitment,
    CommitmentError,
    MemoryCommitment,
    MerkleTree,
    commit_entries,
    commit_memory,
    leaf_hash,
    needed_siblings,
    node_hash,
)
from zkapex_flwr.munkey.deletion import (
    HEADER_BYTES,
    OPENING_BYTES,
    REASONS,
    DeletionBinding,
    DeletionError,
    DeletionProof,
    MalformedProof,
    prove_deletion,
    verify_deletion,
)
from zkapex_flwr.munkey.memory import KeyValueMemory

torch.set_num_threads(1)
BINDING = DeletionBinding.for_node("r1", "nonce-1", 101)


def make_memory(n: int = 40, d: int = 8, seed: int = 0) -> KeyValueMemory:
    g = torch.Generator().manual_seed(seed)
    mem = KeyValueMemory(d, 4)
    ids = torch.randperm(10 * n, generator=g)[:n]
    labels = torch.arange(n) % 4
    mem.add(ids, torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1), torch.eye(4)[labels], labels)
    return mem


def task(mem, ids, binding=BINDING, **kw) -> cheats.DeletionTask:
    state = commit_memory(mem)
    return cheats.DeletionTask(state, mem, list(ids), binding, first_state=state, **kw)


def judge(reply: cheats.DeletionReply, old: Commitment, ids, binding=BINDING, **kw):
    return verify_deletion(old, reply.new, reply.proof, ids, binding, **kw)


# ------------------------------------------------------------------------------------ the commitment
def test_tree_shape_padding_and_domain_separation():
    mem = make_memory(5)
    state = commit_memory(mem)
    assert state.tree.depth == 3 and len(state.slots) == 8 and state.count == 5
    assert state.ids() == sorted(mem.ids.tolist())  # slots sorted by instance id
    assert state.tree.levels[0][5:] == [EMPTY] * 3
    assert state.commitment == Commitment.from_bytes(state.commitment.to_bytes())
    # a leaf is never a node: same 64 bytes under the two tags hash differently
    a, b = state.tree.levels[0][0], state.tree.levels[0][1]
    assert node_hash(a, b) != leaf_hash(0, a)
    assert commit_memory(KeyValueMemory(3, 2)).tree.depth == 0  # an empty memory: one EMPTY slot
    assert MerkleTree([EMPTY]).root == EMPTY


def test_salts_hide_and_bind():
    mem = make_memory(16)
    a, b = commit_memory(mem), commit_memory(mem)
    assert a.commitment.root != b.commitment.root  # fresh salts: the same memory, unlinkable roots
    again = commit_memory(mem, a.salts)
    assert again.commitment == a.commitment  # the client can reproduce its commitment from its salts
    assert again.mismatches(mem) == []
    mem.values[3] += 1.0  # any change of a row changes its leaf
    assert again.mismatches(mem) == [int(mem.ids[3])]
    assert commit_memory(mem, a.salts).commitment != a.commitment


def test_state_roundtrip_and_bad_state():
    state = commit_memory(make_memory(20))
    back = MemoryCommitment.from_bytes(state.to_bytes())
    assert back.commitment == state.commitment and back.slots == state.slots
    for bad in (b"", state.to_bytes()[:-1], b"XXXX" + state.to_bytes()[4:]):
        with pytest.raises(CommitmentError):
            MemoryCommitment.from_bytes(bad)
    with pytest.raises(CommitmentError):
        commit_entries({-1: b"x"})


# ------------------------------------------------------------------------------- honest deletion
@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (5, 2), (40, 1), (40, 7), (64, 64), (64, 0)])
def test_honest_deletion_is_compliant_and_matches_a_recommit(n, k):
    mem = make_memory(n)
    t = task(mem, mem.ids.tolist()[:: max(n // max(k, 1), 1)][:k])
    old = t.state.commitment
    reply = cheats.honest(t)
    v = judge(reply, old, t.ids)
    assert v.ok and v.reason == "compliant", v
    assert sorted(v.ids) == sorted(t.ids) and v.verify_ms > 0
    assert reply.new.count == n - k and reply.state.commitment == reply.new
    assert reply.state.mismatches(mem) == []  # the live memory is exactly the committed set
    siblings = needed_siblings(sorted(t.state.position()[i] for i in t.ids), old.depth)
    assert len(siblings) <= k * old.depth  # shared path nodes are sent once
    assert len(reply.proof) == HEADER_BYTES + k * OPENING_BYTES + 32 * len(siblings)


def test_a_chain_of_deletions_and_class_requests():
    mem = make_memory(40)
    state = commit_memory(mem)
    gone = mem.delete_class(2).tolist()  # the client maps class 2 to its ids
    proof, state2 = prove_deletion(state, gone, BINDING)
    # a class request over client-held ids: the client names the ids; none of the provider's may be among them
    assert verify_deletion(state.commitment, proof.new, proof.to_bytes(), None, BINDING, extra_allowed=True).ok
    v = verify_deletion(
        state.commitment, proof.new, proof.to_bytes(), (), BINDING, extra_allowed=True, protected_ids=gone[:1]
    )
    assert v.reason == "wrong-ids" and "provider-held" in v.detail
    b2 = DeletionBinding.for_node("r2", "nonce-2", 101)
    nxt = mem.ids.tolist()[:3]
    proof2, state3 = prove_deletion(state2, nxt, b2)
    assert verify_deletion(state2.commitment, proof2.new, proof2.to_bytes(), nxt, b2).ok
    assert state3.count == 40 - len(gone) - 3
    with pytest.raises(DeletionError):
        prove_deletion(state3, nxt[:1], b2)  # already deleted: nothing to open


# ------------------------------------------------------------------------------------ the cheats
@pytest.mark.parametrize("name", [n for n in cheats.BEHAVIOURS if n not in ("replay", "stale-root")])
def test_every_cheat_gets_its_reason(name):
    mem = make_memory(40)
    ids = mem.ids.tolist()[5:9]
    control = task(make_memory(40), ids)  # the positive control: the same request, answered honestly
    assert judge(cheats.honest(control), control.state.commitment, ids).ok
    t = task(mem, ids)
    old = t.state.commitment
    before = mem.state()
    v = judge(cheats.BEHAVIOURS[name](t), old, ids)
    assert v.reason == cheats.EXPECTED[name], v
    assert v.reason in REASONS and v.ok == (v.reason == "compliant")
    if name in ("keep-key", "omit-id", "wrong-ids"):
        assert ids[0] in mem  # the client really still holds a requested row
    if name == "hidden-copy":
        assert torch.equal(mem.keys, before["keys"])  # compliant, yet every forgotten row is still there
    if name in ("reinsert", "edit-values"):  # the forgotten keys are back in the live memory
        gone = before["keys"][torch.isin(before["ids"], torch.tensor(ids))]
        assert all(bool((mem.keys == key).all(-1).any()) for key in gone)


def test_keep_key_names_the_kept_id_and_claiming_the_old_root_is_kept_key():
    mem = make_memory(40)
    ids = mem.ids.tolist()[10:13]
    t = task(mem, ids)
    v = judge(cheats.keep_key(t), t.state.commitment, ids)
    assert v.reason == "kept-key" and str(ids[0]) in v.detail
    t2 = task(make_memory(40), ids)
    proof, _ = prove_deletion(t2.state, ids, BINDING)
    same = Commitment(t2.state.commitment.root, t2.state.count - 3, t2.state.tree.depth)
    forged = DeletionProof(proof.binding, proof.old, same, proof.openings, proof.siblings)
    assert verify_deletion(t2.state.commitment, same, forged.to_bytes(), ids, BINDING).reason == "kept-key"


def test_reinsert_with_an_honest_count_is_count_mismatch():
    mem = make_memory(40)
    ids = mem.ids.tolist()[:2]
    t = task(mem, ids)
    reply = cheats.reinsert(t)
    real = Commitment(reply.new.root, t.state.count, reply.new.depth)  # N it really holds
    proof = DeletionProof.from_bytes(reply.proof)
    forged = DeletionProof(proof.binding, proof.old, real, proof.openings, proof.siblings).to_bytes()
    assert verify_deletion(t.state.commitment, real, forged, ids, BINDING).reason == "count-mismatch"


def test_replay_and_stale_root_over_two_requests():
    mem = make_memory(40)
    first = task(mem, mem.ids.tolist()[:2])
    r1 = cheats.honest(first)
    assert judge(r1, first.state.commitment, first.ids).ok
    b2 = DeletionBinding.for_node("r2", "nonce-2", 101)
    ids2 = mem.ids.tolist()[:3]
    mk = lambda: cheats.DeletionTask(  # noqa: E731
        r1.state, mem, ids2, b2, history=[(first.state, r1.proof)], first_state=first.state
    )
    assert judge(cheats.honest(cheats.DeletionTask(r1.state, make_memory(1), [], b2)), r1.new, [], b2).ok
    assert judge(cheats.replay(mk()), r1.new, ids2, b2).reason == "replay"
    assert judge(cheats.stale_root(mk()), r1.new, ids2, b2).reason == "stale-root"
    # the same proof for another node, or another round of the same request, is a replay too
    honest2 = cheats.honest(mk())
    assert judge(honest2, r1.new, ids2, b2).ok
    for other in (DeletionBinding.for_node("r2", "nonce-2", 102), DeletionBinding.for_node("r2", "nonce-3", 101)):
        assert judge(honest2, r1.new, ids2, other).reason == "replay"


def test_wrong_ids_details():
    mem = make_memory(40)
    ids = mem.ids.tolist()[:4]
    t = task(mem, ids)
    proof, _ = prove_deletion(t.state, ids, BINDING)
    data = proof.to_bytes()
    assert "missing" in verify_deletion(t.state.commitment, proof.new, data, ids + [99999], BINDING).detail
    assert "extra" in verify_deletion(t.state.commitment, proof.new, data, ids[1:], BINDING).detail


# --------------------------------------------------------------------------------- malformed bytes
@pytest.fixture(scope="module")
def honest_bundle():
    mem = make_memory(48)
    state = commit_memory(mem)
    ids = mem.ids.tolist()[7:12]
    proof, _ = prove_deletion(state, ids, BINDING)
    return state.commitment, proof, ids


def test_malformed_proofs_get_clear_reasons(honest_bundle):
    old, proof, ids = honest_bundle
    data = proof.to_bytes()
    cases = {
        b"": "shorter",
        data[:-1]: "sibling",
        data + b"\x00": "sibling",
        b"XXXX" + data[4:]: "magic",
        data[:4] + b"\x09" + data[5:]: "version",
        data[: HEADER_BYTES - 4] + struct.pack("<I", 2**31) + data[HEADER_BYTES:]: "openings",
    }
    for bad, word in cases.items():
        v = verify_deletion(old, proof.new, bad, ids, BINDING)
        assert v.reason == "malformed" and word in v.detail, (word, v)
    assert verify_deletion(old, proof.new, "text", ids, BINDING).reason == "malformed"
    assert verify_deletion(old, proof.new, None, ids, BINDING).reason == "malformed"
    # slots must ascend: swap the first two openings
    off = HEADER_BYTES
    swapped = data[:off] + data[off + OPENING_BYTES : off + 2 * OPENING_BYTES] + data[off : off + OPENING_BYTES]
    swapped += data[off + 2 * OPENING_BYTES :]
    assert "ascend" in verify_deletion(old, proof.new, swapped, ids, BINDING).detail
    with pytest.raises(MalformedProof):
        DeletionProof.from_bytes(b"MKDP")


def test_tampered_sibling_or_content_is_an_invalid_opening(honest_bundle):
    old, proof, ids = honest_bundle
    data = bytearray(proof.to_bytes())
    data[-1] ^= 1  # a sibling hash
    assert verify_deletion(old, proof.new, bytes(data), ids, BINDING).reason == "invalid-opening"
    data = bytearray(proof.to_bytes())
    data[HEADER_BYTES + 20] ^= 1  # the first opening's content hash
    assert verify_deletion(old, proof.new, bytes(data), ids, BINDING).reason == "invalid-opening"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_proof_bytes_never_raise_and_never_pass(honest_bundle, data):
    old, proof, ids = honest_bundle
    raw = bytearray(proof.to_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "random"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "insert":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        raw = bytearray(data.draw(st.binary(max_size=600)))
    v = verify_deletion(old, proof.new, bytes(raw), ids, BINDING)
    assert v.reason in REASONS and not v.ok, v  # any change to an honest proof is refused, with a code


def test_verifier_never_raises_on_bad_arguments(honest_bundle):
    old, proof, ids = honest_bundle
    assert verify_deletion("old", proof.new, proof.to_bytes(), ids, BINDING).reason == "malformed"
    assert verify_deletion(old, proof.new, proof.to_bytes(), ["x"], BINDING).reason == "malformed"
    assert verify_deletion(old, proof.new, proof.to_bytes(), ids, BINDING).ok  # the control


def test_backbone_shift_is_compliant_yet_changes_uncommitted_weights():
    from zkapex_flwr.munkey.model import MunkeyViT

    model = MunkeyViT.build((1, 8, 8), 10, seed=0, embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0).freeze()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 1, 8, 8, generator=g), torch.arange(30) % 10
    model.add_instances(torch.arange(30), x, y)
    t = task(model.memory, [4, 14, 24])
    old = t.state.commitment
    reply = cheats.honest(t)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    cheats.backbone_shift(model, x[[4, 14, 24]], y[[4, 14, 24]], steps=5)
    assert judge(reply, old, t.ids).ok  # the proof is about the memory alone
    assert reply.state.mismatches(model.memory) == []
    assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert not any(p.requires_grad for p in model.backbone.parameters())
