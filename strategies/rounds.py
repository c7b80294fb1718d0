"""Flower's round loop with a deletion phase after every round: what the deletion strategies' ``start`` runs.

:func:`run_rounds` is ``flwr.serverapp.strategy.Strategy.start`` (same logs, same :class:`Result`
bookkeeping: the wrapped strategy trains, the federated and the central evaluation run after every
round) with one addition: after round r (r = 0: before the first) it calls the strategy's
``deletion_phase(grid, arrays, r, result, timeout=, evaluate_config=, evaluate_fn=)``, which serves
the requests due then, appends their records to ``result`` and returns θ as they left it.
:class:`~strategies.verified_unlearning.VerifiedUnlearning` and :class:`~strategies.mpu.MPUUnlearning`
both start this way, so a strategy nesting the other runs one loop.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log as flwr_log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result


def federated_evaluate(
    strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord, timeout: float
) -> MetricRecord | None:
    """One federated evaluation through the strategy's own configure/aggregate (None: nothing sampled)."""
    msgs = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid))
    return strategy.aggregate_evaluate(server_round, grid.send_and_receive(msgs, timeout=timeout)) if msgs else None


def run_rounds(
    strategy,
    grid: Grid,
    arrays: ArrayRecord,
    result: Result,
    num_rounds: int,
    *,
    timeout: float,
    train_config: ConfigRecord | None,
    evaluate_config: ConfigRecord | None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    on_train: Callable[[int, Iterable[Message]], None] | None = None,
) -> Result:
    """Rounds 1 … ``num_rounds`` of ``strategy`` on ``grid`` from ``arrays``, the deletion phase after each
    (and before the first); fills and returns ``result``. ``on_train(round, messages)``: called with each
    round's training messages before they are sent (e.g. to log who trains)."""
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    t_start = time.time()
    result.arrays = arrays
    if evaluate_fn:
        res = evaluate_fn(0, arrays)
        flwr_log(INFO, "Initial global evaluation results: %s", res)
        if res is not None:
            result.evaluate_metrics_serverapp[0] = res

    def deletions(rnd: int, arrays: ArrayRecord) -> ArrayRecord:
        return strategy.deletion_phase(
            grid, arrays, rnd, result, timeout=timeout, evaluate_config=evaluate_config, evaluate_fn=evaluate_fn
        )

    arrays = deletions(0, arrays)
    for rnd in range(1, num_rounds + 1):
        flwr_log(INFO, "")
        flwr_log(INFO, "[ROUND %s/%s]", rnd, num_rounds)
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(train_config)), grid))
        if on_train is not None:
            on_train(rnd, msgs)
        replies = grid.send_and_receive(msgs, timeout=timeout) if msgs else []
        new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = result.arrays = new_arrays
        if metrics is not None:
            flwr_log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
            result.train_metrics_clientapp[rnd] = metrics
        agg = federated_evaluate(strategy, grid, rnd, arrays, evaluate_config, timeout)
        if agg is not None:
            flwr_log(INFO, "\t└──> Aggregated MetricRecord: %s", agg)
            result.evaluate_metrics_clientapp[rnd] = agg
        if evaluate_fn:
            flwr_log(INFO, "Global evaluation")
            res = evaluate_fn(rnd, arrays)
            flwr_log(INFO, "\t└──> MetricRecord: %s", res)
            if res is not None:
                result.evaluate_metrics_serverapp[rnd] = res
        arrays = deletions(rnd, arrays)
    result.arrays = arrays
    flwr_log(INFO, "")
    flwr_log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
    flwr_log(INFO, "")
    flwr_log(INFO, "Final results:")
    flwr_log(INFO, "")
    for line in io.StringIO(str(result)):
        flwr_log(INFO, "\t%s", line.strip("\n"))
    flwr_log(INFO, "")
    return result
