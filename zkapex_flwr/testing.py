"""An in-process Flower Grid: every pushed message goes straight to a real ClientApp (no Ray, no network).

It drives the real provider strategy against a real ClientApp in one process, with the same messages,
the real prover and verifier, and the network's failures on demand: lost first messages, nodes that
are always offline, late replies. Tests and red-teamers use it to run a provider round in seconds::

    grid = SyncGrid(app, n=4, drop_first={(103, "train.unlearn")})
    VerifiedUnlearning(FedAvg(), masker=..., requests=[...], state_dir="provider").start(grid, arrays)

Node ids are 100 + partition id; each node gets ``partition-id``/``num-partitions`` in its node
config (and ``zkapex-state-dir`` under ``state_root``, so each node keeps its committed state on disk).
"""
from __future__ import annotations

import time
import uuid

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp


class SyncGrid:
    """A Grid that delivers each pushed message to the ClientApp at once (one Context per node)."""

    def __init__(self, app: ClientApp, n: int, drop_first: set[tuple[int, str]] | None = None, run_id: int = 1,
                 state_root=None):
        self.app = app
        conf = {i: {"partition-id": i, "num-partitions": n} for i in range(n)}
        if state_root is not None:   # each SuperNode keeps its committed state on its own disk
            for i in range(n):
                conf[i]["zkapex-state-dir"] = str(state_root / f"node-{i}")
        self.contexts = {100 + i: Context(run_id=run_id, node_id=100 + i, node_config=conf[i], state=RecordDict(),
                                          run_config={}) for i in range(n)}
        self.replies: dict[str, Message] = {}
        self.drop_first = drop_first or set()   # (node, message type): first such message never answered
        self.drop_always: set[tuple[int, str]] = set()   # (node, message type): the node is offline for these
        self.late: dict[tuple[int, str], list[float]] = {}   # (node, message type): reply delays, one per attempt
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
            delays = self.late.get((node, kind))   # counted from when the reply exists
            self.ready[mid] = time.monotonic() + (delays.pop(0) if delays else 0.0)
        return ids

    def pull_messages(self, ids):
        now = time.monotonic()
        return [self.replies.pop(i) for i in list(ids) if i in self.replies and self.ready.get(i, 0.0) <= now]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))
