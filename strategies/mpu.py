"""MPU over Flower: a client unlearns its own data without seeing θ (arXiv 2602.23798).

``MPUUnlearning`` is a ``flwr.serverapp.strategy.Strategy`` that wraps another one (FedAvg by default)
like :class:`~strategies.verified_unlearning.VerifiedUnlearning` does: the wrapped strategy samples,
configures and aggregates every ordinary round; the wrapper serves clients' unlearning requests.

    strategy = MPUUnlearning(FedAvg(), model_fn=Net, config=MPUConfig(copies=3, rounds=2, algorithm="graddiff"),
                             requests=[MPURequest("r1", node_id=101, after_round=2)])
    result = strategy.start(grid, initial_arrays, num_rounds=3, evaluate_fn=central_eval)

Requests come from the client. Out of band, the operator passes an :class:`MPURequest` (node, round
after which to serve it); in band, a node's reply to an ordinary ``train`` message carries the metric
``mpu-request`` = 1 (:class:`~zkapex_flwr.client.mpu.MPUMod` does this when its setup says
``request=True``), and the request is served after that round. The metric is removed before the
wrapped strategy aggregates. A node has at most one open request.

Serving one request, for r = 1 … R: Pre-Process (:func:`zkapex_flwr.mpu.perturb.make_copies`: m
copies of the current θ, each with zero-sum noise scaled by its α and a secret function-preserving
reparameterization), one ``train.mpu`` message to the requesting node with the copies, the local
algorithm and its budget (:mod:`zkapex_flwr.mpu.messages`: never θ, α, the noise or the
reparameterization; a retry sends the *same* copies, so retries give the node no fresh noise to
average), deadline and retry through :func:`~strategies.dispatch.dispatch`, screening of the m
inverted updates (:mod:`zkapex_flwr.mpu.screen`), and Post-Process
(:func:`zkapex_flwr.mpu.denoise.post_process`) into the next θ. The request is atomic: θ moves only
when all R rounds were accepted. Outcomes (``ledger`` rows, one per round served):

* ``accepted`` — the round's updates passed the screen and were merged;
* ``flagged`` — the m updates are inconsistent (the screen's score crossed its threshold) or there
  is no update at all (the copies came back unchanged): the node is quarantined for MPU;
* ``malformed`` — the reply breaks the wire format, does not echo the round, or its copies have other
  names/shapes or non-finite values: quarantined too;
* ``no-response`` — no reply within the deadline on every attempt; ``client-error`` — the node
  answered with an error (e.g. it holds no forget set) on every attempt. Neither quarantines;
* ``refused`` — the node is quarantined for MPU: it is sent nothing.

A request is served once: one that ended without a reply is not re-sent (the node may ask again, and
an :class:`~zkapex_flwr.client.mpu.MPUMod` node asking in band keeps asking until it has answered a
request's last round). A quarantined node's later requests are refused; with
``hide_quarantined=True`` it is also hidden from the wrapped strategy's sampling. The ledger is kept
in memory (:meth:`MPULedger.frame`) and, with ``ledger_path``, as a CSV rewritten atomically after
every row. Each request also becomes an :class:`MPUDeletionRecord` in the result, with θ's evaluation
right before and after it.

What this protects, and what not. The requesting node sees only the copies; the screen only checks that
the m updates agree (:mod:`zkapex_flwr.mpu.screen`: a consistent update on other data passes). With
``MPUConfig.defence = "none"`` a node that knows m, the α's and the scheme can rebuild θ up to a
reparameterization from one round's copies (:mod:`zkapex_flwr.mpu.attack`); the defence noises bound
that at the cost documented in :mod:`zkapex_flwr.mpu.perturb`. The wrapped strategy's own rounds still
send θ to the nodes it samples (ordinary federated training): MPU covers the unlearning exchange.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info
from torch import nn

from zkapex_flwr.files import atomic_write
from zkapex_flwr.mpu.messages import (
    MPU_UNLEARN,
    MPUTrainReply,
    MPUTrainRequest,
    asks_for_unlearning,
    content_bytes,
    reply_metrics,
    strip_request_metric,
)
from zkapex_flwr.protocol import ProtocolError

from .dispatch import Outcome, dispatch
from .result import DeletionRecord, UnlearningResult
from .rounds import federated_evaluate, run_rounds

log = logging.getLogger("zkapex_flwr.mpu")

OUTCOMES = ("accepted", "flagged", "malformed", "no-response", "client-error", "refused")
QUARANTINING = ("flagged", "malformed")


@dataclass(frozen=True)
class MPURequest:
    """A node asks that its (private) forget set be unlearned from θ after training round ``after_round``."""

    request_id: str
    node_id: int
    after_round: int = 0
    description: str = ""


@dataclass
class MPUDeletionRecord(DeletionRecord):
    """One served MPU request (a :class:`DeletionRecord`; ``masked_weights`` is 0: MPU masks nothing)."""

    node_id: int = -1
    outcome: str = ""
    detail: str = ""
    rounds_done: int = 0  # rounds accepted (θ moved only if rounds_done == rounds)
    rounds: int = 0
    consistency: list[float] = field(default_factory=list)  # screen score per round answered
    wall_s: float = 0.0
    bytes_sent: int = 0  # train.mpu payloads pushed, retries included
    bytes_received: int = 0


@dataclass
class MPUResult(UnlearningResult):
    """:class:`UnlearningResult` whose deletions are :class:`MPUDeletionRecord`."""

    def __repr__(self) -> str:
        text = io.StringIO()
        text.write(super(UnlearningResult, self).__repr__())
        text.write("\nMPU requests:\n")
        for d in self.deletions:
            text.write(
                f"\t{d.request_id} (node {getattr(d, 'node_id', '?')}) after round {d.after_round}: "
                f"{getattr(d, 'outcome', '')}, {getattr(d, 'rounds_done', 0)}/{getattr(d, 'rounds', 0)} rounds\n"
            )
        return text.getvalue()


@dataclass
class MPULedgerRow:
    request_id: str
    node_id: int
    outcome: str
    detail: str = ""
    after_round: int = -1
    mpu_round: int = 0  # r of R (0: nothing was sent)
    rounds: int = 0
    consistency: float | None = None
    attempts: int = 0
    wall_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    quarantined: bool = False
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))


class MPULedger:
    """The MPU outcomes, one row per (request, round) served; the latest row of a request is its outcome."""

    COLUMNS = tuple(f.name for f in fields(MPULedgerRow))

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.rows: list[MPULedgerRow] = []

    def append(self, row: MPULedgerRow) -> None:
        if row.outcome not in OUTCOMES:
            raise ValueError(f"unknown MPU outcome '{row.outcome}'; known: {OUTCOMES}")
        self.rows.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=self.COLUMNS)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
            atomic_write(self.path, buf.getvalue().encode())

    def frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows], columns=list(self.COLUMNS))

    def outcome(self, request_id: str) -> MPULedgerRow | None:
        rows = [r for r in self.rows if r.request_id == request_id]
        return rows[-1] if rows else None


@dataclass
class _GridView:
    """A Grid whose node list hides some nodes (for the wrapped strategy's sampling)."""

    grid: Grid
    hidden: set[int] = field(default_factory=set)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.grid.get_node_ids() if n not in self.hidden]

    def __getattr__(self, name):
        return getattr(self.grid, name)


