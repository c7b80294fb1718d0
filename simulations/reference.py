"""The retrain-from-scratch reference of a fleet run, for a sample of its honest clients (docs/protocol.md §6).

A verified deletion is judged against the gold standard: the same training run again, without the
forgotten data. :func:`retrain_reference` replays the run's training up to the moment the clients
personalized and committed:

1. the provider pretrains θg on its pool minus every request's D_f (same epochs, learning rate, seed);
2. the FedAvg rounds before that moment are replayed with the nodes that really trained in them
   (``rounds.json``), each training on its own data minus the forgotten classes — a class request
   covers the federation — with the seed and settings its ClientApp used, aggregated by example count
   as Flower's FedAvg does;
3. each sampled client re-personalizes the retrained θg on the data it keeps.

Its forget and personalization accuracies are measured on the very sets the client's own research
metrics use, so each row sits beside that client's "before" and "after" in the report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pandas as pd
import torch

from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.training import accuracy, train

from .fleet import FleetWorld

REFERENCE_COLUMNS = ("partition_id", "profile", "retrain_forget_acc", "retrain_personalization_acc")


def sample_clients(candidates: list[int], n: int) -> list[int]:
    """``n`` partition ids spread evenly over the sorted candidates (deterministic)."""
    pool = sorted(set(int(c) for c in candidates))
    if n <= 0 or not pool:
        return []
    if n >= len(pool):
        return pool
    step = len(pool) / n
    return [pool[int(i * step)] for i in range(n)]


def _kept(world: FleetWorld, data: TensorData) -> TensorData:
    """The part of a client's data that no class request covers."""
    classes = [c for r in world.scenario.requests if r.forget == "class" for c in r.classes]
    if not classes:
        return data
    keep = ~torch.isin(data.tensors[1], torch.tensor(classes))
    return data.subset(torch.nonzero(keep).flatten())


def _fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    return {
        k: sum(s[k].double() * (w / total) for s, w in zip(states, weights)).to(states[0][k].dtype) for k in states[0]
    }


def retrain_reference(
    world: FleetWorld,
    participants: dict[int, list[int]],
    clients: list[int],
    on_progress: Callable[[str, int, int], None] | None = None,
) -> pd.DataFrame:
    """One row per client in ``clients``: forget and personalization accuracy of retrain-from-scratch.

    ``participants`` maps each training round to the partition ids that trained in it; the rounds
    up to the first request's ``after_round`` (when the clients personalized) are replayed.
    """
    sc, t = world.scenario, world.scenario.training
    task = ImageTask()
    unknown = sorted(set(clients) - set(world.parts))
    if unknown:
        raise ValueError(f"retrain reference: partition(s) {unknown} are outside this scenario's {sc.clients} clients")
    commit_round = min(r.after_round for r in sc.requests)
    steps = 1 + commit_round + len(clients)
    done = 0

    def tick(phase: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(f"retrain reference: {phase}", done, steps)

    theta = world.model()
    train(
        theta,
        task,
        world.provider_retain(),
        epochs=t.pretrain_epochs,
        lr=t.pretrain_lr,
        batch_size=t.batch_size,
        seed=sc.seed,
        desc="retrain θg without D_f",
    )
    tick("θg")
    for rnd in range(1, commit_round + 1):
        states, weights = [], []
        for pid in participants.get(rnd, []):
            data = _kept(world, world.client_data(pid)[0])
            if len(data) == 0:
                continue
            local = copy.deepcopy(theta)
            train(
                local,
                task,
                data,
                epochs=t.local_epochs,
                lr=t.lr,
                batch_size=t.batch_size,
                seed=sc.seed + pid + rnd,
                desc=f"retrain round {rnd}",
            )
            states.append(local.state_dict())
            weights.append(len(data))
        if states:
            theta.load_state_dict(_fedavg(states, weights))
        tick(f"round {rnd}")
    rows = []
    for pid in clients:
        train_data, test, forget = world.client_data(pid)
        model = copy.deepcopy(theta)
        kept = _kept(world, train_data)
        if len(kept):
            train(
                model,
                task,
                kept,
                epochs=t.personal_epochs,
                lr=t.personal_lr,
                batch_size=t.batch_size,
                seed=sc.seed + pid,
                desc="re-personalize",
            )
        model.eval()
        rows.append(
            {
                "partition_id": pid,
                "profile": world.fleet[pid].profile,
                "retrain_forget_acc": accuracy(model, task, forget),
                "retrain_personalization_acc": accuracy(model, task, test) if len(test) else float("nan"),
            }
        )
        tick("clients")
    return pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))
