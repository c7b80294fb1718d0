"""The MPU wire format between :class:`strategies.mpu.MPUUnlearning` and :class:`zkapex_flwr.client.mpu.MPUMod`.

One Flower message type carries an MPU round, next to the wrapped strategy's ``train``/``evaluate``:

* ``train.mpu`` — server → the requesting node: the m perturbed, reparameterized copies of θ as
  ArrayRecords ``copy-0`` … ``copy-{m-1}`` and a ConfigRecord ``mpu`` with the request id, a round
  nonce, the local unlearning algorithm (a :mod:`zkapex_flwr.posthoc` name), its steps, learning rate,
  batch size and optimizer, the round r of R, m and the attempt number. Never θ itself, never the
  noise scales α, the noise, or the reparameterization: those stay on the server.
* reply — node → server: the m updated copies under the same names, a ConfigRecord ``mpu`` echoing
  the request id, nonce and round, and optionally a MetricRecord ``metrics`` (client-reported research
  data; never used in a decision).

A node asks for unlearning out of band (the operator hands the server an
:class:`~strategies.mpu.MPURequest`) or in band: its reply to an ordinary ``train`` message carries the
metric ``mpu-request`` = 1 in its MetricRecord. The server removes that key before the wrapped
strategy aggregates the replies.

Every parser raises :class:`~zkapex_flwr.protocol.ProtocolError` naming the missing, extra or mistyped
record or key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from ..protocol import ProtocolError

MPU_UNLEARN = "train.mpu"
MPU_CONFIG = "mpu"
MPU_METRICS = "metrics"
REQUEST_METRIC = "mpu-request"  # in a train reply's MetricRecord: 1 = "unlearn my forget set"
COPY_PREFIX = "copy-"
MAX_COPIES = 64

State = dict[str, torch.Tensor]


def copy_name(k: int) -> str:
    return f"{COPY_PREFIX}{k}"


def content_bytes(content: RecordDict) -> int:
    """Bytes a message's records take (arrays, configs, metrics), as Flower counts them."""
    try:
        return int(sum(r.count_bytes() for r in content.values()))
    except (ValueError, IndexError):  # Flower's count_bytes fails on an empty str/bytes/list value
        return int(sum(len(r.deflate()) for r in content.values()))


def _get(cfg: ConfigRecord, key: str, typ: type, where: str):
    if key not in cfg:
        raise ProtocolError(f"{where}: ConfigRecord '{MPU_CONFIG}' lacks '{key}'")
    value = cfg[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ProtocolError(f"{where}: '{key}' must be {typ.__name__}, got {type(value).__name__}")
    return value


def _copies(content: RecordDict, count: int | None, where: str) -> list[State]:
    names = list(content.array_records)
    m = len(names) if count is None else count
    if not 1 <= m <= MAX_COPIES:
        raise ProtocolError(f"{where}: expected 1 to {MAX_COPIES} copies, got {m}")
    expected = [copy_name(k) for k in range(m)]
    if sorted(names) != sorted(expected):
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        raise ProtocolError(
            f"{where}: ArrayRecords must be {expected[0]}…{expected[-1]}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {[n[:40] for n in extra[:5]]}" if extra else "")
        )
    out = []
    for name in expected:
        try:
            out.append(content.array_records[name].to_torch_state_dict())
        except Exception as err:  # a record that does not deserialize is the sender's problem
            raise ProtocolError(f"{where}: ArrayRecord '{name}' is not a torch state dict ({err})") from err
    return out


def _check_records(content: RecordDict, where: str) -> None:
    if set(content.config_records) != {MPU_CONFIG}:
        raise ProtocolError(
            f"{where}: expected exactly the ConfigRecord '{MPU_CONFIG}', got {sorted(content.config_records)}"
        )
    extra = sorted(set(content.metric_records) - {MPU_METRICS})
    if extra:
        raise ProtocolError(f"{where}: unexpected MetricRecords {extra}")