def check_config(cfg) -> None:
    """Refuse an MPU configuration that would leak θ or cannot run, naming the field."""
    m = int(cfg.copies)
    alphas = tuple(cfg.alphas)
    if m < 2:
        raise ValueError(
            f"MPUConfig.copies must be ≥ 2, got {m}: the noise sums to zero over the copies, so one copy would be θ"
        )
    if len(alphas) != m:
        raise ValueError(f"MPUConfig.alphas has {len(alphas)} entries for {m} copies (one α per copy)")
    if not all(math.isfinite(a) and a > 0 for a in alphas):
        raise ValueError(f"MPUConfig.alphas must be finite and > 0, got {alphas}")
    defended = getattr(cfg, "defence", "none") != "none" and getattr(cfg, "defence_kappa", 0) > 0
    if not (math.isfinite(cfg.kappa) and cfg.kappa >= 0) or (cfg.kappa == 0 and not defended):
        raise ValueError(
            f"MPUConfig.kappa must be > 0 (or a defence noise set), got {cfg.kappa}: without noise every copy "
            "is θ up to a reparameterization"
        )
    if int(cfg.rounds) < 1:
        raise ValueError(f"MPUConfig.rounds (R) must be ≥ 1, got {cfg.rounds}")
    if int(cfg.steps) < 1 or int(cfg.batch_size) < 1:
        raise ValueError(f"MPUConfig.steps and batch_size must be ≥ 1, got {cfg.steps}, {cfg.batch_size}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"MPUConfig.lr must be > 0, got {cfg.lr}")
    from zkapex_flwr.posthoc import get_algorithm

    get_algorithm(cfg.algorithm)  # ValueError naming the known ones


class MPUUnlearning(Strategy):
    """A Flower :class:`~flwr.serverapp.strategy.Strategy` that serves MPU unlearning requests.

    The strategy methods delegate to the wrapped strategy (MPU-quarantined nodes hidden from it when
    ``hide_quarantined``); :meth:`aggregate_train` also takes in-band requests. :meth:`start` is
    Flower's round loop with the requests served after the rounds they name; :meth:`serve_requests`
    serves them for users with their own loop.

    ``model_fn`` builds the architecture θ is loaded into (Pre-Process reparameterizes a model).
    ``config`` is a :class:`zkapex_flwr.mpu.perturb.MPUConfig` (m, α, κ, R, the local algorithm and its
    steps/lr/batch size). ``screen_threshold``: the consistency score below which a reply is flagged
    (None: :data:`zkapex_flwr.mpu.screen.DEFAULT_THRESHOLD`, 0.1 — the harmonic-weighted mean pairwise
    cosine of the m inverted updates must reach it). ``accept_in_band``: honour ``mpu-request`` metrics.
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        *,
        model_fn: Callable[[], nn.Module],
        config=None,
        requests: Iterable[MPURequest] = (),
        deadline_s: float = 600.0,
        max_attempts: int = 2,
        screen_threshold: float | None = None,
        ledger_path: str | Path | None = None,
        seed: int | None = None,
        accept_in_band: bool = True,
        hide_quarantined: bool = False,
    ):
        from zkapex_flwr.mpu.perturb import MPUConfig

        self.strategy = strategy if strategy is not None else FedAvg()
        if not callable(model_fn):
            raise ValueError("model_fn must build the model architecture (a callable returning an nn.Module)")
        self.model_fn = model_fn
        self.cfg = config if config is not None else MPUConfig()
        check_config(self.cfg)
        if not (deadline_s > 0) or max_attempts < 1:
            raise ValueError(f"deadline_s must be > 0 and max_attempts ≥ 1, got {deadline_s}, {max_attempts}")
        self.deadline_s = float(deadline_s)
        self.max_attempts = int(max_attempts)
        self.screen_threshold = screen_threshold
        self.accept_in_band = accept_in_band
        self.hide_quarantined = hide_quarantined
        self.requests: list[MPURequest] = []
        for req in requests:
            self.add_request(req)
        self.ledger = MPULedger(ledger_path)
        self.quarantine: set[int] = set()
        self.served: set[str] = set()
        self.sent_log: list[dict] = []  # one entry per train.mpu pushed: request, node, round, attempt, bytes
        self._gen = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))

    # ------------------------------------------------------------------------------- requests
    def add_request(self, req: MPURequest) -> None:
        """Queue a client's request (served after its ``after_round``); ValueError on a bad one."""
        if not isinstance(req, MPURequest):
            raise ValueError(f"expected an MPURequest, got {type(req).__name__}")
        if not req.request_id:
            raise ValueError("an MPU request needs a non-empty request_id")
        if any(r.request_id == req.request_id for r in self.requests):
            raise ValueError(f"MPU request id '{req.request_id}' is already used")
        if not isinstance(req.node_id, int) or isinstance(req.node_id, bool):
            raise ValueError(f"request {req.request_id}: node_id must be an int, got {req.node_id!r}")
        if not isinstance(req.after_round, int) or req.after_round < 0:
            raise ValueError(f"request {req.request_id}: after_round must be an int ≥ 0, got {req.after_round!r}")
        self.requests.append(req)

    def _open_request_of(self, node: int) -> MPURequest | None:
        return next((r for r in self.requests if r.node_id == node and r.request_id not in self.served), None)

    def _check_nodes(self, grid: Grid) -> None:
        known = set(grid.get_node_ids())
        unknown = [(r.request_id, r.node_id) for r in self.requests if r.node_id not in known]
        if unknown:
            raise ValueError(f"MPU requests name nodes the grid does not know: {unknown}; connected: {sorted(known)}")

    # ------------------------------------------------------------- the wrapped strategy
    def nodes_needed(self, phase: str) -> int:
        """How many sampleable nodes the wrapped strategy waits for in ``phase`` ("train" or "evaluate")."""
        if getattr(self.strategy, f"fraction_{phase}", None) == 0.0:
            return 0
        return max(
            int(getattr(self.strategy, "min_available_nodes", 0) or 0),
            int(getattr(self.strategy, f"min_{phase}_nodes", 0) or 0),
        )

    def _view(self, grid: Grid, phase: str, server_round: int) -> _GridView | None:
        """The grid the wrapped strategy samples from (quarantined nodes hidden when ``hide_quarantined``);
        None when hiding leaves fewer nodes than it waits for (Flower's strategies would wait forever)."""
        view = _GridView(grid, set(self.quarantine) if self.hide_quarantined else set())
        if view.hidden:
            visible, need = len(list(view.get_node_ids())), self.nodes_needed(phase)
            if visible < need:
                log.warning(
                    "round %d: %s skipped: %d nodes outside MPU quarantine, %s needs %d",
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
        view = self._view(grid, "train", server_round)
        if view is None:
            return []
        msgs = self.strategy.configure_train(server_round, arrays, config, view.grid if not view.hidden else view)
        return [m for m in msgs if m.metadata.dst_node_id not in view.hidden]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Take in-band requests (``mpu-request`` = 1), strip the metric, then the wrapped aggregate."""
        replies = list(replies)
        for msg in replies:
            if not asks_for_unlearning(msg):
                continue
            strip_request_metric(msg)
            node = int(msg.metadata.src_node_id)
            if not self.accept_in_band or self._open_request_of(node) is not None:
                continue
            if node in self.quarantine:
                log.info("round %d: node %d asks for MPU but is quarantined", server_round, node)
                continue
            rid = f"mpu-{node}-r{server_round}"
            n = 1
            while any(r.request_id == rid for r in self.requests):
                n += 1
                rid = f"mpu-{node}-r{server_round}-{n}"
            self.add_request(MPURequest(rid, node, server_round, f"asked in its round-{server_round} train reply"))
            log.info("round %d: node %d asks for MPU unlearning (%s)", server_round, node, rid)
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        view = self._view(grid, "evaluate", server_round)
        if view is None:
            return []
        msgs = self.strategy.configure_evaluate(server_round, arrays, config, view.grid if not view.hidden else view)
        return [m for m in msgs if m.metadata.dst_node_id not in view.hidden]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        c = self.cfg
        flwr_log(INFO, "\t├──> MPU unlearning:")
        flwr_log(
            INFO,
            "\t│\t├── Requests: %s",
            ", ".join(f"{r.request_id} (node {r.node_id}) after round {r.after_round}" for r in self.requests)
            or "none yet (nodes may ask in band)",
        )
        flwr_log(INFO, "\t│\t├── m = %d copies, κ = %g, R = %d rounds", c.copies, c.kappa, c.rounds)
        flwr_log(INFO, "\t│\t└── Local algorithm: %s, %d steps, lr %g", c.algorithm, c.steps, c.lr)
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
    ) -> MPUResult:
        """Flower's round loop (same logs, a :class:`Result`) with MPU requests served after their rounds."""
        self._check_nodes(grid)
        flwr_log(INFO, "Starting %s strategy:", type(self).__name__)
        log_strategy_start_info(num_rounds, initial_arrays, train_config, evaluate_config)
        self.summary()
        flwr_log(INFO, "")
        late = [r.request_id for r in self.requests if r.after_round > num_rounds]
        if late:
            log.warning(
                "MPU requests %s come after the last round (%d) and are not served by this run", late, num_rounds
            )
        return run_rounds(
            self,
            grid,
            initial_arrays,
            MPUResult(),
            num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )

    def _federated_evaluate(
        self, grid: Grid, rnd: int, arrays: ArrayRecord, config: ConfigRecord, timeout: float
    ) -> MetricRecord | None:
        return federated_evaluate(self, grid, rnd, arrays, config, timeout)

    def _due(self, server_round: int) -> list[MPURequest]:
        return [r for r in self.requests if r.request_id not in self.served and r.after_round <= server_round]

    def deletion_phase(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        rnd: int,
        result: UnlearningResult,
        *,
        timeout: float = 3600,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        before: dict | None = None,
    ) -> ArrayRecord:
        """Serve the requests due after round ``rnd`` and append their records to ``result``; returns θ.

        What :meth:`start` runs after each round, public so that a wrapping strategy (e.g.
        :class:`~strategies.verified_unlearning.VerifiedUnlearning` around this one) runs it inside its
        own loop. ``before``: θ's evaluations right before this phase, when the wrapper already moved θ
        in this round (default: the round's own evaluations in ``result``)."""
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        due = self._due(rnd)
        # θ's evaluations so far this phase: the round's own, then the one after each request that moved θ
        current = (
            dict(before)
            if before is not None
            else {
                "serverapp": result.evaluate_metrics_serverapp.get(rnd),
                "clientapp": result.evaluate_metrics_clientapp.get(rnd),
            }
        )
        if evaluate_fn and current["serverapp"] is None:
            current["serverapp"] = evaluate_fn(rnd, arrays)
        for req in due:
            flwr_log(INFO, "")
            flwr_log(INFO, "[MPU after round %s: %s from node %s]", rnd, req.request_id, req.node_id)
            before = dict(current)
            new_arrays, record = self.serve_request(grid, arrays, req, rnd)
            changed = new_arrays is not arrays
            after = before
            if changed:
                after = {
                    "serverapp": evaluate_fn(rnd, new_arrays) if evaluate_fn else None,
                    "clientapp": self._federated_evaluate(grid, rnd, new_arrays, evaluate_config, timeout),
                }
            current = after
            record.evaluate_before = {k: v for k, v in before.items() if v is not None}
            record.evaluate_after = {k: v for k, v in after.items() if v is not None}
            result.deletions.append(record)
            flwr_log(INFO, "\t└──> %s: %s (%s)", req.request_id, record.outcome, record.detail)
            if evaluate_fn and changed:
                flwr_log(INFO, "\t└──> Global evaluation after it: %s", after["serverapp"])
            arrays = result.arrays = new_arrays
        return arrays

    def serve_requests(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Serve every open request due after ``server_round`` (for users with their own loop); returns θ."""
        for req in self._due(server_round):
            arrays, _ = self.serve_request(grid, arrays, req, server_round)
        return arrays

    # ------------------------------------------------------------------------------ one request
    def serve_request(
        self, grid: Grid, arrays: ArrayRecord, req: MPURequest, server_round: int
    ) -> tuple[ArrayRecord, MPUDeletionRecord]:
        """R rounds of Pre-Process → ``train.mpu`` → screen → Post-Process; θ moves only if all are accepted.

        Returns the new θ (the same ``arrays`` object when nothing changed) and the request's record."""
        from zkapex_flwr.mpu.denoise import post_process
        from zkapex_flwr.mpu.perturb import make_copies

        self.served.add(req.request_id)
        cfg = self.cfg
        rec = MPUDeletionRecord(
            request_id=req.request_id,
            after_round=server_round,
            description=req.description,
            node_id=int(req.node_id),
            rounds=int(cfg.rounds),
        )
        t0 = time.perf_counter()
        node = int(req.node_id)
        if node in self.quarantine:
            self._finish(rec, req, "refused", "the node is quarantined for MPU after an earlier reply", 0, t0)
            return arrays, rec
        if node not in set(grid.get_node_ids()):
            self._finish(rec, req, "no-response", "the node is not connected", 0, t0)
            return arrays, rec
        model = self.model_fn()
        model.load_state_dict(arrays.to_torch_state_dict())
        theta = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for r in range(1, cfg.rounds + 1):
            t_round = time.perf_counter()
            model.load_state_dict(theta)
            copies = make_copies(model, cfg, self._gen)
            states = [c.state for c in copies]
            self._never_theta(theta, states, req.request_id)
            nonce = secrets.token_hex(16)
            sent = [0]

            def make(n: int, attempt: int, r=r, nonce=nonce, states=states, sent=sent) -> Message:
                body = MPUTrainRequest(
                    req.request_id,
                    nonce,
                    cfg.algorithm,
                    int(cfg.steps),
                    float(cfg.lr),
                    int(cfg.batch_size),
                    r,
                    int(cfg.rounds),
                    len(states),
                    attempt,
                    str(getattr(cfg, "optimizer", "adam")),
                )
                msg = Message(body.to_content(states), dst_node_id=n, message_type=MPU_UNLEARN)
                size = content_bytes(msg.content)
                sent[0] += size
                self.sent_log.append(
                    {"request_id": req.request_id, "node_id": n, "round": r, "attempt": attempt, "bytes": size}
                )
                return msg

            out = dispatch(grid, [node], make, deadline_s=self.deadline_s, max_attempts=self.max_attempts)[node]
            rec.bytes_sent += sent[0]
            verdict, detail, score, returned = self._judge(out, req, r, nonce, states, copies)
            if out.reply is not None:
                rec.bytes_received += content_bytes(out.reply.content)
            if score is not None:
                rec.consistency.append(score)
            row_wall = time.perf_counter() - t_round
            if verdict != "accepted":
                self._finish(rec, req, verdict, detail, out.attempts, t0, r, score, sent[0], row_wall)
                return arrays, rec
            theta = post_process(theta, copies, returned)
            rec.rounds_done = r
            self._row(req, "accepted", detail, r, score, out.attempts, row_wall, sent[0], rec.bytes_received)
        model.load_state_dict(theta)
        rec.outcome, rec.detail = "accepted", f"{cfg.rounds} rounds merged"
        rec.verdicts = {"accepted": 1}
        rec.quarantined = sorted(self.quarantine)
        rec.wall_s = time.perf_counter() - t0
        return ArrayRecord(model.state_dict()), rec

    def _judge(self, out: Outcome, req: MPURequest, r: int, nonce: str, states, copies):
        """(outcome, detail, consistency score or None, returned copies) of one round's reply."""
        from zkapex_flwr.mpu import screen
        from zkapex_flwr.mpu.denoise import inverted_updates

        if out.reply is None:
            kind = "client-error" if "client error" in out.detail else "no-response"
            return kind, out.detail, None, None
        try:
            rep, returned = MPUTrainReply.from_message(out.reply, len(states))
        except ProtocolError as err:
            return "malformed", str(err), None, None
        if (rep.request_id, rep.nonce, rep.round) != (req.request_id, nonce, r):
            return "malformed", f"{MPU_UNLEARN} reply does not echo this round (request id, nonce, round)", None, None
        for k, (sent_k, back_k) in enumerate(zip(states, returned)):
            problem = _shape_problem(sent_k, back_k)
            if problem:
                return "malformed", f"copy-{k}: {problem}", None, None
        try:
            updates = inverted_updates(copies, returned)  # Δ_k = R_k⁻¹(returned_k − copy_k), θ's coordinates
        except ValueError as err:
            return "malformed", str(err), None, None
        if all(all(not torch.any(d) for d in u.values()) for u in updates):
            return "flagged", "zero update: every copy came back unchanged", 0.0, None
        found = screen.details(updates, tuple(self.cfg.alphas))
        score = float(found["score"])
        if found["reason"] != "ok":
            return "flagged", f"{found['reason']}: consistency score {score:.4g}", score, None
        threshold = self.screen_threshold if self.screen_threshold is not None else screen.DEFAULT_THRESHOLD
        if screen.flag(score, threshold) or not math.isfinite(score):
            return "flagged", f"inconsistent updates: consistency score {score:.4g} < {threshold:g}", score, None
        metrics = reply_metrics(out.reply)
        detail = f"consistency {score:.4g}" + (
            f", client unlearn-s {metrics['unlearn-s']:.3g}" if "unlearn-s" in metrics else ""
        )
        return "accepted", detail, score, returned

    def _never_theta(self, theta: dict, states: list[dict], rid: str) -> None:
        """Refuse to send a copy in which a non-zero tensor of θ appears unchanged (a broken Pre-Process)."""
        for k, s in enumerate(states):
            for name, t in theta.items():
                if t.is_floating_point() and torch.any(t) and name in s and torch.equal(s[name], t):
                    raise RuntimeError(
                        f"request {rid}: copy {k} would carry θ's '{name}' unperturbed; not sending it "
                        "(check MPUConfig.kappa and the perturbation)"
                    )

    def _row(self, req, outcome, detail, r, score, attempts, wall, sent, received) -> None:
        self.ledger.append(
            MPULedgerRow(
                req.request_id,
                int(req.node_id),
                outcome,
                detail,
                after_round=req.after_round,
                mpu_round=r,
                rounds=int(self.cfg.rounds),
                consistency=score,
                attempts=attempts,
                wall_s=wall,
                bytes_sent=sent,
                bytes_received=received,
                quarantined=int(req.node_id) in self.quarantine,
            )
        )

    def _finish(self, rec, req, outcome, detail, attempts, t0, r=0, score=None, sent=0, received=0, wall=None) -> None:
        if outcome in QUARANTINING:
            self.quarantine.add(int(req.node_id))
            log.warning("MPU request %s: node %d %s (%s); quarantined", req.request_id, req.node_id, outcome, detail)
        else:
            log.info("MPU request %s: node %d %s (%s)", req.request_id, req.node_id, outcome, detail)
        self._row(
            req,
            outcome,
            detail,
            r,
            score,
            attempts,
            time.perf_counter() - t0 if wall is None else wall,
            sent,
            received,
        )
        rec.outcome, rec.detail = outcome, detail
        rec.verdicts = {outcome: 1}
        rec.quarantined = sorted(self.quarantine)
        rec.wall_s = time.perf_counter() - t0

    def quarantined(self) -> set[int]:
        return set(self.quarantine)


def _shape_problem(sent: dict, back: dict) -> str:
    if set(sent) != set(back):
        missing, extra = sorted(set(sent) - set(back)), sorted(set(back) - set(sent))
        return f"other tensors than sent (missing {missing[:5]}, unexpected {[e[:40] for e in extra[:5]]})"
    for name, t in sent.items():
        b = back[name]
        if b.shape != t.shape or b.dtype != t.dtype:
            return f"'{name}' is {tuple(b.shape)} {b.dtype}, sent {tuple(t.shape)} {t.dtype}"
        if b.is_floating_point() and not torch.isfinite(b).all():
            return f"'{name}' has non-finite values"
        if not b.is_floating_point() and not torch.equal(b, t):
            return f"'{name}' (not a weight) was changed"
    return ""


__all__ = ["MPUUnlearning", "MPURequest", "MPUDeletionRecord", "MPUResult", "MPULedger", "MPULedgerRow", "check_config"]
