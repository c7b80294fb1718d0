"""Property-based fuzzing of everything the provider parses from clients.

Bundle bytes, the records and keys of ``train.unlearn`` / ``train.commit`` replies, oversized proofs,
non-finite metrics, unknown circuit ids and registry entries with commitments of the wrong length: each
is a ``malformed`` verdict (or a failed commit) with a message that names the problem, never an
exception, and a provider round with hostile clients still ends with its honest clients compliant.
The real EZKL circuit and an honest bundle are built once per module (d=16, K=2, one step per proof).
"""

import io
import json
import struct
from dataclasses import dataclass

import numpy as np
import pytest
import test_flower_protocol as tfp  # helpers of the in-process provider round (module attribute: not re-collected)
import test_proof as tp  # the small model and Fisher of the proof tests
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from zkapex_flwr.proof import ClientProver, ProofBundle, Verifier
from zkapex_flwr.proof.bundle import MAGIC, MAX_BUNDLE_BYTES, MAX_PROOF_BYTES, Proof, Slot, int_to_felt
from zkapex_flwr.proof.cheats import cheat_bundle
from zkapex_flwr.proof.commitments import BlockCommitments, MalformedCommitments
from zkapex_flwr.protocol import (
    COMMIT,
    REASONS,
    UNLEARN,
    CommitReply,
    ProtocolError,
    UnlearnReply,
    UnlearnRequest,
    reply_metrics,
)
from zkapex_flwr.unlearning import BlockLayout, UnlearningMask

pytestmark = [
    pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS"),
    pytest.mark.usefixtures("task_identity"),
]  # Messages built outside a Flower runtime (conftest.py)

FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OTHER_CIRCUIT = "0123456789abcdef" * 2  # another circuit of the provider's menu (well-formed, not ours)


@dataclass(repr=False)  # hypothesis prints the fixture of a failing example
class World:
    prover: ClientProver
    mask: UnlearningMask
    data: bytes  # an honest bundle for request "r1"
    verifier: Verifier
    menu: set

    def verdict(self, data: bytes):
        """The provider's verdict on ``data``; checks what holds for every input."""
        v = self.verifier.verify(data, self.prover.registry, self.mask, menu=self.menu, request_id="r1")
        assert v.reason in REASONS
        if v.reason != "compliant":
            assert v.detail.strip(), v
        if data != self.data:
            assert v.reason != "compliant", "a changed bundle was accepted"
        return v


@pytest.fixture(scope="module")
def world() -> World:
    model = tp.Tiny(0)
    layout = BlockLayout.from_model(model, 16)
    prover = ClientProver.register(model, layout, tp.fisher_for(layout, 0), damping=0.05)
    mask = UnlearningMask(torch.tensor([3, 2 * 16 + 7]), layout)  # blocks 0 and 2: two one-step proofs
    w = World(
        prover,
        mask,
        cheat_bundle(prover, mask, "r1", "honest"),
        Verifier(prover.circuit),
        {prover.circuit.circuit_id, OTHER_CIRCUIT},
    )
    assert w.verdict(w.data).reason == "compliant"
    return w


