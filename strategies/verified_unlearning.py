"""The provider: verified unlearning around any Flower strategy (docs/protocol.md §2, §4, §5).

``VerifiedUnlearning`` is a ``flwr.serverapp.strategy.Strategy`` that wraps another one (FedAvg by
default) the way Flower's differential-privacy wrappers do: the wrapped strategy still samples,
configures and aggregates every ordinary training round; the wrapper adds the unlearning phases.

    strategy = VerifiedUnlearning(FedAvg(), masker=SaliencyMasker(...), requests=[...], state_dir="provider")
    result = strategy.start(grid, initial_arrays, num_rounds=3, evaluate_fn=central_eval)
    result.save("out")   # result.json: per-round metrics and, per deletion, θg evaluated before and after

Schedule. Training rounds 1…N run through the wrapped strategy, **without quarantined nodes** (it
samples from a view of the Grid that hides them, and a round it could not fill is skipped rather
than left waiting). After round r (r = 0: before training), every request with ``after_round == r``
is served: first, once, the personalize-and-commit round (``train.commit``: commitments fixed before
any mask exists; persisted in the registry), then per request the mask on the current θg and a
``train.unlearn`` round with deadline and retry. Each reply is verified on arrival (§4), written to
the ledger, and a compliant node's registry entry moves to θu. Nodes with a non-compliant latest
outcome are quarantined; before serving a new request, quarantined nodes are sent their failed
requests again (``makeup``) and are released when all of them comply. Registry and ledger live in one
SQLite store, ``state_dir/provider.db``; a verdict's ledger row and registry update are one
transaction, and a restarted provider skips nodes already registered and (request, node) pairs
already decided.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import NamedTuple

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info

from zkapex_flwr.proof import Verifier, get_circuit
from zkapex_flwr.proof.circuit import CircuitSpec
from zkapex_flwr.proof.commitments import BlockCommitments
from zkapex_flwr.proof.statement import Binding
from zkapex_flwr.proof.verifier import Verdict
from zkapex_flwr.protocol import (
    CLIENT_METRICS,
    COMMIT,
    UNLEARN,
    CommitReply,
    CommitRequest,
    ProtocolError,
    UnlearnReply,
    UnlearnRequest,
    reply_metrics,
)
from zkapex_flwr.unlearning import UnlearningMask

from .dispatch import Outcome, dispatch
from .ledger import Ledger, LedgerRow
from .masking import DeletionRequest, SaliencyMasker
from .registry import Registry
from .result import DeletionRecord, UnlearningResult
from .rounds import federated_evaluate, run_rounds
from .store import ProviderStore

log = logging.getLogger("zkapex_flwr.provider")


@dataclass
class UnlearningConfig:
    """The provider's unlearning settings (scope, circuit menu, personalization budget, deadlines)."""

    slots: int = 2  # K masked columns per proof step
    scale: int = 16  # fixed-point bits S
    steps: tuple[int, ...] = (1,)  # circuit menu: steps per proof B (each node picks by memory)
    damping: float = 0.01
    num_grads: int = 64
    personal_epochs: int = 5
    personal_lr: float = 1e-3
    batch_size: int = 32
    deadline_s: float = 600.0  # per attempt, from the moment the message is pushed
    max_attempts: int = 2
    max_in_flight: int = 0  # 0: every node at once
    commit_deadline_s: float | None = None  # default: 2 × deadline_s
    makeup: bool = True  # re-send failed requests to quarantined nodes


@dataclass(frozen=True)
class _Refusal:
    """Why a commit reply was not registered (its reason code and detail)."""

    reason: str
    detail: str


class _Accepted(NamedTuple):
    """A well-formed commit reply: what the registry records for the node."""

    entry: BlockCommitments
    spec: CircuitSpec
    partition: int | None
    identity: str


@dataclass
class _GridView:
    """A Grid whose node list hides quarantined nodes (for the wrapped strategy's sampling)."""

    grid: Grid
    hidden: set[int] = field(default_factory=set)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.grid.get_node_ids() if n not in self.hidden]

    def __getattr__(self, name):
        return getattr(self.grid, name)


