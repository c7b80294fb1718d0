"""The MUNKEY provider: verified key deletion around any Flower strategy (docs/munkey-proofs.md).

``MunkeyUnlearning`` wraps a strategy the way :class:`~strategies.verified_unlearning.VerifiedUnlearning`
does (the wrapped one samples, configures and aggregates ordinary rounds, quarantined nodes hidden) and
adds two phases for a memory-augmented model (:class:`~zkapex_flwr.munkey.model.MunkeyViT`):

* **commit** (``train.munkey_commit``, once per node): θg — the frozen backbone and the provider's
  memory — goes out; each node adds its own instances' keys and registers a commitment to its memory
  (Merkle root, N, depth). The registry keeps each node's current commitment.
* **delete** (``train.munkey_delete``, per :class:`MunkeyRequest`): a request names instance ids or a
  class. Provider-held ids (rows of θg's memory) are deleted from θg by the provider and from every
  node's copy; a node's own ids are named per node (``client_ids``); a class request also covers each
  node's own rows of that class, which the node names in its proof. Each reply is verified on arrival
  (:func:`~zkapex_flwr.munkey.deletion.verify_deletion`) against the registered commitment, bound to
  (request, fresh round nonce, node); a compliant node's registry entry moves to the new commitment.
  Every outcome is a ledger row with a reason code (:data:`LEDGER_REASONS`); a node whose latest outcome
  is not compliant is quarantined (hidden from training) until a make-up round of its failed requests
  complies.

Registry and ledger live in ``state_dir`` (``munkey-registry.json``, written atomically;
``munkey-ledger.jsonl``, append-only), so a restarted provider keeps every commitment and verdict.

    strategy = MunkeyUnlearning(FedAvg(), requests=[MunkeyRequest("r1", ids=(17, 42))], state_dir="provider")
    result = strategy.start(grid, ArrayRecord(munkey_model.state_dict()), num_rounds=0)
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from zkapex_flwr.client.munkey import (
    MUNKEY_COMMIT,
    MUNKEY_DELETE,
    MunkeyCommitReply,
    MunkeyCommitRequest,
    MunkeyDeleteReply,
    MunkeyDeleteRequest,
)
from zkapex_flwr.files import atomic_write
from zkapex_flwr.munkey.commitment import Commitment
from zkapex_flwr.munkey.deletion import REASONS as VERDICT_REASONS
from zkapex_flwr.munkey.deletion import DeletionBinding, verify_deletion
from zkapex_flwr.protocol import ProtocolError, reply_metrics

from .dispatch import Outcome, dispatch
from .result import DeletionRecord, UnlearningResult
from .verified_unlearning import _GridView

log = logging.getLogger("zkapex_flwr.provider.munkey")

# Every ledger row's reason: the verifier's codes plus the round's own
LEDGER_REASONS = VERDICT_REASONS + ("no-response", "no-commitment", "duplicate-commitment")
MEMORY_FIELDS = ("ids", "keys", "values", "labels")


@dataclass(frozen=True)
class MunkeyRequest:
    """One deletion request, served after training round ``after_round`` (0: before the first).

    ``ids``: provider-held instance ids (rows of θg's memory): deleted from θg and from every node.
    ``label``: a class: every provider-held row of it, and each node's own rows of it (the node names
    them; the provider cannot check it named all, docs/munkey-proofs.md §4). ``client_ids``: node id →
    that node's own ids to delete."""

    request_id: str
    ids: tuple[int, ...] = ()
    label: int | None = None
    client_ids: dict[int, tuple[int, ...]] = field(default_factory=dict)
    after_round: int = 0
    description: str = ""


@dataclass
class MunkeyConfig:
    deadline_s: float = 60.0  # per attempt, from when the message is pushed
    max_attempts: int = 2
    max_in_flight: int = 0  # 0: every node at once
    commit_deadline_s: float | None = None  # default: 2 × deadline_s
    makeup: bool = True  # re-send failed requests to quarantined nodes before each new request
    memory_prefix: str = "memory."  # where θg's state dict keeps the memory rows