def split(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(data[start : start + hlen]), data[start + hlen :]


def join(header, payload: bytes, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(text)) + text + payload


def rebuilt(w: World, **changes) -> bytes:
    """The honest bundle re-encoded with some of its parsed fields replaced."""
    b = ProofBundle.from_bytes(w.data)
    for k, v in changes.items():
        setattr(b, k, v)
    return b.to_bytes()


# ------------------------------------------------------------------------------ bundle bytes
@settings(max_examples=150, **FUZZ)
@given(st.one_of(st.binary(max_size=3000), st.binary(max_size=600).map(lambda b: MAGIC + b)))
def test_arbitrary_bytes_are_malformed(world, data):
    v = world.verdict(data)
    assert v.reason == "malformed", v


@settings(max_examples=60, **FUZZ)
@given(st.data())
def test_bit_flips_are_never_accepted(world, data):
    n = len(world.data)
    hlen = len(MAGIC) + 4 + struct.unpack_from("<I", world.data, len(MAGIC))[0]
    where = st.one_of(st.integers(0, 8 * hlen - 1), st.integers(0, 8 * n - 1))  # the header half the time
    bits = data.draw(st.lists(where, min_size=1, max_size=3, unique=True))
    mutated = bytearray(world.data)
    for b in bits:
        mutated[b // 8] ^= 1 << (b % 8)
    v = world.verdict(bytes(mutated))
    event(v.reason)
    assert v.reason != "compliant"


@settings(max_examples=60, **FUZZ)
@given(st.data())
def test_truncated_bundle_is_malformed(world, data):
    cut = data.draw(st.integers(0, len(world.data) - 1))
    v = world.verdict(world.data[:cut])
    assert v.reason == "malformed", v
    assert any(w in v.detail for w in ("bad magic", "header", "outside the payload")), v.detail


@settings(max_examples=30, **FUZZ)
@given(st.binary(min_size=1, max_size=200))
def test_extended_bundle_is_malformed(world, extra):
    v = world.verdict(world.data + extra)
    assert v.reason == "malformed" and f"{len(extra)} trailing bytes" in v.detail, v


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 1, 2, 3, 2**31, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 2**40), max_size=4),
    st.lists(st.none() | st.integers(-1, 40), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

# where a mutation lands → words one of which a malformed verdict's message must contain
TARGETS = {
    ("version",): ("version",),
    ("circuit_id",): ("circuit",),
    ("layout",): ("layout",),
    ("request_id",): ("request",),
    ("proofs",): ("proof",),
    ("meta",): ("meta",),
    ("proofs", 0): ("proof 0",),
    ("proofs", 1, "slots"): ("proof 1",),
    ("proofs", 0, "slots", 0): ("slot",),
    ("proofs", 1, "slots", 0, 0): ("slot", "block"),
    ("proofs", 0, "slots", 0, 1): ("slot",),
    ("proofs", 0, "slots", 0, 2): ("slot", "column"),
    ("proofs", 1, "slots", 0, 2, 0): ("slot", "column"),
    ("proofs", 0, "proof"): ("proof 0",),
    ("proofs", 1, "proof", 0): ("proof 1",),
    ("proofs", 0, "proof", 1): ("proof 0",),
    ("proofs", 0, "res"): ("proof 0",),
    ("proofs", 1, "res", 0): ("proof 1",),
    ("proofs", 0, "res", 1): ("proof 0",),
    ("proofs", 1, "res", 2): ("proof 1",),
}


@settings(max_examples=200, **FUZZ)
@given(st.data())
def test_header_mutations_are_refused_naming_the_field(world, data):
    header, payload = split(world.data)
    path = data.draw(st.sampled_from(sorted(TARGETS, key=str)))
    action = data.draw(st.sampled_from(["replace", "delete", "add-key"]))
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "replace":
        value = data.draw(JSON_VALUES)
        assume(not (path == ("meta",) and isinstance(value, dict)))  # meta is informational: any object
        parent[last] = value
        words = TARGETS[path] + ("non-finite number",)  # NaN / Infinity: refused where JSON is parsed
    elif action == "delete":
        del parent[last]
        words = TARGETS[path]
    else:
        container = data.draw(st.sampled_from([header, header["proofs"][0], header["proofs"][1]]))
        container[data.draw(st.sampled_from(["extra", "", "Proofs", "version "]))] = data.draw(JSON_VALUES)
        words = ("unknown field", "non-finite number")
    mutated = join(header, payload)
    assume(mutated != world.data)
    v = world.verdict(mutated)
    event(v.reason)
    assert v.reason != "compliant"
    if v.reason == "malformed":
        assert any(word in v.detail for word in words), (path, action, v.detail)
    else:  # a well-formed bundle that proves something else: another layout, fewer proofs or other slots
        assert action != "add-key" and (last in ("layout", "proofs", 0) or "slots" in path), (path, action, v)


@pytest.mark.parametrize(
    "raw,words",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"version":' + b"9" * 5000 + b"}", "not JSON"),
        (b'{"version":NaN}', "non-finite number NaN"),
        (b'{"version":Infinity}', "non-finite number Infinity"),
        (b'{"version":3,}', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[3]", "not an object"),
        (b'"header"', "not an object"),
        (b'{"version":3.0,"circuit_id":"","layout":"","request_id":"","proofs":[],"meta":{}}', "version 3.0"),
        (b'{"version":true}', "version True"),
    ],
    ids=[
        "deep-nesting",
        "5000-digit-int",
        "nan",
        "infinity",
        "trailing-comma",
        "not-utf8",
        "array",
        "string",
        "float-version",
        "bool-version",
    ],
)
def test_hostile_header_text_is_malformed(world, raw, words):
    v = world.verdict(join(None, b"", raw=raw))
    assert v.reason == "malformed" and words in v.detail, v


# ------------------------------------------------------------------------ sizes and shapes
@settings(max_examples=25, **FUZZ)
@given(st.integers(-3000, 5000).filter(bool), st.sampled_from([0, 1]))
@example(delta=6 * 64 - 1 - 3360, which=1)  # cut inside the 6 input commitments the proof starts with
def test_proof_of_another_length_is_malformed(world, delta, which):
    bundle = ProofBundle.from_bytes(world.data)
    pr = bundle.proofs[which]
    n = len(pr.proof)
    proof = pr.proof + bytes(range(256)) * (delta // 256 + 1) if delta > 0 else pr.proof
    bundle.proofs[which] = Proof(pr.slots, proof[: n + delta], pr.instances)
    v = world.verdict(bundle.to_bytes())
    assert v.reason == "malformed", v
    assert f"proof {which} has {n + delta} bytes" in v.detail and f"proves in {n}" in v.detail, v.detail


def test_oversized_proof_and_bundle_are_malformed(world):
    bundle = ProofBundle.from_bytes(world.data)
    pr = bundle.proofs[0]
    bundle.proofs[0] = Proof(pr.slots, pr.proof + bytes(MAX_PROOF_BYTES), pr.instances)
    v = world.verdict(bundle.to_bytes())
    assert v.reason == "malformed" and "oversized" in v.detail, v
    v = world.verdict(world.data + bytes(MAX_BUNDLE_BYTES))
    assert v.reason == "malformed" and f"exceeds the limit of {MAX_BUNDLE_BYTES}" in v.detail, v


@settings(max_examples=20, **FUZZ)
@given(st.integers(2, 40))
def test_too_many_proofs_are_refused_before_decoding(world, copies):
    bundle = ProofBundle.from_bytes(world.data)
    bundle.proofs = bundle.proofs * copies
    v = world.verdict(bundle.to_bytes())
    # blocks 0 and 2 hold one masked column each: at most 2 · ⌈16 / 2⌉ proofs can be needed
    assert v.reason == ("malformed" if 2 * copies > 16 else "incomplete"), v
    assert ("16" in v.detail) if v.reason == "malformed" else ("proven twice" in v.detail)


@settings(max_examples=30, **FUZZ)
@given(st.sampled_from(["block", "column", "columns", "padding"]), st.integers(0, 2**40))
def test_slots_outside_the_layout_are_malformed(world, kind, n):
    bundle = ProofBundle.from_bytes(world.data)
    sl = bundle.proofs[0].slots[0]
    if kind == "block":
        assume(n >= 8)  # 8 proof units in the layout
        slot, words = Slot(n, sl.step, sl.columns), f"block {n} is outside"
    elif kind == "column":
        assume(n >= 16)
        slot, words = Slot(sl.block, sl.step, (n,)), f"column {n} is outside"
    elif kind == "columns":
        slot, words = Slot(sl.block, sl.step, (0, 1, 2 + n % 14)), "uses 3 columns"
    else:
        slot, words = None, "not proven"  # the only slot of a proof as padding: the block is missing
    bundle.proofs[0].slots[0] = slot
    v = world.verdict(bundle.to_bytes())
    assert v.reason == ("incomplete" if kind == "padding" else "malformed"), v
    assert words in v.detail, v.detail


def test_padding_only_proof_is_malformed(world):
    bundle = ProofBundle.from_bytes(world.data)
    bundle.proofs.append(Proof([None], bundle.proofs[0].proof, bundle.proofs[0].instances))
    v = world.verdict(bundle.to_bytes())
    assert v.reason == "malformed" and "proof 2 proves no step" in v.detail, v


@settings(max_examples=20, **FUZZ)
@given(st.integers(1, 600).filter(lambda n: n != 16))
def test_wrong_residual_count_is_malformed(world, count):
    bundle = ProofBundle.from_bytes(world.data)
    pr = bundle.proofs[1]
    zero = int_to_felt(0)
    bundle.proofs[1] = Proof(pr.slots, pr.proof, [zero] * (2 * count))
    v = world.verdict(bundle.to_bytes())
    assert v.reason == "malformed" and f"proof 1: residual count {count}, the circuit has 16" in v.detail, v


# -------------------------------------------------------------------------------- circuit ids
@settings(max_examples=60, **FUZZ)
@given(
    st.one_of(
        st.text(max_size=70),
        st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=31, max_size=33),
        st.just(OTHER_CIRCUIT),
    )
)
def test_unknown_circuit_id_is_malformed_another_menu_circuit_is_wrong(world, cid):
    assume(cid != world.prover.circuit.circuit_id)
    v = world.verdict(rebuilt(world, circuit_id=cid))
    if cid == OTHER_CIRCUIT:
        assert v.reason == "wrong-circuit", v
    elif len(cid) == 32 and set(cid) <= set("0123456789abcdef"):
        assert v.reason == "malformed" and f"circuit {cid}, which is not in the provider's circuit menu" in v.detail
    else:
        assert v.reason == "malformed" and "is not 32 lowercase hex digits" in v.detail, v
        assert repr(cid)[:20] in v.detail


@pytest.mark.parametrize("cid, reason", [(OTHER_CIRCUIT, "wrong-circuit"), ("fedcba9876543210" * 2, "malformed")])
def test_another_circuits_sizes_do_not_hide_its_id(world, cid, reason):
    """A bundle of another circuit (two steps per proof: twice the residuals, and more proofs than this
    circuit's request can need) is judged by its circuit id, not refused for this circuit's sizes.
    This is what a replaying node sends when its victim's device proves with another circuit. The id is
    judged before any proof is decoded: a foreign bundle is never inflated past this circuit's sizes."""
    bundle = ProofBundle.from_bytes(world.data)
    zero = int_to_felt(0)
    two_step = [Proof([pr.slots[0], None], pr.proof, pr.instances + [zero] * len(pr.instances)) for pr in bundle.proofs]
    bundle.proofs, bundle.circuit_id = two_step * 20, cid  # 40 proofs: this request needs at most 16
    data = bundle.to_bytes()
    undecodable = data[:-1] + bytes([data[-1] ^ 0xFF])  # the last proof's residuals fail zlib's check
    for d in (data, undecodable):
        v = world.verdict(d)
        assert v.reason == reason, v
        assert "residual" not in v.detail and "proofs, the request needs" not in v.detail, v.detail
        if reason == "malformed":
            assert "not in the provider's circuit menu" in v.detail, v.detail
    ours = rebuilt(world)
    ours = ours[:-1] + bytes([ours[-1] ^ 0xFF])  # the same damage under this circuit's id
    assert "residuals are not zlib data" in world.verdict(ours).detail


def test_bundle_for_another_request_is_malformed(world):
    v = world.verdict(rebuilt(world, request_id="r0"))
    assert v.reason == "malformed" and "bundle answers request 'r0', expected 'r1'" in v.detail, v


# -------------------------------------------------------------------- registry entries (commit)
def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def entry_arrays(world) -> dict:
    reg = world.prover.registry
    return {
        "theta": reg.theta,
        "columns": reg.columns,
        "meta": np.frombuffer(f"{reg.circuit_id}|{reg.layout_digest}".encode(), dtype=np.uint8),
    }


@settings(max_examples=100, **FUZZ)
@given(st.one_of(st.binary(max_size=2000), st.binary(max_size=400).map(lambda b: b"PK\x03\x04" + b)))
def test_registry_entry_from_arbitrary_bytes_is_refused(data):
    with pytest.raises(MalformedCommitments, match="registry entry"):
        BlockCommitments.from_bytes(data)


@settings(max_examples=60, **FUZZ)
@given(st.data())
def test_registry_entry_mutations_are_refused_or_exact(world, data):
    """Flips and cuts of a real entry: refused with a message, or parsed (CRC-protected) into the same arrays."""
    good = world.prover.registry.to_bytes()
    mutated = bytearray(good)
    if data.draw(st.booleans()):
        for b in data.draw(st.lists(st.integers(0, 8 * len(good) - 1), min_size=1, max_size=3, unique=True)):
            mutated[b // 8] ^= 1 << (b % 8)
    else:
        mutated = mutated[: data.draw(st.integers(0, len(good) - 1))]
    try:
        entry = BlockCommitments.from_bytes(bytes(mutated))
    except MalformedCommitments as err:
        assert str(err)
        return
    # a flip the archive ignores (a timestamp, the local header's copy of the CRC): the same entry
    reg = world.prover.registry
    assert entry.digest() == reg.digest()


@settings(max_examples=80, **FUZZ)
@given(st.data())
def test_registry_entry_with_wrong_commitment_lengths_is_refused(world, data):
    arrays = entry_arrays(world)
    units, d = arrays["columns"].shape[:2]
    which = data.draw(
        st.sampled_from(
            ["theta-width", "columns-width", "units", "stripes", "dtype", "ndim", "missing", "extra", "meta"]
        )
    )
    word = {
        "theta-width": "θ commitments are",
        "columns-width": "Fisher stripe commitments are",
        "units": "units",
        "stripes": "Fisher stripe commitments have shape",
        "dtype": "uint8",
        "ndim": "dimension",
        "missing": "expected ['columns.npy', 'meta.npy', 'theta.npy']",
        "extra": "expected ['columns.npy', 'meta.npy', 'theta.npy']",
        "meta": "'meta'",
    }[which]
    width = data.draw(st.integers(0, 130).filter(lambda n: n != 64))
    if which == "theta-width":
        arrays["theta"] = np.zeros((units, width), np.uint8)
    elif which == "columns-width":
        arrays["columns"] = np.zeros((units, d, width), np.uint8)
    elif which == "units":
        n = data.draw(st.integers(0, 20).filter(lambda n: n != units))
        arrays["columns"] = np.zeros((n, d, 64), np.uint8)
    elif which == "stripes":
        arrays["columns"] = np.zeros((units, data.draw(st.integers(0, 40).filter(lambda n: n != d)), 64), np.uint8)
    elif which == "dtype":
        key = data.draw(st.sampled_from(["theta", "columns", "meta"]))
        arrays[key] = arrays[key].astype(data.draw(st.sampled_from([np.int8, np.uint16, np.float32, np.int64])))
        word = f"'{key}.npy' is"
    elif which == "ndim":
        key = data.draw(st.sampled_from(["theta", "columns"]))
        arrays[key] = arrays[key].reshape(-1)
        word = f"'{key}.npy' is uint8 of shape"
    elif which == "missing":
        del arrays[data.draw(st.sampled_from(sorted(arrays)))]
    elif which == "extra":
        arrays[data.draw(st.text("abcxyz", min_size=1, max_size=5))] = np.zeros(3, np.uint8)
    else:
        arrays["meta"] = np.frombuffer(data.draw(st.sampled_from([b"", b"no-bar", b"a|b|c", b"\xff|x"])), np.uint8)
    spec = world.prover.circuit.spec
    with pytest.raises(MalformedCommitments) as err:
        BlockCommitments.from_bytes(npz(**arrays)).check_shape(spec, units)
    assert word in str(err.value), str(err.value)


def test_real_registry_entry_round_trips_and_checks(world):
    reg = world.prover.registry
    entry = BlockCommitments.from_bytes(reg.to_bytes())
    entry.check_shape(world.prover.circuit.spec, 8)
    assert entry.digest() == reg.digest()
    with pytest.raises(MalformedCommitments, match=r"θ commitments have shape \(8, 64\), expected \(7, 64\)"):
        entry.check_shape(world.prover.circuit.spec, 7)


# ----------------------------------------------------------------------------- Flower replies
def reply_to(kind: str, content: RecordDict) -> Message:
    req = Message(RecordDict(), dst_node_id=1, message_type=kind)
    req.metadata.__dict__["_message_id"] = "request"
    return Message(content, reply_to=req)


UNLEARN_KEYS = {"request-id": str, "nonce": str, "bundle": bytes}
COMMIT_KEYS = {"registry": bytes, "circuit-id": str, "circuit": str, "layout-digest": str}
CONFIG_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=3),
    st.lists(st.text(max_size=3), max_size=3),
    st.lists(st.binary(max_size=3), min_size=1, max_size=3),
)
METRIC_KEYS = st.sampled_from(["prove-s", "recovery", "masked-weights", "partition-id", "x"])


