"""The client side of MUNKEY verified deletion as a Flower mod: one line adds it to a ClientApp.

    mod = MunkeyMod(setup)                    # setup(context) -> MunkeySetup (model, own ids and instances)
    app = ClientApp(client_fn, mods=[mod])    # a client_fn ClientApp: the mod intercepts its two messages
    mod.install(app)                          # or: a decorator ClientApp (@app.train(), ...)

It answers two message types (Flower wants the action to be a Python identifier, hence the underscores):

* ``train.munkey_commit`` — load θg (the frozen backbone and the provider's memory), personalize it by
  adding the node's own instances' keys to the local memory, commit to the memory (a salted SHA-256
  Merkle tree, :mod:`zkapex_flwr.munkey.commitment`) and reply the 41-byte commitment (root, N, depth).
  No weights, no keys, no ids leave the node.
* ``train.munkey_delete`` — delete the requested ids (provider-held ids from every client's copy, a
  client's own ids on that client; a class request maps the class to the node's ids), prove the
  deletion (:func:`~zkapex_flwr.munkey.deletion.prove_deletion`) and reply the new commitment and the
  proof: the ids deleted and hashes, never a key or a value.

State is kept in the Context (``munkey.model``: the model's state dict with its memory;
``munkey.meta``: the committed state with the salts, which never leave the node, and the replies
already sent, so a retry is answered again without re-proving).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from ..data.tensors import TensorData, as_tensor_data
from ..munkey.cheats import Behaviour, DeletionReply, DeletionTask, honest
from ..munkey.commitment import COMMITMENT_BYTES, Commitment, CommitmentError, MemoryCommitment, commit_memory
from ..munkey.deletion import DeletionBinding
from ..protocol import ProtocolError
from .mod import node_identity

MUNKEY_COMMIT = "train.munkey_commit"
MUNKEY_DELETE = "train.munkey_delete"
CONFIG = "munkey"
ARRAYS = "arrays"
METRICS = "metrics"
SCHEME = "munkey-merkle-sha256/v1"
MODEL_KEY, META_KEY = "munkey.model", "munkey.meta"
KEEP_REPLIES = 4


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
        raise ProtocolError(f"{what}: no '{CONFIG}' ConfigRecord")
    return msg.content.config_records[CONFIG]


def _reply_config(msg: Message, what: str, keys: tuple[str, ...]) -> ConfigRecord:
    """A reply holds exactly ConfigRecord ``munkey`` with these keys (and MetricRecord ``metrics``)."""
    cfg = _config(msg, what)
    for name, record in msg.content.items():
        if name not in (CONFIG, METRICS) or (name == METRICS and not isinstance(record, MetricRecord)):
            raise ProtocolError(f"{what}: unexpected record {name[:40]!r} ({type(record).__name__})")
    if sorted(cfg) != sorted(keys):
        raise ProtocolError(f"{what}: keys {sorted(cfg)[:10]}, expected {sorted(keys)}")
    return cfg


def _ids(values) -> list[int]:
    out = [int(v) for v in values]
    if any(v < 0 for v in out):
        raise ProtocolError("instance ids must be >= 0")
    return out


# ------------------------------------------------------------------------------------- messages
@dataclass
class MunkeyCommitRequest:
    scheme: str = SCHEME

    def to_content(self, arrays: ArrayRecord) -> RecordDict:
        return RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({"scheme": self.scheme})})

    @staticmethod
    def from_message(msg: Message) -> tuple[MunkeyCommitRequest, ArrayRecord]:
        what = f"{MUNKEY_COMMIT} request"
        cfg = _config(msg, what)
        scheme = _get(cfg, "scheme", str, what)
        if scheme != SCHEME:
            raise ProtocolError(f"{what}: scheme {scheme[:40]!r}, this client speaks {SCHEME!r}")
        if ARRAYS not in msg.content.array_records:
            raise ProtocolError(f"{what}: no '{ARRAYS}' ArrayRecord (θg)")
        return MunkeyCommitRequest(scheme), msg.content.array_records[ARRAYS]


@dataclass
class MunkeyCommitReply:
    commitment: Commitment
    identity: str = ""

    def to_content(self, metrics: dict[str, float]) -> RecordDict:
        cfg = {"commitment": self.commitment.to_bytes(), "scheme": SCHEME, "identity": self.identity}
        return RecordDict({CONFIG: ConfigRecord(cfg), METRICS: MetricRecord(metrics)})

    @staticmethod
    def from_message(msg: Message) -> MunkeyCommitReply:
        what = f"{MUNKEY_COMMIT} reply"
        cfg = _reply_config(msg, what, ("commitment", "scheme", "identity"))
        if _get(cfg, "scheme", str, what) != SCHEME:
            raise ProtocolError(f"{what}: another commitment scheme")
        try:
            commitment = Commitment.from_bytes(_get(cfg, "commitment", bytes, what))
        except CommitmentError as err:
            raise ProtocolError(f"{what}: {err}") from None
        identity = _get(cfg, "identity", str, what)
        if len(identity) > 256:
            raise ProtocolError(f"{what}: 'identity' of {len(identity)} characters (at most 256)")
        return MunkeyCommitReply(commitment, identity)


@dataclass
class MunkeyDeleteRequest:
    request_id: str
    nonce: str
    ids: list[int]  # ids that must go (provider-held ones, and this node's own named ones)
    label: int = -1  # a class request: also every own id of this class (-1: none)
    attempt: int = 1
    deadline_s: float = 60.0

    def binding(self, node_id: int) -> DeletionBinding:
        return DeletionBinding.for_node(self.request_id, self.nonce, node_id)

    def to_content(self) -> RecordDict:
        cfg = {
            "request-id": self.request_id,
            "nonce": self.nonce,
            "label": int(self.label),
            "attempt": int(self.attempt),
            "deadline-s": float(self.deadline_s),
        }
        if self.ids:  # Flower cannot size an empty list: no ids, no key
            cfg["ids"] = [int(i) for i in self.ids]
        return RecordDict({CONFIG: ConfigRecord(cfg)})

    @staticmethod
    def from_message(msg: Message) -> MunkeyDeleteRequest:
        what = f"{MUNKEY_DELETE} request"
        cfg = _config(msg, what)
        return MunkeyDeleteRequest(
            _get(cfg, "request-id", str, what),
            _get(cfg, "nonce", str, what),
            _ids(_get(cfg, "ids", list, what)) if "ids" in cfg else [],
            _get(cfg, "label", int, what),
            _get(cfg, "attempt", int, what),
            _get(cfg, "deadline-s", float, what),
        )


@dataclass
class MunkeyDeleteReply:
    request_id: str
    nonce: str
    commitment: Commitment
    proof: bytes

    def to_content(self, metrics: dict[str, float]) -> RecordDict:
        cfg = {
            "request-id": self.request_id,
            "nonce": self.nonce,
            "commitment": self.commitment.to_bytes(),
            "proof": self.proof,
        }
        return RecordDict({CONFIG: ConfigRecord(cfg), METRICS: MetricRecord(metrics)})

    @staticmethod
    def from_message(msg: Message) -> MunkeyDeleteReply:
        what = f"{MUNKEY_DELETE} reply"
        cfg = _reply_config(msg, what, ("request-id", "nonce", "commitment", "proof"))
        try:
            commitment = Commitment.from_bytes(_get(cfg, "commitment", bytes, what))
        except CommitmentError as err:
            raise ProtocolError(f"{what}: {err}") from None
        return MunkeyDeleteReply(
            _get(cfg, "request-id", str, what),
            _get(cfg, "nonce", str, what),
            commitment,
            _get(cfg, "proof", bytes, what),
        )


# ----------------------------------------------------------------------------------------- setup
@dataclass
class MunkeySetup:
    """What the mod needs from the app for one node (built by the app's ``setup(context)``).

    ``model``: a :class:`~zkapex_flwr.munkey.model.MunkeyViT` (any module with ``.memory``, a
    :class:`~zkapex_flwr.munkey.memory.KeyValueMemory`, and ``add_instances(ids, x, y)``); θg replaces its
    weights and memory at commit. ``ids``/``data``: the node's own instances and their ids (disjoint from
    the provider's). ``behaviour``: red-teaming, a :mod:`zkapex_flwr.munkey.cheats` behaviour answering
    deletions instead of the honest one. ``after_delete(model, task)``: runs after each deletion (e.g.
    :func:`~zkapex_flwr.munkey.cheats.backbone_shift`, a cheat no commitment sees)."""

    model: nn.Module
    ids: Any = ()
    data: Any = None
    behaviour: Behaviour | None = None
    after_delete: Callable[[nn.Module, DeletionTask], None] | None = None
    test: Any = None

    def __post_init__(self) -> None:
        if not hasattr(self.model, "memory"):
            raise TypeError(f"MunkeySetup.model must have a key/value .memory, got {type(self.model).__name__}")
        self.ids = torch.as_tensor(self.ids, dtype=torch.int64).reshape(-1)
        if self.data is not None:
            self.data = as_tensor_data(self.data, name="MunkeySetup.data")
            if len(self.data) != len(self.ids):
                raise ValueError(f"MunkeySetup: {len(self.ids)} ids for {len(self.data)} instances")
        elif len(self.ids):
            raise ValueError("MunkeySetup: ids without data")
        if self.test is not None:
            self.test = as_tensor_data(self.test, name="MunkeySetup.test")


def _accuracy(model: nn.Module, data: TensorData | None) -> dict[str, float]:
    if data is None or not len(data):
        return {}
    with torch.no_grad():
        x, y = data.tensors[0], data.tensors[1]
        return {"accuracy": float((model(x).argmax(-1) == y).float().mean())}


class MunkeyMod:
    """A Flower mod (``mod(message, context, call_next)``) answering ``train.munkey_commit``/``_delete``."""

    def __init__(self, setup: Callable[[Context], MunkeySetup]):
        self.setup = setup
        self._setups: dict[tuple[int, int], MunkeySetup] = {}

    def __call__(self, message: Message, context: Context, call_next) -> Message:
        kind = message.metadata.message_type
        if kind == MUNKEY_COMMIT:
            return self.handle_commit(message, context)
        if kind == MUNKEY_DELETE:
            return self.handle_delete(message, context)
        return call_next(message, context)

    def install(self, app: ClientApp) -> ClientApp:
        """Register both handlers on a decorator-style ClientApp (its own mods wrap them too)."""
        app.train(MUNKEY_COMMIT.split(".")[1])(self.handle_commit)
        app.train(MUNKEY_DELETE.split(".")[1])(self.handle_delete)
        return app

    def setup_for(self, context: Context) -> MunkeySetup:
        key = (context.run_id, context.node_id)
        if key not in self._setups:
            setup = self.setup(context)
            if not isinstance(setup, MunkeySetup):
                raise TypeError(f"the setup function must return a MunkeySetup, got {type(setup).__name__}")
            self._setups[key] = setup
        return self._setups[key]

    # ------------------------------------------------------------------------------ state
    @staticmethod
    def _save(context: Context, model: nn.Module, meta: dict) -> None:
        context.state[MODEL_KEY] = ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})
        context.state[META_KEY] = ConfigRecord(meta)

    @staticmethod
    def _meta(context: Context) -> dict:
        if META_KEY not in context.state.config_records:
            raise ProtocolError(f"node {context.node_id}: no committed memory (it never answered {MUNKEY_COMMIT})")
        return dict(context.state.config_records[META_KEY])

    # ---------------------------------------------------------------------------- commit
    def handle_commit(self, message: Message, context: Context) -> Message:
        t0 = time.perf_counter()
        node = self.setup_for(context)
        _, arrays = MunkeyCommitRequest.from_message(message)
        model = node.model
        model.load_state_dict(arrays.to_torch_state_dict())
        provider_rows = len(model.memory)
        if len(node.ids):
            x, y = node.data.tensors[0], node.data.tensors[1]
            model.add_instances(node.ids, x, y)
        t1 = time.perf_counter()
        state = commit_memory(model.memory)
        t2 = time.perf_counter()
        blob = state.to_bytes()
        self._save(context, model, {"state": blob, "first": blob})
        metrics = {
            "provider-rows": float(provider_rows),
            "own-rows": float(len(node.ids)),
            "personalize-s": t1 - t0,
            "commit-ms": (t2 - t1) * 1e3,
            **_accuracy(model, node.test),
        }
        if isinstance(context.node_config.get("partition-id"), int):
            metrics["partition-id"] = context.node_config["partition-id"]
        reply = MunkeyCommitReply(state.commitment, node_identity(context))
        return Message(reply.to_content(metrics), reply_to=message)

    # ---------------------------------------------------------------------------- delete
    def handle_delete(self, message: Message, context: Context) -> Message:
        node = self.setup_for(context)
        req = MunkeyDeleteRequest.from_message(message)
        meta = self._meta(context)
        key = f"{req.request_id}|{req.nonce}"
        sent = dict(zip(meta.get("sent-keys", []), meta.get("sent-replies", [])))
        if key in sent:  # a retry of the same round: the same answer, no re-proving
            blob = sent[key]
            new = Commitment.from_bytes(blob[:COMMITMENT_BYTES])
            reply = MunkeyDeleteReply(req.request_id, req.nonce, new, blob[COMMITMENT_BYTES:])
            return Message(reply.to_content({"resent": 1.0}), reply_to=message)
        model = node.model
        model.load_state_dict(context.state.array_records[MODEL_KEY].to_torch_state_dict())
        if meta.get("pre-request") == req.request_id:  # asked again (new round nonce): prove from before it
            state = MemoryCommitment.from_bytes(meta["pre-state"])
            model.memory.load_state_dict(_memory_rows(meta["pre-memory"]))
        else:
            state = MemoryCommitment.from_bytes(meta["state"])
        pre_state, pre_memory = state.to_bytes(), _memory_blob(model.memory)
        ids = list(req.ids)
        if req.label >= 0:
            ids = sorted(set(ids) | set(model.memory.ids[model.memory.labels == req.label].tolist()))
        history = [(None, b[COMMITMENT_BYTES:]) for b in meta.get("sent-replies", [])]
        task = DeletionTask(
            state, model.memory, ids, req.binding(context.node_id), history, MemoryCommitment.from_bytes(meta["first"])
        )
        before = _accuracy(model, node.test)
        t0 = time.perf_counter()
        out: DeletionReply = (node.behaviour or honest)(task)
        prove_ms = (time.perf_counter() - t0) * 1e3
        if node.after_delete is not None:
            node.after_delete(model, task)
        keys = (meta.get("sent-keys", []) + [key])[-KEEP_REPLIES:]
        replies = (meta.get("sent-replies", []) + [out.new.to_bytes() + out.proof])[-KEEP_REPLIES:]
        new_meta = {
            "state": (out.state or state).to_bytes(),
            "first": meta["first"],
            "sent-keys": keys,
            "sent-replies": replies,
            "pre-request": req.request_id,
            "pre-state": pre_state,
            "pre-memory": pre_memory,
        }
        self._save(context, model, new_meta)
        metrics = {"prove-ms": prove_ms, "deleted": float(len(ids)), "proof-bytes": float(len(out.proof))}
        for k, v in before.items():
            metrics[f"{k}-before"] = v
        for k, v in _accuracy(model, node.test).items():
            metrics[f"{k}-after"] = v
        reply = MunkeyDeleteReply(req.request_id, req.nonce, out.new, out.proof)
        return Message(reply.to_content(metrics), reply_to=message)


def _memory_blob(memory) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(memory.state(), buf)
    return buf.getvalue()


def _memory_rows(blob: bytes) -> dict[str, torch.Tensor]:
    import io

    return torch.load(io.BytesIO(blob), weights_only=True)
