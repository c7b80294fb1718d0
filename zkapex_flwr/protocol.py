"""The wire protocol between the provider strategy and the client mod (PROTOCOL.md §2, §4).

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
travel in a MetricRecord ``metrics``; they are research data and never enter a verdict.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from .proof.circuit import CircuitSpec

COMMIT = "train.commit"
UNLEARN = "train.unlearn"
CONFIG = "zkapex"
ARRAYS = "arrays"
METRICS = "metrics"


class ProtocolError(ValueError):
    """A message does not follow the unlearning protocol (missing key, wrong type, wrong phase)."""


def _get(cfg: ConfigRecord, key: str, typ, what: str):
    if key not in cfg:
        raise ProtocolError(f"{what}: missing '{key}'")
    value = cfg[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ProtocolError(f"{what}: '{key}' must be {getattr(typ, '__name__', typ)}, got {type(value).__name__}")
    return value


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
    return json.dumps({"d": spec.d, "slots": spec.slots, "scale": spec.scale, "steps": spec.steps,
                       "group": spec.group}, sort_keys=True)


def spec_from_json(text: str) -> CircuitSpec:
    try:
        return CircuitSpec(**json.loads(text))
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"bad circuit shape {text!r}: {err}") from None


@dataclass
class CommitRequest:
    scope: str
    block_size: int
    layout_digest: str
    circuits: list[CircuitSpec]       # the menu: same d, K, S, G; different steps per proof
    damping: float
    num_grads: int
    personal_epochs: int
    personal_lr: float
    batch_size: int = 32

    def to_content(self, arrays: ArrayRecord) -> RecordDict:
        cfg = ConfigRecord({"scope": self.scope, "block-size": self.block_size, "layout-digest": self.layout_digest,
                            "circuits": [spec_to_json(s) for s in self.circuits], "damping": self.damping,
                            "num-grads": self.num_grads, "personal-epochs": self.personal_epochs,
                            "personal-lr": self.personal_lr, "batch-size": self.batch_size})
        return RecordDict({ARRAYS: arrays, CONFIG: cfg})

    @staticmethod
    def from_message(msg: Message) -> tuple["CommitRequest", ArrayRecord]:
        what = f"{COMMIT} request"
        cfg = _config(msg, what)
        if ARRAYS not in msg.content.array_records:
            raise ProtocolError(f"{what}: no '{ARRAYS}' ArrayRecord (the global model θg)")
        circuits = _get(cfg, "circuits", list, what)
        if not circuits:
            raise ProtocolError(f"{what}: the circuit menu is empty")
        req = CommitRequest(scope=_get(cfg, "scope", str, what), block_size=_get(cfg, "block-size", int, what),
                            layout_digest=_get(cfg, "layout-digest", str, what),
                            circuits=[spec_from_json(c) for c in circuits], damping=_get(cfg, "damping", float, what),
                            num_grads=_get(cfg, "num-grads", int, what),
                            personal_epochs=_get(cfg, "personal-epochs", int, what),
                            personal_lr=_get(cfg, "personal-lr", float, what),
                            batch_size=_get(cfg, "batch-size", int, what))
        return req, msg.content.array_records[ARRAYS]


@dataclass
class CommitReply:
    registry: bytes
    circuit_id: str
    circuit: CircuitSpec
    layout_digest: str

    def to_content(self, metrics: dict[str, float]) -> RecordDict:
        return _reply({"registry": self.registry, "circuit-id": self.circuit_id, "circuit": spec_to_json(self.circuit),
                       "layout-digest": self.layout_digest}, metrics)

    @staticmethod
    def from_message(msg: Message) -> "CommitReply":
        what = f"{COMMIT} reply"
        cfg = _config(msg, what)
        return CommitReply(_get(cfg, "registry", bytes, what), _get(cfg, "circuit-id", str, what),
                           spec_from_json(_get(cfg, "circuit", str, what)), _get(cfg, "layout-digest", str, what))


@dataclass
class UnlearnRequest:
    request_id: str
    nonce: str
    mask: bytes
    layout: str          # BlockLayout.to_dict() as JSON
    layout_digest: str
    circuit_id: str
    attempt: int
    deadline_s: float

    def to_content(self) -> RecordDict:
        return RecordDict({CONFIG: ConfigRecord({
            "request-id": self.request_id, "nonce": self.nonce, "mask": self.mask, "layout": self.layout,
            "layout-digest": self.layout_digest, "circuit-id": self.circuit_id, "attempt": self.attempt,
            "deadline-s": self.deadline_s})})

    @staticmethod
    def from_message(msg: Message) -> "UnlearnRequest":
        what = f"{UNLEARN} request"
        cfg = _config(msg, what)
        return UnlearnRequest(_get(cfg, "request-id", str, what), _get(cfg, "nonce", str, what),
                              _get(cfg, "mask", bytes, what), _get(cfg, "layout", str, what),
                              _get(cfg, "layout-digest", str, what), _get(cfg, "circuit-id", str, what),
                              _get(cfg, "attempt", int, what), _get(cfg, "deadline-s", float, what))


@dataclass
class UnlearnReply:
    request_id: str
    nonce: str
    bundle: bytes

    def to_content(self, metrics: dict[str, float]) -> RecordDict:
        return _reply({"request-id": self.request_id, "nonce": self.nonce, "bundle": self.bundle}, metrics)

    @staticmethod
    def from_message(msg: Message) -> "UnlearnReply":
        what = f"{UNLEARN} reply"
        cfg = _config(msg, what)
        if msg.content.array_records:
            raise ProtocolError(f"{what}: carries an ArrayRecord ({sorted(msg.content.array_records)}); "
                                "an unlearning reply must never hold weights")
        return UnlearnReply(_get(cfg, "request-id", str, what), _get(cfg, "nonce", str, what),
                            _get(cfg, "bundle", bytes, what))


def reply_metrics(msg: Message) -> dict[str, float]:
    """Client-reported metrics of a reply (research data; never used by the verifier)."""
    if msg.has_error() or METRICS not in msg.content.metric_records:
        return {}
    return {k: float(v) for k, v in msg.content.metric_records[METRICS].items() if isinstance(v, (int, float))}