@st.composite
def hostile_content(draw, keys: dict, honest: dict, weights_word: str):
    """A reply content with one defect drawn, and the words its refusal must contain."""
    cfg, metrics = dict(honest), {"prove-s": 1.5, "masked-weights": 2.0}
    extra_records: dict = {}
    kind = draw(
        st.sampled_from(
            [
                "missing-config",
                "missing-key",
                "wrong-type",
                "extra-key",
                "array-record",
                "non-finite-metric",
                "list-metric",
                "config-as-metric",
                "metrics-as-config",
                "extra-record",
            ]
        )
    )
    key = draw(st.sampled_from(sorted(keys)))
    if kind == "missing-config":
        return RecordDict({"metrics": MetricRecord(metrics)}), "no 'zkapex' ConfigRecord"
    if kind == "missing-key":
        del cfg[key]
        words = f"missing '{key}'"
    elif kind == "wrong-type":
        value = draw(CONFIG_VALUES.filter(lambda v: not isinstance(v, keys[key])))
        cfg[key] = value
        words = f"'{key}' must be {keys[key].__name__}, got {type(value).__name__}"
    elif kind == "extra-key":
        name = draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in keys))
        cfg[name] = draw(CONFIG_VALUES)
        words = "unexpected key(s)"
    elif kind == "array-record":
        extra_records[draw(st.sampled_from(["arrays", "leak", "zkapex-w"]))] = ArrayRecord([np.zeros(3, np.float32)])
        words = weights_word
    elif kind == "non-finite-metric":
        name = draw(METRIC_KEYS)
        metrics[name] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**400]))
        words = f"metric '{name}' is"
    elif kind == "list-metric":
        name = draw(METRIC_KEYS)
        metrics[name] = draw(st.lists(st.floats(0, 1), min_size=1, max_size=3))
        words = f"metric '{name}' is a list"
    elif kind == "config-as-metric":
        return (
            RecordDict({"zkapex": MetricRecord({"x": 1.0}), "metrics": MetricRecord(metrics)}),
            "'zkapex' is a MetricRecord",
        )
    elif kind == "metrics-as-config":
        return RecordDict(
            {"zkapex": ConfigRecord(cfg), "metrics": ConfigRecord({"prove-s": "1"})}
        ), "'metrics' is a ConfigRecord"
    else:
        name = draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in ("zkapex", "metrics")))
        extra_records[name] = draw(st.sampled_from([ConfigRecord({"a": 1}), MetricRecord({"a": 1.0})]))
        words = f"unexpected record {name!r}"
    return RecordDict({"zkapex": ConfigRecord(cfg), "metrics": MetricRecord(metrics), **extra_records}), words


