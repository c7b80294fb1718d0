"""Test and red-team kit: an in-process Flower Grid, a small digits world, and :func:`judge`.

* :class:`SyncGrid` — every pushed message goes straight to a real ClientApp (no Ray, no network),
  with the network's failures on demand: lost first messages, nodes that are always offline, late
  replies. It drives the real provider strategy against a real ClientApp in one process::

      grid = SyncGrid(app, n=4, drop_first={(103, "train.unlearn")})
      VerifiedUnlearning(FedAvg(), masker=..., requests=[...], state_dir="provider").start(grid, arrays)

  Node ids are 100 + partition id; each node gets ``partition-id``/``num-partitions`` in its node
  config (and ``zkapex-state-dir`` under ``state_root``, so each node keeps its committed state on disk).
* :class:`DigitsMLP`, :func:`digits_client_app`, :func:`digits_provider` — the smallest world that runs
  every phase with real proofs: scikit-learn's digits, a 64-32-10 MLP whose ``fc1`` is the scope.
* :func:`judge` — run one dishonest behaviour (a bundle hook) against the real verifier and get its
  :class:`~zkapex_flwr.proof.verifier.Verdict`.

The provider lives in ``strategies`` (which imports this library, not the other way round):
:func:`digits_provider` and :func:`judge` import it when called.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from .client.mod import UnlearningSetup, VerifiedUnlearningMod
from .data.images import load_images
from .data.tensors import TensorData
from .proof.verifier import Verdict
from .tasks import ImageTask
from .training import train

DIGITS_SCOPE = r"(^|\.)fc1\.weight$"


def _play_the_runtime(run_id: int) -> None:
    """Flower's Messages need the task identity a ServerApp runtime sets; outside one, set it (once)."""
    from flwr.supercore.task_identity import TaskIdentity

    if getattr(TaskIdentity, "_run_id", None) is None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1


class SyncGrid:
    """A Grid that delivers each pushed message to the ClientApp at once (one Context per node)."""

    def __init__(
        self, app: ClientApp, n: int, drop_first: set[tuple[int, str]] | None = None, run_id: int = 1, state_root=None
    ):
        self.app = app
        _play_the_runtime(run_id)
        conf = {i: {"partition-id": i, "num-partitions": n} for i in range(n)}
        if state_root is not None:  # each SuperNode keeps its committed state on its own disk
            for i in range(n):
                conf[i]["zkapex-state-dir"] = str(state_root / f"node-{i}")
        self.contexts = {
            100 + i: Context(run_id=run_id, node_id=100 + i, node_config=conf[i], state=RecordDict(), run_config={})
            for i in range(n)
        }
        self.replies: dict[str, Message] = {}
        self.drop_first = drop_first or set()  # (node, message type): first such message never answered
        self.drop_always: set[tuple[int, str]] = set()  # (node, message type): the node is offline for these
        self.late: dict[tuple[int, str], list[float]] = {}  # (node, message type): reply delays, one per attempt
        self.ready: dict[str, float] = {}
        self.seen: list[tuple[int, str]] = []

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            mid = uuid.uuid4().hex
            m.metadata.__dict__["_message_id"] = mid
            node, kind = m.metadata.dst_node_id, m.metadata.message_type
            self.seen.append((node, kind))
            ids.append(mid)
            if (node, kind) in self.drop_first:
                self.drop_first.discard((node, kind))
                continue
            if (node, kind) in self.drop_always:
                continue
            try:
                self.replies[mid] = self.app(m, self.contexts[node])
            except Exception as err:  # what Flower's runtime does with a ClientApp exception
                self.replies[mid] = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=m)
            delays = self.late.get((node, kind))  # counted from when the reply exists
            self.ready[mid] = time.monotonic() + (delays.pop(0) if delays else 0.0)
        return ids

    def pull_messages(self, ids):
        now = time.monotonic()
        return [self.replies.pop(i) for i in list(ids) if i in self.replies and self.ready.get(i, 0.0) <= now]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