class VerifiedUnlearning(Strategy):
    """A Flower :class:`~flwr.serverapp.strategy.Strategy` that adds verified unlearning to the one it wraps.

    The five strategy methods delegate to the wrapped strategy, the way Flower's differential-privacy
    wrappers do, with two changes: quarantined nodes are hidden from its sampling (and dropped from
    whatever it returns), and deleted weights stay at zero in every θg it sends or aggregates.
    :meth:`start` is Flower's round loop with the unlearning phases added after the rounds the
    requests name; :meth:`serve_requests` serves them for users who run their own loop.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        masker: SaliencyMasker,
        requests: list[DeletionRequest],
        state_dir: str | Path,
        config: UnlearningConfig | None = None,
        store_name: str = "provider.db",
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        self.strategy = strategy if strategy is not None else FedAvg()
        self.masker = masker
        self.requests = sorted(requests, key=lambda r: r.after_round)
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"deletion request ids must be unique, got {ids}")
        self.cfg = config or UnlearningConfig()
        self.state_dir = Path(state_dir)
        self.store = ProviderStore(self.state_dir / store_name)  # registry + ledger, one transaction per verdict
        self.registry = Registry(self.store)
        self.ledger = Ledger(self.store)
        self.on_progress = on_progress
        self.layout = masker.layout()
        self.menu = [
            CircuitSpec(d=masker.block_size, slots=self.cfg.slots, scale=self.cfg.scale, steps=b, group=masker.group)
            for b in sorted(set(self.cfg.steps))
        ]
        self.circuits = {c.circuit_id: c for c in (get_circuit(s) for s in self.menu)}
        self.verifiers = {cid: Verifier(c) for cid, c in self.circuits.items()}
        # node -> (reason, detail) of its failed commit; persisted, so a restarted provider does not ask again
        self.commit_failures: dict[int, tuple[str, str]] = {
            n: (r, d) for n, (r, d, _) in self.registry.failures().items()
        }
        self.masks: dict[str, UnlearningMask] = {}
        self.nonces: dict[tuple[str, int], str] = {}
        self.participants: dict[int, list[int]] = {}  # training round -> nodes sent a train message
        self.partitions = self.registry.partitions()  # node -> partition id (client-reported, bookkeeping)
        self.reply_audit: list[dict] = []  # what each unlearning reply carried (no weights)

    # ------------------------------------------------------------- the wrapped strategy
    def nodes_needed(self, phase: str) -> int:
        """How many sampleable nodes the wrapped strategy waits for in ``phase`` ("train" or "evaluate").

        Flower's strategies block until ``max(min_available_nodes, min_<phase>_nodes)`` nodes are
        connected; with quarantined nodes hidden that may never happen, so the round is skipped instead.
        A phase whose fraction is 0 needs none."""
        if getattr(self.strategy, f"fraction_{phase}", None) == 0.0:
            return 0
        return max(
            int(getattr(self.strategy, "min_available_nodes", 0) or 0),
            int(getattr(self.strategy, f"min_{phase}_nodes", 0) or 0),
        )

    def _sampleable(self, grid: Grid, phase: str, server_round: int) -> _GridView | None:
        view = grid if isinstance(grid, _GridView) else _GridView(grid)
        view.hidden = self.ledger.quarantined()
        visible = len(list(view.get_node_ids()))
        need = self.nodes_needed(phase)
        if visible < need:
            log.warning(
                "round %d: %s skipped: %d nodes outside quarantine, %s needs %d",
                server_round,
                phase,
                visible,
                type(self.strategy).__name__,
                need,
            )
            return None
        return view

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's training messages, to nodes outside quarantine, with θg's deletions applied."""
        view = self._sampleable(grid, "train", server_round)
        msgs = (
            []
            if view is None
            else [
                m
                for m in self.strategy.configure_train(server_round, self.forget_in_global(arrays), config, view)
                if m.metadata.dst_node_id not in view.hidden
            ]
        )  # never trust a strategy's sampling
        self.participants[server_round] = sorted(m.metadata.dst_node_id for m in msgs)
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregate; deleted weights stay deleted, whatever the clients sent."""
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        return (self.forget_in_global(arrays) if arrays is not None else None), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        view = self._sampleable(grid, "evaluate", server_round)
        if view is None:
            return []
        return [
            m
            for m in self.strategy.configure_evaluate(server_round, self.forget_in_global(arrays), config, view)
            if m.metadata.dst_node_id not in view.hidden
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        flwr_log(INFO, "\t├──> Verified unlearning (ZK-APEX):")
        flwr_log(
            INFO,
            "\t│\t├── Requests: %s",
            ", ".join(f"{r.request_id} after round {r.after_round}" for r in self.requests) or "none",
        )
        flwr_log(
            INFO,
            "\t│\t├── Scope: %s (%d weights in %d blocks of %d)",
            self.masker.scope,
            self.layout.size,
            self.layout.n_blocks,
            self.masker.block_size,
        )
        flwr_log(INFO, "\t│\t├── Circuits: %s", ", ".join(c.spec.name() for c in self.circuits.values()))
        flwr_log(INFO, "\t│\t└── Store: %s", self.store.path)
        flwr_log(INFO, "\t└──> Wrapped strategy: %s", type(self.strategy).__name__)
        self.strategy.summary()

    # ------------------------------------------------------------------------------- schedule
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> UnlearningResult:
        """Flower's round loop (same logs, same :class:`Result`) with the unlearning phases added.

        After round r (r = 0: before the first), every request with ``after_round == r`` is served by
        :meth:`serve_requests`; θg is evaluated (``evaluate_fn`` and the wrapped strategy's federated
        evaluation) right before and right after, and both land in the result's ``deletions``."""
        flwr_log(INFO, "Starting %s strategy:", type(self).__name__)
        log_strategy_start_info(num_rounds, initial_arrays, train_config, evaluate_config)
        self.summary()
        flwr_log(INFO, "")
        late = [r.request_id for r in self.requests if r.after_round > num_rounds]
        if late:
            log.warning("requests %s come after the last round (%d) and are not served by this run", late, num_rounds)

        def on_train(rnd: int, msgs) -> None:
            log.info("round %d: training on %d nodes (%d quarantined)", rnd, len(msgs), len(self.ledger.quarantined()))

        return run_rounds(
            self,
            grid,
            self.forget_in_global(initial_arrays),  # a restarted provider keeps earlier deletions
            UnlearningResult(),
            num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
            on_train=on_train,
        )

    def _federated_evaluate(
        self, grid: Grid, rnd: int, arrays: ArrayRecord, config: ConfigRecord, timeout: float
    ) -> MetricRecord | None:
        return federated_evaluate(self, grid, rnd, arrays, config, timeout)

    def deletion_phase(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        rnd: int,
        result: UnlearningResult,
        *,
        timeout: float = 3600,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn=None,
        before: dict | None = None,
    ) -> ArrayRecord:
        """The requests due after round ``rnd``, then those of a wrapped deletion strategy; returns θg.

        What :meth:`start` runs after each round. A wrapped strategy with a ``deletion_phase`` of its
        own (e.g. :class:`~strategies.mpu.MPUUnlearning`, client-initiated MPU requests) runs right after
        this one's requests, on the θg they left, with its records appended to the same ``result``; the
        weights deleted here stay zero in what it returns."""
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        arrays, after = self._own_deletion_phase(
            grid, arrays, rnd, result, timeout, evaluate_config, evaluate_fn, before
        )
        inner = getattr(self.strategy, "deletion_phase", None)
        if callable(inner):
            arrays = self.forget_in_global(
                inner(
                    grid,
                    arrays,
                    rnd,
                    result,
                    timeout=timeout,
                    evaluate_config=evaluate_config,
                    evaluate_fn=evaluate_fn,
                    before=after,
                )
            )
            result.arrays = arrays
        return arrays

    def _own_deletion_phase(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        rnd: int,
        result: UnlearningResult,
        timeout: float,
        evaluate_config: ConfigRecord,
        evaluate_fn,
        before: dict | None,
    ) -> tuple[ArrayRecord, dict | None]:
        """This strategy's requests due after ``rnd``: θg after them and its evaluations (None: nothing due)."""
        due = [r for r in self.requests if r.after_round == rnd]
        if not due:
            return arrays, before
        flwr_log(INFO, "")
        flwr_log(INFO, "[UNLEARNING after round %s: %s]", rnd, ", ".join(r.request_id for r in due))
        before = (
            dict(before)
            if before is not None
            else {
                "serverapp": result.evaluate_metrics_serverapp.get(rnd),
                "clientapp": result.evaluate_metrics_clientapp.get(rnd),
            }
        )
        after_arrays = self.serve_requests(grid, arrays, rnd)
        after = {
            "serverapp": evaluate_fn(rnd, after_arrays) if evaluate_fn else None,
            "clientapp": self._federated_evaluate(grid, rnd, after_arrays, evaluate_config, timeout),
        }
        outcomes = self.ledger.outcomes()
        for req in due:
            rows = outcomes[outcomes["request_id"] == req.request_id] if len(outcomes) else outcomes
            verdicts = {str(k): int(v) for k, v in rows["reason"].value_counts().items()} if len(rows) else {}
            mask = self.masks.get(req.request_id)
            result.deletions.append(
                DeletionRecord(
                    request_id=req.request_id,
                    after_round=rnd,
                    description=req.description,
                    masked_weights=len(mask) if mask is not None else 0,
                    verdicts=verdicts,
                    quarantined=sorted(self.ledger.quarantined()),
                    evaluate_before={k: v for k, v in before.items() if v is not None},
                    evaluate_after={k: v for k, v in after.items() if v is not None},
                )
            )
            flwr_log(INFO, "\t└──> %s: %s", req.request_id, ", ".join(f"{n} {r}" for r, n in verdicts.items()))
        if after["serverapp"] is not None:
            flwr_log(INFO, "\t└──> Global evaluation after the deletion: %s", after["serverapp"])
        result.arrays = after_arrays
        return after_arrays, after

    def serve_requests(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Serve the requests due after ``server_round``; returns θg with their deletions applied.

        For users with their own round loop: call it after each round with the current θg (it is a
        no-op when no request is due). Nodes are committed first (once), then each request is masked,
        broadcast, proven by the clients and verified; the outcome is in :attr:`ledger`."""
        due = [r for r in self.requests if r.after_round == server_round]
        if not due:
            return arrays
        self.commit_round(grid, arrays)
        for req in due:
            if self.cfg.makeup:
                self._makeup(grid)
            self.unlearn_round(grid, arrays, req, server_round)
        return self.forget_in_global(arrays)

    # ------------------------------------------------------------------- phase 2: commit
    def commit_round(self, grid: Grid, arrays: ArrayRecord) -> None:
        """Personalize-and-commit for every connected node that has no registry entry yet."""
        nodes = [n for n in sorted(grid.get_node_ids()) if n not in self.registry and n not in self.commit_failures]
        if not nodes:
            return
        content = self._commit_request().to_content(arrays)
        done = [0]

        def on_outcome(out: Outcome) -> None:
            done[0] += 1
            self._progress("commit", done[0], len(nodes))
            accepted = self._commit_reply(out)
            if isinstance(accepted, _Refusal):
                self._commit_failed(out.node_id, accepted.reason, accepted.detail)
                return
            entry, spec, part, identity = accepted
            holder = self.registry.identity_holder(identity)
            if holder is not None and holder != out.node_id:
                self._commit_failed(
                    out.node_id,
                    "duplicate-identity",
                    f"commit reply: identity {identity[:80]!r} is "
                    f"node {holder}'s (a node does not start afresh under a new node id)",
                )
                return
            other = self.registry.duplicate_of(out.node_id, entry)
            if other is not None:
                self._commit_failed(
                    out.node_id,
                    "duplicate-commitment",
                    f"commit reply: the commitments are node {other}'s, copied",
                    identity,
                )
                return
            if part is not None:
                self.partitions[out.node_id] = part
            self.registry.register(out.node_id, entry, spec, partition_id=part, identity=identity)

        dispatch(
            grid,
            nodes,
            lambda n, a: Message(content, dst_node_id=n, message_type=COMMIT),
            deadline_s=self.cfg.commit_deadline_s or 2 * self.cfg.deadline_s,
            max_attempts=self.cfg.max_attempts,
            max_in_flight=self.cfg.max_in_flight,
            on_outcome=on_outcome,
        )
        log.info("commit: %d nodes registered, %d failed", len(self.registry), len(self.commit_failures))

    def _commit_request(self) -> CommitRequest:
        return CommitRequest(
            scope=self.masker.scope,
            block_size=self.masker.block_size,
            layout_digest=self.layout.digest(),
            circuits=self.menu,
            damping=self.cfg.damping,
            num_grads=self.cfg.num_grads,
            personal_epochs=self.cfg.personal_epochs,
            personal_lr=self.cfg.personal_lr,
            batch_size=self.cfg.batch_size,
            deleted=active.to_bytes() if (active := self.deleted()) is not None else b"",
        )

    def deleted(self) -> UnlearningMask | None:
        """The union of every request's mask broadcast so far (None before the first)."""
        masks = [m.indices for m in self.masks.values()]
        for req in self.requests:
            if req.request_id not in self.masks and (known := self.ledger.broadcast(req.request_id)) is not None:
                masks.append(UnlearningMask.from_bytes(known[1], self.layout).indices)
        return UnlearningMask(torch.unique(torch.cat(masks)), self.layout) if masks else None

    def forget_in_global(self, arrays: ArrayRecord) -> ArrayRecord:
        """θg with every deleted scope weight at zero (after a request, and after every later aggregate)."""
        active = self.deleted()
        if active is None or not len(arrays):
            return arrays
        model = self.masker.model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        flat = self.layout.flatten(model)
        flat[active.indices] = 0.0
        self.layout.assign(model, flat)
        return ArrayRecord(model.state_dict())

    def _commit_failed(self, node: int, reason: str, detail: str, identity: str = "") -> None:
        self.commit_failures[node] = (reason, detail)
        self.registry.record_failure(node, reason, detail, identity)

    def _commit_reply(self, out: Outcome):
        """The :class:`_Accepted` parts of a well-formed commit reply, else a :class:`_Refusal`."""
        if out.reply is None:
            return _Refusal("no-response", f"commit round: {out.detail}")
        try:
            rep = CommitReply.from_message(out.reply)
            entry = BlockCommitments.from_bytes(rep.registry)
            if rep.circuit_id not in self.circuits:
                raise ProtocolError(f"circuit {rep.circuit_id} is not in the provider's circuit menu")
            if entry.circuit_id != rep.circuit_id and entry.circuit_id not in self.circuits:
                raise ProtocolError(
                    f"the registry entry names circuit {entry.circuit_id[:80]!r}, which is not "
                    "in the provider's circuit menu"
                )
            if rep.circuit != self.circuits[rep.circuit_id].spec:
                raise ProtocolError(f"'circuit' {rep.circuit} is not the shape of circuit {rep.circuit_id}")
            spec = self.circuits[entry.circuit_id].spec
            entry.check_shape(spec, self.layout.n_blocks // spec.group)
            metrics = reply_metrics(out.reply)
            part = metrics.get("partition-id")
            if part is not None and not (part.is_integer() and 0 <= part < 2**31):
                raise ProtocolError(f"metric 'partition-id' must be a partition number, got {part!r}")
        except (ProtocolError, ValueError, KeyError) as err:
            return _Refusal("malformed", f"commit reply: {err}")
        if entry.circuit_id != rep.circuit_id:
            return _Refusal(
                "wrong-circuit",
                f"the registry entry was made for circuit {entry.circuit_id[:12]}…, the reply "
                f"names {rep.circuit_id[:12]}…",
            )
        if rep.layout_digest != self.layout.digest() or entry.layout_digest != self.layout.digest():
            return _Refusal("wrong-mask", "committed to another block layout")
        return _Accepted(
            entry, self.circuits[rep.circuit_id].spec, int(part) if part is not None else None, rep.identity
        )

    def repersonalize(self, grid: Grid, arrays: ArrayRecord, node: int, *, reason: str, rnd: int = -1) -> bool:
        """Let a registered node personalize again from ``arrays`` and replace its entry (logged).

        The node inherits every active deletion: each request broadcast so far is asked again and judged
        against the new entry. Returns whether the node registered again (a failed attempt keeps the old
        entry and changes nothing)."""
        if node not in self.registry:
            raise ValueError(f"node {node} is not registered: a first personalization goes through the commit round")
        outcome: list[Outcome] = []
        dispatch(
            grid,
            [node],
            lambda n, a: Message(self._commit_request().to_content(arrays), dst_node_id=n, message_type=COMMIT),
            deadline_s=self.cfg.commit_deadline_s or 2 * self.cfg.deadline_s,
            max_attempts=self.cfg.max_attempts,
            max_in_flight=1,
            on_outcome=outcome.append,
        )
        accepted = self._commit_reply(outcome[0]) if outcome else _Refusal("no-response", "commit round: no outcome")
        if isinstance(accepted, _Refusal):
            log.warning(
                "node %d: re-personalization refused (%s: %s); its entry is unchanged",
                node,
                accepted.reason,
                accepted.detail,
            )
            return False
        entry, spec, _, identity = accepted
        if identity != (self.registry.record(node)["identity"] or ""):
            log.warning(
                "node %d: re-personalization refused (it reports another identity); its entry is unchanged", node
            )
            return False
        if self.registry.duplicate_of(node, entry) is not None:
            log.warning(
                "node %d: re-personalization refused (another node's commitments); its entry is unchanged", node
            )
            return False
        self.registry.repersonalize(node, entry, spec, reason=reason)
        for req in self.requests:
            if req.request_id in self.masks or self.ledger.broadcast(req.request_id) is not None:
                self.nonces.pop((req.request_id, node), None)
                self.unlearn_round(grid, arrays, req, rnd, nodes=[node])
        return True

    # ------------------------------------------------------------------ phase 4/5: unlearn
    def unlearn_round(
        self, grid: Grid, arrays: ArrayRecord, request: DeletionRequest, rnd: int, nodes: list[int] | None = None
    ) -> None:
        """Mask on θg, ``train.unlearn`` with deadline and retry, verification and ledger rows."""
        rid = request.request_id
        if rid not in self.masks:  # the first broadcast fixes the mask; a restarted provider sends it again
            known = self.ledger.broadcast(rid)
            if known is not None:
                mask = UnlearningMask.from_bytes(known[1], self.layout)
            else:  # a node's obligation is every active deletion: the new mask joins the earlier ones
                mask = self.masker(arrays, request)
                active = self.deleted()
                if active is not None:
                    mask = UnlearningMask(torch.unique(torch.cat([mask.indices, active.indices])), self.layout)
            self.ledger.record_broadcast(rid, self.layout.digest(), mask.to_bytes())
            self.masks[rid] = mask
            log.info("request %s: %d masked weights in %d blocks", rid, len(mask), len(mask.touched_blocks()))
        mask = self.masks[rid]
        broadcast_epoch = self.ledger.broadcast(rid)[0]
        connected = sorted(grid.get_node_ids()) if nodes is None else nodes
        if nodes is None:  # a restarted provider does not ask twice; a re-personalized node is asked again
            decided = {
                n
                for n, at in self.ledger.decided_at(rid).items()
                if n not in self.registry or at > self.registry.registration(n)[0]
            }
        else:
            decided = set()
        failures = self.registry.failures()
        for n in connected:
            if n in self.commit_failures and n not in self.registry and self._latest_reason(rid, n) is None:
                reason, detail = self.commit_failures[n]
                self._record(rid, n, rnd, reason, detail, attempts=0)
        targets = []
        for n in connected:
            if n not in self.registry or n in decided:
                continue
            epoch, kind = self.registry.registration(n)
            if kind == "commit" and epoch > broadcast_epoch:
                if n in failures and failures[n][2] < broadcast_epoch and self._latest_reason(rid, n) != "late-commit":
                    # it failed to commit before the mask went out and registered after seeing it
                    self.nonces[(rid, n)] = secrets.token_hex(16)
                    self._record(
                        rid,
                        n,
                        rnd,
                        "late-commit",
                        f"registered at epoch {epoch}, after this request's "
                        f"mask was broadcast (epoch {broadcast_epoch}); its commit had failed at epoch "
                        f"{failures[n][2]}",
                        attempts=0,
                    )
                continue  # a node that joined after the broadcast inherits the deletion through θg
            targets.append(n)
        layout_json = json.dumps(self.layout.to_dict())
        mask_bytes = mask.to_bytes()
        done = [0]

        def make(node: int, attempt: int) -> Message:
            nonce = self.nonces.setdefault((rid, node), secrets.token_hex(16))
            _, cid = self.registry.circuit_of(node)
            req = UnlearnRequest(
                rid, nonce, mask_bytes, layout_json, self.layout.digest(), cid, attempt, float(self.cfg.deadline_s)
            )
            return Message(req.to_content(), dst_node_id=node, message_type=UNLEARN)

        def on_outcome(out: Outcome) -> None:
            done[0] += 1
            self._progress(f"unlearn {rid}", done[0], len(targets))
            self._verify_outcome(rid, rnd, mask, out)

        dispatch(
            grid,
            targets,
            make,
            deadline_s=self.cfg.deadline_s,
            max_attempts=self.cfg.max_attempts,
            max_in_flight=self.cfg.max_in_flight,
            on_outcome=on_outcome,
        )

    def _verify_outcome(self, rid: str, rnd: int, mask: UnlearningMask, out: Outcome) -> None:
        node = out.node_id
        if out.reply is None:
            self._record(rid, node, rnd, "no-response", out.detail, attempts=out.attempts)
            return
        metrics = reply_metrics(out.reply)
        try:
            content_bytes = sum(r.count_bytes() for r in out.reply.content.values())
        except (ValueError, IndexError):  # Flower's count_bytes fails on an empty str/bytes/list value
            content_bytes = sum(len(r.deflate()) for r in out.reply.content.values())
        self.reply_audit.append(
            {
                "request_id": rid,
                "node_id": int(node),
                "array_records": len(out.reply.content.array_records),
                "content_bytes": content_bytes,
            }
        )
        try:
            rep = UnlearnReply.from_message(out.reply)
        except ProtocolError as err:
            self._record(rid, node, rnd, "malformed", str(err), attempts=out.attempts, metrics=metrics)
            return
        if rep.request_id != rid or rep.nonce != self.nonces[(rid, node)]:
            bad = "request-id" if rep.request_id != rid else "nonce"
            self._record(
                rid,
                node,
                rnd,
                "malformed",
                f"{UNLEARN} reply: '{bad}' "
                f"{getattr(rep, bad.replace('-', '_'))[:80]!r} does not echo this round's request",
                attempts=out.attempts,
                metrics=metrics,
            )
            return
        spec, cid = self.registry.circuit_of(node)
        try:
            verdict = self.verifiers[cid].verify(
                rep.bundle,
                self.registry.get(node),
                mask,
                menu=self.circuits,
                request_id=rid,
                binding=Binding.for_node(rid, self.nonces[(rid, node)], node),
            )
        except Exception as err:  # a bundle that crashes the verifier is refused; the round goes on
            log.exception("request %s: verifying node %d's bundle raised", rid, node)
            verdict = Verdict("malformed", f"the bundle could not be verified ({type(err).__name__}: {err})")
        with self.store.transaction():  # the ledger row and the move to θu: both or neither
            if verdict.compliant:
                self.registry.update_theta(node, verdict.new_theta)
            self._record(
                rid,
                node,
                rnd,
                verdict.reason,
                verdict.detail,
                attempts=out.attempts,
                metrics=metrics,
                verify_ms=verdict.verify_ms,
                proofs=verdict.steps_verified,
                bundle_bytes=len(rep.bundle),
                circuit=spec.name(),
            )

    def _makeup(self, grid: Grid) -> None:
        """Quarantined nodes get their failed requests again; a compliant answer releases them."""
        for node in sorted(self.ledger.quarantined()):
            if node not in self.registry or node not in set(grid.get_node_ids()):
                continue
            for rid in self.ledger.failed_requests(node):
                req = next((r for r in self.requests if r.request_id == rid), None)
                if req is not None and rid in self.masks:
                    self.nonces.pop((rid, node), None)
                    self.unlearn_round(grid, ArrayRecord(), req, -1, nodes=[node])

    # ---------------------------------------------------------------------------- records
    def _record(
        self,
        rid: str,
        node: int,
        rnd: int,
        reason: str,
        detail: str,
        *,
        attempts: int,
        metrics: dict | None = None,
        verify_ms: float | None = None,
        proofs: int = 0,
        bundle_bytes: int = 0,
        circuit: str = "",
    ) -> None:
        failed_elsewhere = [r for r in self.ledger.failed_requests(node) if r != rid]
        row = LedgerRow(
            rid,
            int(node),
            reason,
            detail,
            partition_id=self.partitions.get(node, -1),
            server_round=rnd,
            nonce=self.nonces.get((rid, node), ""),
            attempts=attempts,
            verify_ms=verify_ms,
            proofs=proofs,
            bundle_bytes=bundle_bytes,
            circuit=circuit,
            quarantined=reason != "compliant" or bool(failed_elsewhere),
            client={k: v for k, v in (metrics or {}).items() if k in CLIENT_METRICS},
        )
        self.ledger.append([row])
        if reason != "compliant":
            log.info("request %s: node %d %s (%s)", rid, node, reason, detail)

    def _latest_reason(self, rid: str, node: int) -> str | None:
        rows = self.store.query(
            "SELECT reason FROM ledger WHERE request_id = ? AND node_id = ? ORDER BY seq DESC LIMIT 1",
            (rid, str(int(node))),
        )
        return rows[0][0] if rows else None

    def _progress(self, phase: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(phase, done, total)

    def quarantined(self) -> set[int]:
        return self.ledger.quarantined()