@settings(max_examples=150, **FUZZ)
@given(
    hostile_content(
        UNLEARN_KEYS, {"request-id": "r1", "nonce": "n", "bundle": b"x"}, "an unlearning reply must never hold weights"
    )
)
def test_hostile_unlearn_reply_is_refused_naming_the_problem(case):
    content, words = case
    msg = reply_to(UNLEARN, content)
    with pytest.raises(ProtocolError) as err:
        UnlearnReply.from_message(msg)
    assert words in str(err.value) and str(err.value).startswith("train.unlearn reply: "), str(err.value)
    assert all(np.isfinite(v) for v in reply_metrics(msg).values())  # what the ledger row records


@settings(max_examples=150, **FUZZ)
@given(
    hostile_content(
        COMMIT_KEYS,
        {
            "registry": b"PK",
            "circuit-id": OTHER_CIRCUIT,
            "circuit": '{"d":16,"group":1,"scale":16,"slots":2,"steps":1}',
            "layout-digest": "l",
        },
        "a commit reply must never hold weights",
    )
)
def test_hostile_commit_reply_is_refused_naming_the_problem(case):
    content, words = case
    with pytest.raises(ProtocolError) as err:
        CommitReply.from_message(reply_to(COMMIT, content))
    assert words in str(err.value) and str(err.value).startswith("train.commit reply: "), str(err.value)