class MunkeyLedger:
    """Append-only verdicts (one JSON line each); the latest row per (request, node) is the outcome."""

    COLUMNS = (
        "request_id",
        "node_id",
        "partition_id",
        "server_round",
        "nonce",
        "reason",
        "detail",
        "compliant",
        "attempts",
        "verify_ms",
        "deleted",
        "proof_bytes",
        "old_root",
        "new_root",
        "client_prove_ms",
        "quarantined",
        "recorded_at",
    )

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.exists():
            self.rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def append(self, row: dict) -> None:
        if row["reason"] not in LEDGER_REASONS:
            raise ValueError(f"unknown MUNKEY reason code {row['reason']!r}; known: {LEDGER_REASONS}")
        row = {c: row.get(c) for c in self.COLUMNS} | {
            "compliant": row["reason"] == "compliant",
            "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(self.COLUMNS))

    def outcomes(self) -> pd.DataFrame:
        latest: dict[tuple[str, int], dict] = {}
        for row in self.rows:
            latest[(row["request_id"], row["node_id"])] = row
        return pd.DataFrame(list(latest.values()), columns=list(self.COLUMNS))

    def latest(self, request_id: str, node: int) -> dict | None:
        return next((r for r in reversed(self.rows) if r["request_id"] == request_id and r["node_id"] == node), None)

    def quarantined(self) -> set[int]:
        out = self.outcomes()
        return set() if not len(out) else {int(n) for n in out.loc[~out["compliant"].astype(bool), "node_id"]}

    def failed_requests(self, node: int) -> list[str]:
        out = self.outcomes()
        if not len(out):
            return []
        rows = out[(out["node_id"] == node) & ~out["compliant"].astype(bool)]
        return list(rows["request_id"])


class MunkeyUnlearning(Strategy):
    """A Flower Strategy adding MUNKEY verified deletion to the one it wraps (see the module docstring)."""

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        requests: list[MunkeyRequest],
        state_dir: str | Path,
        config: MunkeyConfig | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        self.strategy = strategy if strategy is not None else FedAvg()
        self.requests = sorted(requests, key=lambda r: r.after_round)
        names = [r.request_id for r in self.requests]
        if len(set(names)) != len(names):
            raise ValueError(f"deletion request ids must be unique, got {names}")
        self.cfg = config or MunkeyConfig()
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.registry_path = self.state_dir / "munkey-registry.json"
        self.registry: dict[int, dict] = {}  # node -> {"commitment": hex, "identity", "partition", "history"}
        if self.registry_path.exists():
            self.registry = {int(k): v for k, v in json.loads(self.registry_path.read_text()).items()}
        self.ledger = MunkeyLedger(self.state_dir / "munkey-ledger.jsonl")
        self.commit_failures: dict[int, tuple[str, str]] = {}
        self.nonces: dict[tuple[str, int], str] = {}
        # per served request, θg's memory (id -> label) when it was first served; and the provider-held
        # ids deleted from θg so far (persisted: a restarted provider keeps them deleted)
        self.provider_path = self.state_dir / "munkey-provider.json"
        self.served: dict[str, dict[int, int]] = {}
        self.deleted_ids: set[int] = set()
        if self.provider_path.exists():
            saved = json.loads(self.provider_path.read_text())
            self.served = {r: {int(i): int(y) for i, y in m.items()} for r, m in saved["served"].items()}
            self.deleted_ids = {int(i) for i in saved["deleted_ids"]}
        self.on_progress = on_progress

    # ------------------------------------------------------------------------ registry
    def commitment(self, node: int) -> Commitment:
        return Commitment.from_bytes(bytes.fromhex(self.registry[node]["commitment"]))

    def _save_registry(self) -> None:
        atomic_write(self.registry_path, json.dumps({str(k): v for k, v in self.registry.items()}, indent=1).encode())

    # ------------------------------------------------------------- the wrapped strategy
    def _view(self, grid: Grid) -> _GridView:
        view = grid if isinstance(grid, _GridView) else _GridView(grid)
        view.hidden = self.ledger.quarantined()
        return view

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        view = self._view(grid)
        msgs = self.strategy.configure_train(server_round, self.forget_in_global(arrays), config, view)
        return [m for m in msgs if m.metadata.dst_node_id not in view.hidden]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        return (self.forget_in_global(arrays) if arrays is not None else None), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        view = self._view(grid)
        msgs = self.strategy.configure_evaluate(server_round, self.forget_in_global(arrays), config, view)
        return [m for m in msgs if m.metadata.dst_node_id not in view.hidden]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.info("MUNKEY verified deletion: %d requests, store %s", len(self.requests), self.state_dir)
        self.strategy.summary()

    # -------------------------------------------------------------------- θg's memory
    def _memory(self, arrays: ArrayRecord) -> dict[str, torch.Tensor] | None:
        state = arrays.to_torch_state_dict() if len(arrays) else {}
        p = self.cfg.memory_prefix
        if not all(p + f in state for f in MEMORY_FIELDS):
            return None
        return {f: state[p + f] for f in MEMORY_FIELDS}

    def provider_ids(self, arrays: ArrayRecord) -> dict[int, int]:
        """Provider-held id → label, from θg's memory."""
        mem = self._memory(arrays)
        return {} if mem is None else dict(zip(mem["ids"].tolist(), mem["labels"].tolist()))

    def forget_in_global(self, arrays: ArrayRecord) -> ArrayRecord:
        """θg without the rows of every provider-held id deleted so far."""
        mem = self._memory(arrays)
        if mem is None or not self.deleted_ids:
            return arrays
        keep = ~torch.isin(mem["ids"], torch.tensor(sorted(self.deleted_ids), dtype=torch.int64))
        if bool(keep.all()):
            return arrays
        state = arrays.to_torch_state_dict()
        for f in MEMORY_FIELDS:
            state[self.cfg.memory_prefix + f] = mem[f][keep].contiguous()
        return ArrayRecord(state)

    # ------------------------------------------------------------------------ schedule
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 0,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> UnlearningResult:
        """Commit, then ordinary rounds 1…N with the requests served after the rounds they name."""
        result = UnlearningResult()
        arrays = self.forget_in_global(initial_arrays)
        arrays = self._deletion_phase(grid, arrays, 0, result, evaluate_fn)
        for rnd in range(1, num_rounds + 1):
            msgs = list(self.configure_train(rnd, arrays, ConfigRecord(dict(train_config or {})), grid))
            replies = grid.send_and_receive(msgs, timeout=timeout) if msgs else []
            new_arrays, metrics = self.aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = new_arrays
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
            if evaluate_fn and (res := evaluate_fn(rnd, arrays)) is not None:
                result.evaluate_metrics_serverapp[rnd] = res
            arrays = self._deletion_phase(grid, arrays, rnd, result, evaluate_fn)
        result.arrays = arrays
        return result

    def _deletion_phase(self, grid, arrays, rnd, result, evaluate_fn) -> ArrayRecord:
        due = [r for r in self.requests if r.after_round == rnd]
        if not due:
            return arrays
        before = evaluate_fn(rnd, arrays) if evaluate_fn else None
        after_arrays = self.serve_requests(grid, arrays, rnd)
        after = evaluate_fn(rnd, after_arrays) if evaluate_fn else None
        outcomes = self.ledger.outcomes()
        for req in due:
            rows = outcomes[outcomes["request_id"] == req.request_id] if len(outcomes) else outcomes
            verdicts = {str(k): int(v) for k, v in rows["reason"].value_counts().items()} if len(rows) else {}
            result.deletions.append(
                DeletionRecord(
                    request_id=req.request_id,
                    after_round=rnd,
                    description=req.description or self._describe(req),
                    masked_weights=0,  # MUNKEY deletes memory rows, not weights
                    verdicts=verdicts,
                    quarantined=sorted(self.ledger.quarantined()),
                    evaluate_before={"serverapp": before} if before is not None else {},
                    evaluate_after={"serverapp": after} if after is not None else {},
                )
            )
        return after_arrays

    @staticmethod
    def _describe(req: MunkeyRequest) -> str:
        parts = [f"{len(req.ids)} provider-held ids"] if req.ids else []
        if req.label is not None:
            parts.append(f"class {req.label}")
        if req.client_ids:
            parts.append(f"own ids on {len(req.client_ids)} nodes")
        return "MUNKEY deletion: " + (", ".join(parts) or "nothing")

    def serve_requests(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Serve the requests due after ``server_round``; returns θg without their provider-held rows."""
        due = [r for r in self.requests if r.after_round == server_round]
        if not due:
            return arrays
        self.commit_round(grid, arrays)
        for req in due:
            if self.cfg.makeup:
                self._makeup(grid, arrays)
            # θg as the earlier requests of this round left it: their provider-held rows are gone
            self.delete_round(grid, self.forget_in_global(arrays), req, server_round)
        return self.forget_in_global(arrays)

    # --------------------------------------------------------------------------- commit
    def commit_round(self, grid: Grid, arrays: ArrayRecord) -> None:
        """``train.munkey_commit`` to every connected node without a registered commitment."""
        nodes = [n for n in sorted(grid.get_node_ids()) if n not in self.registry and n not in self.commit_failures]
        if not nodes:
            return
        content = MunkeyCommitRequest().to_content(self.forget_in_global(arrays))
        provider_rows = len(self.provider_ids(arrays))

        def on_outcome(out: Outcome) -> None:
            if out.reply is None:
                self.commit_failures[out.node_id] = ("no-response", f"commit round: {out.detail}")
                return
            try:
                rep = MunkeyCommitReply.from_message(out.reply)
            except ProtocolError as err:
                self.commit_failures[out.node_id] = ("malformed", f"commit reply: {err}")
                return
            if rep.commitment.count < provider_rows:
                self.commit_failures[out.node_id] = (
                    "malformed",
                    f"commit reply: N={rep.commitment.count}, fewer than θg's {provider_rows} rows",
                )
                return
            hexed = rep.commitment.hex()
            other = next((n for n, e in self.registry.items() if e["commitment"] == hexed), None)
            if other is not None:
                self.commit_failures[out.node_id] = ("duplicate-commitment", f"node {other}'s commitment, copied")
                return
            part = reply_metrics(out.reply).get("partition-id")
            self.registry[out.node_id] = {
                "commitment": hexed,
                "identity": rep.identity,
                "partition": int(part) if part is not None and float(part).is_integer() else -1,
                "history": [],
            }
            self._save_registry()

        dispatch(
            grid,
            nodes,
            lambda n, a: Message(content, dst_node_id=n, message_type=MUNKEY_COMMIT),
            deadline_s=self.cfg.commit_deadline_s or 2 * self.cfg.deadline_s,
            max_attempts=self.cfg.max_attempts,
            max_in_flight=self.cfg.max_in_flight,
            on_outcome=on_outcome,
        )
        log.info("munkey commit: %d nodes registered, %d failed", len(self.registry), len(self.commit_failures))

    # --------------------------------------------------------------------------- delete
    def required_ids(self, req: MunkeyRequest, node: int, provider: dict[int, int]) -> list[int]:
        """The ids node ``node`` must show deleted for ``req`` (its own class rows come on top, named by it)."""
        unknown = sorted(set(req.ids) - set(provider))
        if unknown:
            raise ValueError(f"request {req.request_id}: ids {unknown[:8]} are not rows of θg's memory")
        ids = set(req.ids) | set(req.client_ids.get(node, ()))
        if req.label is not None:
            ids |= {i for i, y in provider.items() if y == req.label}
        return sorted(ids)

    def delete_round(
        self, grid: Grid, arrays: ArrayRecord, req: MunkeyRequest, rnd: int, nodes: list[int] | None = None
    ) -> None:
        """``train.munkey_delete`` with deadline and retry; each reply verified and written to the ledger."""
        rid = req.request_id
        if rid not in self.served:  # θg's memory as this request first saw it (make-up rounds reuse it)
            provider = self.provider_ids(arrays)
            self.served[rid] = provider
            self.deleted_ids |= set(self.required_ids(req, -1, provider))
            atomic_write(
                self.provider_path,
                json.dumps(
                    {
                        "served": {r: {str(i): y for i, y in m.items()} for r, m in self.served.items()},
                        "deleted_ids": sorted(self.deleted_ids),
                    }
                ).encode(),
            )
        provider = self.served[rid]
        connected = sorted(grid.get_node_ids()) if nodes is None else nodes
        targets = []
        for n in connected:
            if nodes is None and self.ledger.latest(rid, n) is not None:
                continue  # decided already (a restarted provider does not ask twice)
            if n not in self.registry:
                reason, detail = self.commit_failures.get(n, ("no-commitment", "no registered commitment"))
                self._record(rid, n, rnd, "no-commitment", f"{reason}: {detail}", attempts=0)
                continue
            targets.append(n)
        required = {n: self.required_ids(req, n, provider) for n in targets}
        done = [0]

        def make(node: int, attempt: int) -> Message:
            nonce = self.nonces.setdefault((rid, node), secrets.token_hex(16))
            msg = MunkeyDeleteRequest(
                rid, nonce, required[node], -1 if req.label is None else int(req.label), attempt, self.cfg.deadline_s
            )
            return Message(msg.to_content(), dst_node_id=node, message_type=MUNKEY_DELETE)

        def on_outcome(out: Outcome) -> None:
            done[0] += 1
            if self.on_progress is not None:
                self.on_progress(f"munkey {rid}", done[0], len(targets))
            self._verify(req, rnd, out, required[out.node_id], provider)

        dispatch(
            grid,
            targets,
            make,
            deadline_s=self.cfg.deadline_s,
            max_attempts=self.cfg.max_attempts,
            max_in_flight=self.cfg.max_in_flight,
            on_outcome=on_outcome,
        )

    def _verify(self, req: MunkeyRequest, rnd: int, out: Outcome, required: list[int], provider) -> None:
        rid, node = req.request_id, out.node_id
        if out.reply is None:
            self._record(rid, node, rnd, "no-response", out.detail, attempts=out.attempts)
            return
        metrics = reply_metrics(out.reply)
        try:
            rep = MunkeyDeleteReply.from_message(out.reply)
            if rep.request_id != rid or rep.nonce != self.nonces[(rid, node)]:
                raise ProtocolError("the reply does not echo this round's request id and nonce")
        except ProtocolError as err:
            self._record(rid, node, rnd, "malformed", str(err), attempts=out.attempts, metrics=metrics)
            return
        old = self.commitment(node)
        verdict = verify_deletion(
            old,
            rep.commitment,
            rep.proof,
            required,
            DeletionBinding.for_node(rid, self.nonces[(rid, node)], node),
            extra_allowed=req.label is not None,
            protected_ids=set(provider) - set(required),
        )
        if verdict.ok:  # the registry moves to the new commitment; the old one is kept in the history
            entry = self.registry[node]
            entry["history"] = entry.get("history", []) + [[rid, entry["commitment"]]]
            entry["commitment"] = rep.commitment.hex()
            self._save_registry()
        self._record(
            rid,
            node,
            rnd,
            verdict.reason,
            verdict.detail,
            attempts=out.attempts,
            metrics=metrics,
            verify_ms=verdict.verify_ms,
            deleted=len(verdict.ids),
            proof_bytes=len(rep.proof),
            old_root=old.root.hex(),
            new_root=rep.commitment.root.hex(),
        )

    def _makeup(self, grid: Grid, arrays: ArrayRecord) -> None:
        """Quarantined nodes get their failed requests again (fresh nonce); a compliant answer releases them."""
        connected = set(grid.get_node_ids())
        for node in sorted(self.ledger.quarantined()):
            if node not in self.registry or node not in connected:
                continue
            for rid in self.ledger.failed_requests(node):
                req = next((r for r in self.requests if r.request_id == rid), None)
                if req is not None:
                    self.nonces.pop((rid, node), None)
                    self.delete_round(grid, arrays, req, -1, nodes=[node])

    def _record(self, rid: str, node: int, rnd: int, reason: str, detail: str, *, attempts: int, metrics=None, **kw):
        failed_elsewhere = [r for r in self.ledger.failed_requests(node) if r != rid]
        self.ledger.append(
            {
                "request_id": rid,
                "node_id": int(node),
                "partition_id": self.registry.get(node, {}).get("partition", -1),
                "server_round": rnd,
                "nonce": self.nonces.get((rid, node), ""),
                "reason": reason,
                "detail": detail,
                "attempts": attempts,
                "client_prove_ms": (metrics or {}).get("prove-ms"),
                "quarantined": reason != "compliant" or bool(failed_elsewhere),
                **kw,
            }
        )
        if reason != "compliant":
            log.info("munkey request %s: node %d %s (%s)", rid, node, reason, detail)

    def quarantined(self) -> set[int]:
        return self.ledger.quarantined()