# ------------------------------------------------------------------------------------ the digits world
class DigitsMLP(nn.Module):
    """fc1 of 32 × 64 (2 048 scope weights: 128 Fisher blocks of 16) and a 10-class head on 8 × 8 digits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.relu(self.mlp.fc1(x.flatten(1))))


def digits_client_app(
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    samples: int = 80,
    stride: int = 100,
    offset: int = 300,
    wrap: int | None = None,
    train_kwargs: dict | None = None,
    hooks: dict | None = None,
    test: TensorData | None = None,
) -> ClientApp:
    """A ClientApp with the unlearning mod: node ``pid`` holds ``samples`` digits from ``offset + stride·pid``.

    ``wrap``: start positions are taken modulo it (fleets larger than the dataset). ``train_kwargs``:
    the local FedAvg training (``train``'s epochs, lr, …; a callable value is called with the Context);
    None: a node sends θg back unchanged. ``hooks``: partition id → the bundle hook of a dishonest node
    (``UnlearningSetup.bundle_hook``). ``test``: every node's evaluation data (research metrics).
    """
    if x is None or y is None:
        x, y = load_images("digits")

    def setup(context: Context) -> UnlearningSetup:
        pid = int(context.node_config["partition-id"])
        start = offset + (stride * pid) % wrap if wrap else offset + stride * pid
        idx = torch.arange(start, start + samples)
        return UnlearningSetup(
            model=DigitsMLP(),
            task=ImageTask(),
            data=TensorData((x[idx], y[idx])),
            seed=pid,
            test=test,
            bundle_hook=(hooks or {}).get(pid),
        )

    mod = VerifiedUnlearningMod(setup)
    app = ClientApp()

    @app.train()
    def local_train(msg: Message, context: Context) -> Message:
        node = mod.setup_for(context)
        node.model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        if train_kwargs is not None:
            kwargs = {k: (v(context) if callable(v) else v) for k, v in train_kwargs.items()}
            train(node.model, node.task, node.data, **kwargs)
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord(node.model.state_dict()),
                    "metrics": MetricRecord({"num-examples": len(node.data)}),
                }
            ),
            reply_to=msg,
        )

    return mod.install(app)


def digits_provider(
    state_dir: str | Path,
    *,
    after_round: int = 0,
    strategy=None,
    requests=None,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    **config,
):
    """The provider of the digits world: forget class 3 of its first 300 digits, a 1 % fc1 mask in at
    most 16 blocks, proof units of G = 16 blocks, K = 2. ``config``: :class:`UnlearningConfig` fields
    (default: one personalization epoch, 5 s deadline)."""
    from flwr.serverapp.strategy import FedAvg

    from strategies import DeletionRequest, SaliencyMasker, UnlearningConfig, VerifiedUnlearning

    if x is None or y is None:
        x, y = load_images("digits")
    px, py = x[:300], y[:300]
    masker = SaliencyMasker(
        DigitsMLP,
        ImageTask(),
        TensorData((px[py != 3], py[py != 3])),
        scope=DIGITS_SCOPE,
        block_size=16,
        mask_fraction=0.01,
        max_blocks=16,
        group=16,
        slots=2,
    )
    if requests is None:
        requests = [DeletionRequest("r1", TensorData((px[py == 3], py[py == 3])), after_round=after_round)]
    cfg = UnlearningConfig(**({"personal_epochs": 1, "deadline_s": 5.0} | config))
    return VerifiedUnlearning(
        strategy or FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        masker=masker,
        requests=requests,
        state_dir=state_dir,
        config=cfg,
    )


def digits_global_model(x: torch.Tensor | None = None, y: torch.Tensor | None = None, epochs: int = 3) -> ArrayRecord:
    """θg of the digits world: the MLP trained on the provider's 300 digits."""
    if x is None or y is None:
        x, y = load_images("digits")
    model = DigitsMLP()
    train(model, ImageTask(), TensorData((x[:300], y[:300])), epochs=epochs, lr=3e-3)
    return ArrayRecord(model.state_dict())


BundleHook = Callable[..., bytes]  # (prover, mask, request, context) -> the bundle a dishonest client sends


def judge(behaviour: BundleHook, *, nodes: int = 2, state_dir: str | Path | None = None) -> Verdict:
    """What the real provider decides about a client that answers with ``behaviour``.

    ``behaviour`` is a bundle hook, ``(prover, mask, request, context) -> bytes``, the signature of
    ``UnlearningSetup.bundle_hook`` (see :mod:`zkapex_flwr.proof.cheats` for the built-in ones and for
    ``prove_steps``, which proves a bundle from steps you choose). The digits world runs one request
    with ``nodes`` clients, the last of them dishonest, through the real prover and verifier; the
    result is the dishonest node's ledger outcome. Takes about half a minute (circuit set-up is cached).
    """
    if nodes < 2:
        raise ValueError(f"judge needs at least 2 nodes (one honest beside the dishonest one), got {nodes}")
    x, y = load_images("digits")
    with tempfile.TemporaryDirectory() as tmp:
        provider = digits_provider(Path(state_dir or tmp), x=x, y=y)
        grid = SyncGrid(digits_client_app(x, y, hooks={nodes - 1: behaviour}), nodes)
        provider.start(grid, digits_global_model(x, y), num_rounds=0)
        row = provider.ledger.outcomes().set_index("node_id").loc[100 + nodes - 1]
        return Verdict(
            str(row["reason"]),
            str(row["detail"]),
            verify_ms=float(row["verify_ms"]) if row["verify_ms"] == row["verify_ms"] else 0.0,
            steps_verified=int(row["proofs"] or 0),
        )