@settings(max_examples=100, **FUZZ)
@given(
    st.one_of(
        st.text(max_size=60),
        st.builds(
            json.dumps,
            st.dictionaries(
                st.sampled_from(["d", "slots", "scale", "steps", "group", "x"]),
                st.one_of(st.integers(-5, 40), st.floats(), st.text(max_size=3), st.none(), st.booleans()),
                max_size=6,
            ),
        ),
    )
)
def test_hostile_circuit_shape_is_refused_or_valid(text):
    content = RecordDict(
        {"zkapex": ConfigRecord({"registry": b"", "circuit-id": OTHER_CIRCUIT, "circuit": text, "layout-digest": "l"})}
    )
    try:
        rep = CommitReply.from_message(reply_to(COMMIT, content))
    except ProtocolError as err:
        assert "'circuit': bad circuit shape" in str(err)
        return
    assert isinstance(rep.circuit.d, int) and rep.circuit.d >= 2


@settings(max_examples=40, **FUZZ)
@given(st.text(max_size=40).filter(lambda s: not (len(s) == 32 and set(s) <= set("0123456789abcdef"))))
def test_commit_reply_with_a_malformed_circuit_id_is_refused(cid):
    content = RecordDict(
        {
            "zkapex": ConfigRecord(
                {
                    "registry": b"",
                    "circuit-id": cid,
                    "layout-digest": "l",
                    "circuit": '{"d":16,"group":1,"scale":16,"slots":2,"steps":1}',
                }
            )
        }
    )
    with pytest.raises(ProtocolError, match="'circuit-id': circuit id .* is not 32 lowercase hex digits"):
        CommitReply.from_message(reply_to(COMMIT, content))