@dataclass(frozen=True)
class MPUTrainRequest:
    """What a ``train.mpu`` message says besides the copies (nothing that undoes the perturbation)."""

    request_id: str
    nonce: str
    algorithm: str
    steps: int
    lr: float
    batch_size: int
    round: int  # r, 1-based
    rounds: int  # R
    copies: int  # m
    attempt: int = 1
    optimizer: str = "adam"  # zkapex_flwr.posthoc.unlearn's optimizer: "adam" or "sgd"

    KEYS = (
        "request-id",
        "nonce",
        "algorithm",
        "steps",
        "lr",
        "batch-size",
        "round",
        "rounds",
        "copies",
        "attempt",
        "optimizer",
    )

    def to_content(self, copies: list[State]) -> RecordDict:
        if len(copies) != self.copies:
            raise ValueError(f"the request announces {self.copies} copies, {len(copies)} given")
        records: dict = {
            copy_name(k): ArrayRecord({n: t.detach().cpu() for n, t in s.items()}) for k, s in enumerate(copies)
        }
        records[MPU_CONFIG] = ConfigRecord(
            {
                "request-id": self.request_id,
                "nonce": self.nonce,
                "algorithm": self.algorithm,
                "steps": int(self.steps),
                "lr": float(self.lr),
                "batch-size": int(self.batch_size),
                "round": int(self.round),
                "rounds": int(self.rounds),
                "copies": int(self.copies),
                "attempt": int(self.attempt),
                "optimizer": self.optimizer,
            }
        )
        return RecordDict(records)

    @classmethod
    def from_message(cls, msg: Message) -> tuple[MPUTrainRequest, list[State]]:
        where = f"{MPU_UNLEARN} request"
        content = msg.content
        _check_records(content, where)
        if content.metric_records:
            raise ProtocolError(f"{where}: unexpected MetricRecords {sorted(content.metric_records)}")
        cfg = content.config_records[MPU_CONFIG]
        extra = sorted(set(cfg) - set(cls.KEYS))
        if extra:
            raise ProtocolError(f"{where}: unexpected keys {extra} in ConfigRecord '{MPU_CONFIG}'")
        req = cls(
            request_id=_get(cfg, "request-id", str, where),
            nonce=_get(cfg, "nonce", str, where),
            algorithm=_get(cfg, "algorithm", str, where),
            steps=_get(cfg, "steps", int, where),
            lr=_get(cfg, "lr", float, where),
            batch_size=_get(cfg, "batch-size", int, where),
            round=_get(cfg, "round", int, where),
            rounds=_get(cfg, "rounds", int, where),
            copies=_get(cfg, "copies", int, where),
            attempt=_get(cfg, "attempt", int, where),
            optimizer=_get(cfg, "optimizer", str, where) if "optimizer" in cfg else "adam",
        )
        if req.steps < 1 or req.batch_size < 1 or not (math.isfinite(req.lr) and req.lr > 0):
            raise ProtocolError(
                f"{where}: steps and batch-size must be ≥ 1 and lr > 0, got {req.steps}, {req.batch_size}, {req.lr}"
            )
        if not 1 <= req.round <= req.rounds:
            raise ProtocolError(f"{where}: round {req.round} of {req.rounds}")
        return req, _copies(content, req.copies, where)


@dataclass(frozen=True)
class MPUTrainReply:
    """A node's answer to one ``train.mpu`` round: the updated copies, echoing the request."""

    request_id: str
    nonce: str
    round: int

    KEYS = ("request-id", "nonce", "round")

    def to_content(self, copies: list[State], metrics: dict[str, float] | None = None) -> RecordDict:
        records: dict = {
            copy_name(k): ArrayRecord({n: t.detach().cpu() for n, t in s.items()}) for k, s in enumerate(copies)
        }
        records[MPU_CONFIG] = ConfigRecord(
            {"request-id": self.request_id, "nonce": self.nonce, "round": int(self.round)}
        )
        if metrics:
            records[MPU_METRICS] = MetricRecord({k: float(v) for k, v in metrics.items()})
        return RecordDict(records)

    @classmethod
    def from_message(cls, msg: Message, copies: int) -> tuple[MPUTrainReply, list[State]]:
        where = f"{MPU_UNLEARN} reply"
        content = msg.content
        _check_records(content, where)
        cfg = content.config_records[MPU_CONFIG]
        extra = sorted(set(cfg) - set(cls.KEYS))
        if extra:
            raise ProtocolError(f"{where}: unexpected keys {extra} in ConfigRecord '{MPU_CONFIG}'")
        rep = cls(_get(cfg, "request-id", str, where), _get(cfg, "nonce", str, where), _get(cfg, "round", int, where))
        return rep, _copies(content, copies, where)


def reply_metrics(msg: Message) -> dict[str, float]:
    """The finite numbers of a reply's ``metrics`` (research data)."""
    if msg.has_error() or MPU_METRICS not in msg.content.metric_records:
        return {}
    return {
        k: float(v)
        for k, v in msg.content.metric_records[MPU_METRICS].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def asks_for_unlearning(msg: Message) -> bool:
    """Whether a ``train`` reply carries ``mpu-request`` = 1 in one of its MetricRecords."""
    if msg.has_error():
        return False
    return any(rec.get(REQUEST_METRIC) == 1 for rec in msg.content.metric_records.values())


def strip_request_metric(msg: Message) -> None:
    """Remove ``mpu-request`` from a reply (in place), so the wrapped strategy aggregates what it expects."""
    if msg.has_error():
        return
    for rec in msg.content.metric_records.values():
        if REQUEST_METRIC in rec:
            del rec[REQUEST_METRIC]
