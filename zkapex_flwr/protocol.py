"""The wire protocol between the provider strategy and the client mod (docs/protocol.md §2, §4).

Two Flower message types carry the unlearning phases, next to the wrapped strategy's ordinary
``train``/``evaluate`` messages:

* ``train.commit`` (phase 2) — provider → client: θg (ArrayRecord ``arrays``) and a ConfigRecord
  ``zkapex`` with the unlearning scope, block size, layout digest, damping, personalization budget and
  the menu of circuit shapes. Client → provider: its registry entry (KZG commitments of θp and of its
  Fisher), the circuit it chose and the layout digest. No weights.
* ``train.unlearn`` (phase 4) — provider → client: request id, round nonce, mask (compact indices),
  block layout, circuit id, attempt number and deadline. Client → provider: the proof bundle, echoing
  the request id and nonce. No weights; a reply that carries an ArrayRecord is refused as malformed.

Every parser raises :class:`ProtocolError` naming the missing or mistyped key. Client-reported metrics
travel in a MetricRecord ``metrics``; they are research data and never enter a verdict, but a reply
whose metrics are not finite numbers is refused like any other malformed reply. A reply holds exactly
the ConfigRecord ``zkapex`` (with exactly the protocol's keys) and optionally the MetricRecord
``metrics``; anything else in it is refused, naming the record or key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from .proof.bundle import circuit_id_problem, short_repr
from .proof.circuit import CircuitSpec
from .proof.statement import Binding

COMMIT = "train.commit"
UNLEARN = "train.unlearn"
CONFIG = "zkapex"
ARRAYS = "arrays"
METRICS = "metrics"

# Verdict reason codes: every ledger row carries one (docs/protocol.md §4, §5)
REASONS = (
    "compliant",
    "malformed",
    "incomplete",
    "invalid-proof",
    "stale-model",
    "fisher-mismatch",
    "wrong-mask",
    "kkt-violation",
    "wrong-circuit",
    "no-response",
    "late-commit",
    "duplicate-commitment",
    "duplicate-identity",
)
# What an unlearning reply's metrics may say about the client (research data, never used in a verdict);
# the ledger keeps each as column ``client_<key with _>`` (:func:`metric_column`)
CLIENT_METRICS = (
    "prove-s",
    "recovery",
    "personalization-acc-before",
    "personalization-acc-after",
    "forget-acc-before",
    "forget-acc-after",
    "masked-weights",
    "device-s",
    "upload-s",
)


def metric_column(key: str) -> str:
    """The ledger column of a client metric: ``forget-acc-after`` → ``client_forget_acc_after``."""
    return "client_" + key.replace("-", "_")


class ProtocolError(ValueError):
    """A message does not follow the unlearning protocol (missing key, wrong type, wrong phase)."""


def _get(cfg: ConfigRecord, key: str, typ, what: str):
    if key not in cfg:
        raise ProtocolError(f"{what}: missing '{key}'")
    value = cfg[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: '{key}' must be {getattr(typ, '__name__', typ)}, got {type(value).__name__}")
    return value


def _reply_config(msg: Message, what: str, keys: tuple[str, ...]) -> ConfigRecord:
    """The ``zkapex`` ConfigRecord of a client reply, after checking every record and metric it carries."""
    if msg.has_error():
        raise ProtocolError(f"{what}: the message carries an error ({msg.error.reason})")
    arrays = sorted(msg.content.array_records)
    if arrays:
        raise ProtocolError(
            f"{what}: carries an ArrayRecord ({arrays}); "
            f"{'an unlearning' if UNLEARN in what else 'a commit'} reply must never hold weights"
        )
    for name, record in msg.content.items():
        kind = type(record).__name__
        if name == CONFIG and not isinstance(record, ConfigRecord):
            raise ProtocolError(f"{what}: '{CONFIG}' is a {kind}, expected a ConfigRecord")
        if name == METRICS and not isinstance(record, MetricRecord):
            raise ProtocolError(f"{what}: '{METRICS}' is a {kind}, expected a MetricRecord")
        if name not in (CONFIG, METRICS):
            raise ProtocolError(
                f"{what}: unexpected record {short_repr(name)} ({kind}); a reply holds only '{CONFIG}' and '{METRICS}'"
            )
    cfg = _config(msg, what)
    extra = sorted(set(cfg) - set(keys))
    if extra:
        raise ProtocolError(f"{what}: unexpected key(s) {short_repr(extra)} in '{CONFIG}'")
    if METRICS in msg.content.metric_records:
        for key, value in msg.content.metric_records[METRICS].items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ProtocolError(
                    f"{what}: metric {short_repr(key)} is a {type(value).__name__}, metrics must be "
                    "single finite numbers"
                )
            if not _finite(value):
                raise ProtocolError(
                    f"{what}: metric {short_repr(key)} is {short_repr(value)}, metrics must be finite numbers"
                )
    return cfg


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range
        return False


def _config(msg: Message, what: str) -> ConfigRecord:
    if msg.has_error():
        raise ProtocolError(f"{what}: the message carries an error ({msg.error.reason})")
    if CONFIG not in msg.content.config_records:
        raise ProtocolError(f"{what}: no '{CONFIG}' ConfigRecord in the message")
    return msg.content.config_records[CONFIG]


def _reply(config: dict, metrics: dict[str, float]) -> RecordDict:
    """A client reply: the protocol values in ConfigRecord ``zkapex``, client-reported metrics in ``metrics``."""
    return RecordDict({CONFIG: ConfigRecord(config), METRICS: MetricRecord(metrics)})


def spec_to_json(spec: CircuitSpec) -> str:
    return json.dumps(
        {"d": spec.d, "slots": spec.slots, "scale": spec.scale, "steps": spec.steps, "group": spec.group},
        sort_keys=True,
    )


def spec_from_json(text: str) -> CircuitSpec:
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, an int too long, nesting
        raise ProtocolError(
            f"bad circuit shape {short_repr(text)}: not JSON ({type(err).__name__}: {str(err)[:100]})"
        ) from None
    names = {f.name for f in fields(CircuitSpec)}
    if not isinstance(raw, dict) or set(raw) != names:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ProtocolError(
            f"bad circuit shape {short_repr(text)}: expected an object with keys {sorted(names)}, got {short_repr(got)}"
        )
    for key, value in raw.items():
        if type(value) is not int:
            raise ProtocolError(
                f"bad circuit shape {short_repr(text)}: '{key}' must be an integer, got {short_repr(value)}"
            )
    try:
        return CircuitSpec(**raw)
    except (TypeError, ValueError, OverflowError) as err:
        raise ProtocolError(f"bad circuit shape {short_repr(text)}: {err}") from None


@dataclass
class CommitRequest:
    scope: str
    block_size: int
    layout_digest: str
    circuits: list[CircuitSpec]  # the menu: same d, K, S, G; different steps per proof
    damping: float
    num_grads: int
    personal_epochs: int
    personal_lr: float
    batch_size: int = 32
    deleted: bytes = b""  # the active deletions (union mask, UnlearningMask wire form): θp keeps them zero

    def to_content(self, arrays: ArrayRecord) -> RecordDict:
        cfg = ConfigRecord(
            {
                "scope": self.scope,
                "block-size": self.block_size,
                "layout-digest": self.layout_digest,
                "circuits": [spec_to_json(s) for s in self.circuits],
                "damping": self.damping,
                "num-grads": self.num_grads,
                "personal-epochs": self.personal_epochs,
                "personal-lr": self.personal_lr,
                "batch-size": self.batch_size,
            }
        )
        if self.deleted:  # Flower cannot size an empty bytes value: no deletion, no key
            cfg["deleted"] = self.deleted
        return RecordDict({ARRAYS: arrays, CONFIG: cfg})

    @staticmethod
    def from_message(msg: Message) -> tuple[CommitRequest, ArrayRecord]:
        what = f"{COMMIT} request"
        cfg = _config(msg, what)
        if ARRAYS not in msg.content.array_records:
            raise ProtocolError(f"{what}: no '{ARRAYS}' ArrayRecord (the global model θg)")
        circuits = _get(cfg, "circuits", list, what)
        if not circuits:
            raise ProtocolError(f"{what}: the circuit menu is empty")
        req = CommitRequest(
            scope=_get(cfg, "scope", str, what),
            block_size=_get(cfg, "block-size", int, what),
            layout_digest=_get(cfg, "layout-digest", str, what),
            circuits=[spec_from_json(c) for c in circuits],
            damping=_get(cfg, "damping", float, what),
            num_grads=_get(cfg, "num-grads", int, what),
            personal_epochs=_get(cfg, "personal-epochs", int, what),
            personal_lr=_get(cfg, "personal-lr", float, what),
            batch_size=_get(cfg, "batch-size", int, what),
            deleted=_get(cfg, "deleted", bytes, what) if "deleted" in cfg else b"",
        )
        return req, msg.content.array_records[ARRAYS]


@dataclass
class CommitReply:
    registry: bytes
    circuit_id: str
    circuit: CircuitSpec
    layout_digest: str
    identity: str = ""  # the node's stable identity from its node config ('' = the node id is the identity)

    def to_content(self, metrics: dict[str, float]) -> RecordDict:
        return _reply(
            {
                "registry": self.registry,
                "circuit-id": self.circuit_id,
                "circuit": spec_to_json(self.circuit),
                "layout-digest": self.layout_digest,
                "identity": self.identity,
            },
            metrics,
        )

    @staticmethod
    def from_message(msg: Message) -> CommitReply:
        what = f"{COMMIT} reply"
        cfg = _reply_config(msg, what, ("registry", "circuit-id", "circuit", "layout-digest", "identity"))
        identity = _get(cfg, "identity", str, what) if "identity" in cfg else ""
        if len(identity) > 256:
            raise ProtocolError(f"{what}: 'identity' of {len(identity)} characters (at most 256)")
        registry, circuit_id = _get(cfg, "registry", bytes, what), _get(cfg, "circuit-id", str, what)
        problem = circuit_id_problem(circuit_id)
        if problem:
            raise ProtocolError(f"{what}: 'circuit-id': {problem}")
        try:
            spec = spec_from_json(_get(cfg, "circuit", str, what))
        except ProtocolError as err:
            raise ProtocolError(f"{what}: 'circuit': {err}") from None
        return CommitReply(registry, circuit_id, spec, _get(cfg, "layout-digest", str, what), identity)


@dataclass
class UnlearnRequest:
    request_id: str
    nonce: str
    mask: bytes
    layout: str  # BlockLayout.to_dict() as JSON
    layout_digest: str
    circuit_id: str
    attempt: int
    deadline_s: float

    def binding(self, node_id: int) -> Binding:
        """What the proofs answering this request on node ``node_id`` are bound to (request, nonce, node)."""
        return Binding.for_node(self.request_id, self.nonce, node_id)

    def to_content(self) -> RecordDict:
        return RecordDict(
            {
                CONFIG: ConfigRecord(
                    {
                        "request-id": self.request_id,
                        "nonce": self.nonce,
                        "mask": self.mask,
                        "layout": self.layout,
                        "layout-digest": self.layout_digest,
                        "circuit-id": self.circuit_id,
                        "attempt": self.attempt,
                        "deadline-s": self.deadline_s,
                    }
                )
            }
        )

    @staticmethod
    def from_message(msg: Message) -> UnlearnRequest:
        what = f"{UNLEARN} request"
        cfg = _config(msg, what)
        return UnlearnRequest(
            _get(cfg, "request-id", str, what),
            _get(cfg, "nonce", str, what),
            _get(cfg, "mask", bytes, what),
            _get(cfg, "layout", str, what),
            _get(cfg, "layout-digest", str, what),
            _get(cfg, "circuit-id", str, what),
            _get(cfg, "attempt", int, what),
            _get(cfg, "deadline-s", float, what),
        )


@dataclass
class UnlearnReply:
    request_id: str
    nonce: str
    bundle: bytes

    def to_content(self, metrics: dict[str, float]) -> RecordDict:
        return _reply({"request-id": self.request_id, "nonce": self.nonce, "bundle": self.bundle}, metrics)

    @staticmethod
    def from_message(msg: Message) -> UnlearnReply:
        what = f"{UNLEARN} reply"
        cfg = _reply_config(msg, what, ("request-id", "nonce", "bundle"))
        return UnlearnReply(
            _get(cfg, "request-id", str, what), _get(cfg, "nonce", str, what), _get(cfg, "bundle", bytes, what)
        )


def reply_metrics(msg: Message) -> dict[str, float]:
    """Client-reported metrics of a reply (research data; never used by the verifier).

    Lenient: only finite single numbers are kept (the reply's parser refuses a reply with others)."""
    if msg.has_error() or METRICS not in msg.content.metric_records:
        return {}
    return {
        k: float(v)
        for k, v in msg.content.metric_records[METRICS].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v)
    }