# --------------------------------------------------------------- a provider round goes on
class HostileGrid(tfp.SyncGrid):
    """The in-process grid; nodes in ``unlearn`` / ``commit`` answer that phase with a hostile reply.

    A node with a hostile unlearning reply commits honestly (its own commitments: a copy of another
    node's would be refused as ``duplicate-commitment``).
    """

    def __init__(self, app, n: int):
        super().__init__(app, n)
        self.unlearn: dict[int, object] = {}  # node -> fn(request) -> RecordDict
        self.commit: dict[int, object] = {}
        self.honest_commit: RecordDict | None = None

    def push_messages(self, messages):
        ids = []
        for m in messages:
            node, kind = m.metadata.dst_node_id, m.metadata.message_type
            hostile = (self.unlearn if kind == UNLEARN else self.commit if kind == COMMIT else {}).get(node)
            if hostile is None:
                ids += super().push_messages([m])
                if kind == COMMIT and node == 100:
                    self.honest_commit = self.replies[ids[-1]].content
                continue
            mid = f"hostile-{len(self.seen)}"
            m.metadata.__dict__["_message_id"] = mid
            self.seen.append((node, kind))
            content = hostile(m)
            self.replies[mid] = Message(content, reply_to=m)
            ids.append(mid)
        return ids


def echo(req_msg: Message, **cfg) -> dict:
    req = UnlearnRequest.from_message(req_msg)
    return {"request-id": req.request_id, "nonce": req.nonce, **cfg}


def fake_bundle(strat, req_msg: Message, *, circuit_id=None, request_id=None, proof_bytes=None) -> bytes:
    """A structurally valid bundle for the request's first touched unit, with one field chosen."""
    req = UnlearnRequest.from_message(req_msg)
    circ = next(iter(strat.circuits.values()))
    spec = circ.spec
    n_proof = strat.verifiers[circ.circuit_id].proof_bytes
    unit = int(strat.masks[req.request_id].touched_blocks()[0]) // spec.group
    proof = Proof(
        [Slot(unit, 0, (0,))],
        bytes(proof_bytes if proof_bytes is not None else n_proof),
        [int_to_felt(0)] * (2 * spec.unit_size),
    )
    return ProofBundle(
        circuit_id or circ.circuit_id, req.layout_digest, request_id or req.request_id, [proof]
    ).to_bytes()


def unlearn_reply(cfg: dict, metrics: dict | None = None, **records) -> RecordDict:
    return RecordDict({"zkapex": ConfigRecord(cfg), "metrics": MetricRecord(metrics or {"prove-s": 1.0}), **records})


