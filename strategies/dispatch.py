"""Deadline and retry for a provider round (docs/protocol.md §2.5): a sliding window over Flower's Grid.

``dispatch`` keeps at most ``max_in_flight`` messages in flight (the provider's verification load,
and in simulation the depth of the Ray queue), gives every message ``deadline_s`` from the moment it is
pushed, and sends a node a new attempt when its deadline passes or it answers with an error, up to
``max_attempts``. A reply that arrives after its deadline is ignored (the node was already retried or
given up on). Each node ends in exactly one :class:`Outcome`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid


@dataclass
class Outcome:
    node_id: int
    attempts: int
    reply: Message | None  # the accepted reply (None: no answer in time / errors only)
    detail: str = ""  # why there is no reply (every attempt's deadline or error)


def dispatch(
    grid: Grid,
    nodes: list[int],
    make_message: Callable[[int, int], Message],
    *,
    deadline_s: float,
    max_attempts: int = 2,
    max_in_flight: int = 0,
    poll_s: float = 0.1,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> dict[int, Outcome]:
    """Send ``make_message(node, attempt)`` to every node; return each node's outcome.

    ``on_outcome`` is called as soon as a node's outcome is final (the provider verifies while the
    rest of the fleet is still working). ``max_in_flight`` 0 means all at once.
    """
    if deadline_s <= 0 or max_attempts < 1:
        raise ValueError(f"deadline_s must be > 0 and max_attempts >= 1, got {deadline_s}, {max_attempts}")
    window = max_in_flight if max_in_flight > 0 else max(len(nodes), 1)
    pending: deque[tuple[int, int]] = deque((int(n), 1) for n in nodes)
    inflight: dict[str, tuple[int, int, float]] = {}  # message id -> (node, attempt, pushed at)
    errors: dict[int, str] = {}
    outcomes: dict[int, Outcome] = {}

    def finish(out: Outcome) -> None:
        outcomes[out.node_id] = out
        if on_outcome is not None:
            on_outcome(out)

    def retry_or_give_up(node: int, attempt: int, detail: str) -> None:
        if attempt < max_attempts:
            pending.append((node, attempt + 1))
        else:
            finish(Outcome(node, attempt, None, detail))

    while pending or inflight:
        batch = []
        while pending and len(inflight) + len(batch) < window:
            node, attempt = pending.popleft()
            batch.append((node, attempt, make_message(node, attempt)))
        if batch:
            ids = list(grid.push_messages([m for _, _, m in batch]))
            now = time.monotonic()
            for (node, attempt, _), mid in zip(batch, ids):
                inflight[mid] = (node, attempt, now)
        for reply in grid.pull_messages(list(inflight)):
            mid = reply.metadata.reply_to_message_id
            if mid not in inflight:
                continue
            node, attempt, _ = inflight.pop(mid)
            if reply.has_error():
                errors[node] = f"attempt {attempt}: client error: {reply.error.reason}"
                retry_or_give_up(node, attempt, errors[node])
            else:
                finish(Outcome(node, attempt, reply))
        now = time.monotonic()
        for mid, (node, attempt, pushed) in list(inflight.items()):
            if now - pushed > deadline_s:
                del inflight[mid]
                detail = f"no reply within {deadline_s:g} s on attempt {attempt}"
                if node in errors:
                    detail += f" (earlier {errors[node]})"
                retry_or_give_up(node, attempt, detail)
        if inflight:
            time.sleep(poll_s)
    return outcomes