# node → (hostile unlearning reply, words of its ledger row's detail)
HOSTILE_UNLEARN = [
    (lambda s, m: RecordDict({"metrics": MetricRecord({"prove-s": 1.0})}), "no 'zkapex' ConfigRecord"),
    (lambda s, m: unlearn_reply(echo(m, bundle="text")), "'bundle' must be bytes, got str"),
    (lambda s, m: unlearn_reply({k: v for k, v in echo(m, bundle=b"x").items() if k != "nonce"}), "missing 'nonce'"),
    (
        lambda s, m: unlearn_reply(echo(m, bundle=b"x"), leak=ArrayRecord([np.zeros(3, np.float32)])),
        "must never hold weights",
    ),
    (lambda s, m: unlearn_reply(echo(m, bundle=b"x"), {"prove-s": float("nan")}), "metric 'prove-s' is nan"),
    (lambda s, m: unlearn_reply(echo(m, bundle=b"x"), {"recovery": float("inf")}), "metric 'recovery' is inf"),
    (lambda s, m: unlearn_reply(echo(m, bundle=b"x"), {"device-s": [1.0, 2.0]}), "metric 'device-s' is a list"),
    (lambda s, m: RecordDict({"zkapex": MetricRecord({"a": 1.0})}), "'zkapex' is a MetricRecord"),
    (lambda s, m: unlearn_reply(echo(m, bundle=b"x", extra="?")), "unexpected key(s) ['extra']"),
    (lambda s, m: unlearn_reply(echo(m, bundle=b"x", nonce="stale")), "'nonce' 'stale' does not echo"),
    (lambda s, m: unlearn_reply(echo(m, bundle=b"\x00" * 64)), "bad magic"),
    (
        lambda s, m: unlearn_reply(echo(m, bundle=fake_bundle(s, m, proof_bytes=MAX_PROOF_BYTES // 2))),
        f"has {MAX_PROOF_BYTES // 2} bytes, circuit",
    ),
    (
        lambda s, m: unlearn_reply(echo(m, bundle=fake_bundle(s, m, circuit_id="f" * 32))),
        "not in the provider's circuit menu",
    ),
    (
        lambda s, m: unlearn_reply(echo(m, bundle=fake_bundle(s, m, circuit_id="../etc"))),
        "'../etc' is not 32 lowercase hex digits",
    ),
    (lambda s, m: unlearn_reply(echo(m, bundle=fake_bundle(s, m, request_id="r0"))), "bundle answers request 'r0'"),
]


def _commit_entry(grid, **arrays) -> bytes:
    entry = BlockCommitments.from_bytes(grid.honest_commit.config_records["zkapex"]["registry"])
    base = {
        "theta": entry.theta,
        "columns": entry.columns,
        "meta": np.frombuffer(f"{entry.circuit_id}|{entry.layout_digest}".encode(), np.uint8),
    }
    return npz(**{**base, **arrays})


def hostile_commit(grid, change) -> RecordDict:
    cfg = dict(grid.honest_commit.config_records["zkapex"])
    metrics = dict(grid.honest_commit.metric_records["metrics"])
    change(cfg, metrics)
    return RecordDict({"zkapex": ConfigRecord(cfg), "metrics": MetricRecord(metrics)})


HOSTILE_COMMIT = [
    (
        lambda g: hostile_commit(
            g, lambda c, m: c.update(registry=_commit_entry(g, theta=np.zeros((8, 32), np.uint8)))
        ),
        "θ commitments are (32,) bytes, expected 64",
    ),
    (
        lambda g: hostile_commit(
            g, lambda c, m: c.update(registry=_commit_entry(g, columns=np.zeros((8, 16, 65), np.uint8)))
        ),
        "Fisher stripe commitments are (65,) bytes",
    ),
    (
        lambda g: hostile_commit(
            g,
            lambda c, m: c.update(
                registry=_commit_entry(g, theta=np.zeros((7, 64), np.uint8), columns=np.zeros((7, 16, 64), np.uint8))
            ),
        ),
        "θ commitments have shape (7, 64), expected (8, 64)",
    ),
    (lambda g: hostile_commit(g, lambda c, m: c.update(registry=b"not an archive")), "not an npz archive"),
    (
        lambda g: hostile_commit(g, lambda c, m: c.update({"circuit-id": "e" * 32})),
        f"circuit {'e' * 32} is not in the provider's circuit menu",
    ),
    (lambda g: hostile_commit(g, lambda c, m: c.update({"circuit-id": "E" * 32})), "is not 32 lowercase hex digits"),
    (lambda g: hostile_commit(g, lambda c, m: c.update(circuit='{"d": "16"}')), "'circuit': bad circuit shape"),
    (lambda g: hostile_commit(g, lambda c, m: m.update({"fisher-s": float("-inf")})), "metric 'fisher-s' is -inf"),
    (lambda g: hostile_commit(g, lambda c, m: m.update({"partition-id": 1e300})), "metric 'partition-id'"),
]


@pytest.fixture(scope="module")
def hostile_round(digits, tmp_path_factory):
    n_honest = 2
    first_unlearn = 100 + n_honest
    first_commit = first_unlearn + len(HOSTILE_UNLEARN)
    grid = HostileGrid(tfp.make_app(digits, {}), first_commit + len(HOSTILE_COMMIT) - 100)
    strat = tfp.provider(digits, tmp_path_factory.mktemp("hostile"))
    for i, (fn, _) in enumerate(HOSTILE_UNLEARN):
        grid.unlearn[first_unlearn + i] = (lambda f: lambda m: f(strat, m))(fn)
    for i, (fn, _) in enumerate(HOSTILE_COMMIT):
        grid.commit[first_commit + i] = (lambda f: lambda m: f(grid))(fn)
    arrays = tfp.initial_arrays(digits)
    strat.commit_round(grid, arrays)
    strat.unlearn_round(grid, arrays, strat.requests[0], 1)
    expected = {first_unlearn + i: w for i, (_, w) in enumerate(HOSTILE_UNLEARN)}
    expected.update({first_commit + i: w for i, (_, w) in enumerate(HOSTILE_COMMIT)})
    return HostileRound(grid, strat, arrays, expected)


@dataclass(repr=False)
class HostileRound:
    grid: HostileGrid
    strat: object
    arrays: ArrayRecord
    expected: dict  # hostile node -> words of its ledger row's detail

    def __iter__(self):
        return iter((self.grid, self.strat, self.arrays, self.expected))

    def __repr__(self):
        return "HostileRound(...)"


@pytest.fixture(scope="module")
def digits():
    return tfp.load_images("digits")


def test_round_goes_on_with_hostile_clients(hostile_round):
    _, strat, _, expected = hostile_round
    rows = strat.ledger.frame()
    assert sorted(rows["node_id"]) == sorted([100, 101, *expected])  # one row per node, none lost
    by_node = rows.set_index("node_id")
    assert by_node.loc[100, "reason"] == "compliant" and by_node.loc[101, "reason"] == "compliant"
    for node, words in expected.items():
        row = by_node.loc[node]
        assert row["reason"] == "malformed" and words in row["detail"], (node, words, row["detail"])
    assert strat.quarantined() == set(expected)


@settings(max_examples=40, **FUZZ)
@given(
    hostile_content(
        UNLEARN_KEYS, {"request-id": "r1", "nonce": "n", "bundle": b"x"}, "an unlearning reply must never hold weights"
    )
)
def test_provider_turns_any_hostile_unlearn_reply_into_a_malformed_row(hostile_round, case):
    """Hypothesis-drawn replies (echoing the request where they keep the keys) through the provider itself."""
    grid, strat, arrays, _ = hostile_round
    node = 100 + 2  # a registered node (its own honest entry)
    content, words = case

    def reply(m: Message) -> RecordDict:
        cfg = content.config_records.get("zkapex")
        if cfg is not None:  # echo the request where the drawn defect left a key well-typed
            for k, v in echo(m).items():
                if isinstance(cfg.get(k), str):
                    cfg[k] = v
        return content

    grid.unlearn[node] = reply
    strat.nonces.pop(("r1", node), None)  # asked again as a make-up round would: a fresh nonce
    before = len(strat.ledger.frame())
    strat.unlearn_round(grid, arrays, strat.requests[0], 1, nodes=[node])
    rows = strat.ledger.frame()
    assert len(rows) == before + 1
    last = rows.iloc[-1]
    assert last["node_id"] == node and last["reason"] == "malformed" and words in last["detail"], last["detail"]


@settings(max_examples=25, **FUZZ)
@given(
    hostile_content(
        COMMIT_KEYS,
        {
            "registry": b"PK",
            "circuit-id": OTHER_CIRCUIT,
            "layout-digest": "l",
            "circuit": '{"d":16,"group":16,"scale":16,"slots":2,"steps":1}',
        },
        "a commit reply must never hold weights",
    )
)
def test_provider_turns_any_hostile_commit_reply_into_a_failed_commit(hostile_round, case):
    """Hypothesis-drawn commit replies from a node that joins: a failed commit, the node never registered."""
    grid, strat, arrays, _ = hostile_round
    content, words = case
    node = max(grid.contexts) + 1
    grid.contexts[node] = Context(
        run_id=1,
        node_id=node,
        node_config={"partition-id": node - 100, "num-partitions": node - 99},
        state=RecordDict(),
        run_config={},
    )
    grid.commit[node] = lambda m: content
    strat.commit_round(grid, arrays)
    reason, detail = strat.commit_failures[node]
    assert reason == "malformed" and words in detail and node not in strat.registry, detail


def test_a_bundle_that_crashes_the_verifier_is_refused_and_the_round_goes_on(hostile_round, monkeypatch):
    """Whatever the verifier raises on a bundle (an ezkl panic, a bug) becomes that node's `malformed` row."""
    grid, strat, arrays, _ = hostile_round
    node = 100
    verifier = strat.verifiers[strat.registry.circuit_of(node)[1]]

    def crash(*args, **kwargs):
        raise RuntimeError("ezkl panicked")

    monkeypatch.setattr(verifier, "verify", crash)
    strat.nonces.pop(("r1", node), None)
    before = len(strat.ledger)
    strat.unlearn_round(grid, arrays, strat.requests[0], 1, nodes=[node])
    rows = strat.ledger.frame()
    assert len(rows) == before + 1
    last = rows.iloc[-1]
    assert last["node_id"] == node and last["reason"] == "malformed"
    assert "could not be verified (RuntimeError: ezkl panicked)" in last["detail"]
