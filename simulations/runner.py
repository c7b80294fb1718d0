"""Run a fleet scenario through Flower's simulation engine on Ray, and write its outputs.

``simulate(scenario, out)`` is ``zkapex simulate SCENARIO --out DIR``; ``flwr run .`` reaches the same
:func:`provider_main` through ``simulations.server_app``. The provider (ServerApp) pretrains θg on its
own pool, then :class:`strategies.VerifiedUnlearning` around FedAvg runs the schedule of the scenario;
the ready ClientApp (``simulations.client_app``) runs on every virtual SuperNode. Outputs in
``out``: ``provider/`` (the persistent registry and ledger), ``ledger.csv``/``.parquet``,
``clients.csv``, ``summary.json``, ``report.md``, the plots, ``rounds.json`` (who trained in which
round), ``replies.json`` (what every unlearning reply carried) and ``wiretap/`` (the honest bundles a replaying client could capture).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from .scenario import HONEST_BEHAVIOURS, PROJECT_ROOT, ScenarioError, effective_tables, load_scenario, resolve_scenario  # noqa: F401

log = logging.getLogger("zkapex_flwr.fleet")
SUPERNODE_WAIT_S = 30.0  # grace for the scenario's SuperNodes to connect (run config 'supernode-wait-s')


class FleetSizeError(RuntimeError):
    """Fewer SuperNodes connected than the scenario has clients."""


def wait_for_nodes(
    grid: Grid, n: int, timeout_s: float = SUPERNODE_WAIT_S, scenario: str = "", poll_s: float = 0.5
) -> list[int]:
    """The connected node ids once ``n`` are there; :class:`FleetSizeError` if fewer come within ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n:
            if len(nodes) > n:
                log.warning(
                    "%s: %d SuperNodes connected, the scenario has clients = %d; the extra nodes "
                    "(partition-id >= %d) are not part of the fleet",
                    scenario,
                    len(nodes),
                    n,
                    n,
                )
            return nodes
        if time.monotonic() > end:
            raise FleetSizeError(
                f"{scenario or 'the scenario'} needs {n} SuperNodes (clients = {n}) but {len(nodes)} connected "
                f'within {timeout_s:g} s: start the federation with --federation-config "num-supernodes={n}" '
                f'(or run fewer clients: --run-config "clients={len(nodes)}"; more time: supernode-wait-s)'
            )
        time.sleep(poll_s)


def mpu_request_id(partition: int) -> str:
    """The request id of a fleet client's MPU request."""
    return f"mpu-p{partition}"


def partition_mpu(strategy, world, node_of_partition, **kwargs):
    """An :class:`~strategies.mpu.MPUUnlearning` serving the scenario's [[mpu_requests]], each named by the
    requesting client's partition and resolved to its node id when due: the provider learns a node's
    partition from its commit reply (``node_of_partition``), which is why such a request comes no
    earlier than the first ZK-APEX request (the scenario checks it)."""
    from strategies.mpu import MPURequest, MPUUnlearning

    pending = list(world.scenario.mpu_requests)

    class PartitionMPU(MPUUnlearning):
        def deletion_phase(self, grid, arrays, rnd, result, **kw):
            for r in [r for r in pending if r.after_round == rnd]:
                pending.remove(r)
                node = node_of_partition(r.partition)
                if node is None:
                    log.warning("MPU request of partition %d: its node never committed; not served", r.partition)
                    continue
                what = f"{r.forget} {list(r.classes) if r.forget == 'class' else r.count}"
                self.add_request(
                    MPURequest(mpu_request_id(r.partition), int(node), rnd, f"partition {r.partition}: {what}")
                )
            return super().deletion_phase(grid, arrays, rnd, result, **kw)

    return PartitionMPU(strategy, model_fn=world.model, **kwargs)


def central_evaluation(world):
    """The provider's own evaluation of θg after each round: accuracy on the shared test pool (no domain
    shift), on its samples of each class a request deletes (``forget-accuracy-<request>``) and on each
    MPU-requesting client's own forget set (``forget-accuracy-mpu-p<partition>``) and on the test pool
    without the classes it forgets (``kept-accuracy-mpu-p<partition>``)."""
    import torch
    from flwr.app import MetricRecord

    from zkapex_flwr.data.tensors import TensorData
    from zkapex_flwr.tasks import ImageTask
    from zkapex_flwr.training import accuracy

    x, y = world.x[world.test_idx], world.y[world.test_idx]
    test = TensorData((x, y))
    forget = {}
    for r in world.scenario.requests:
        keep = torch.isin(y, torch.tensor(r.classes)) if r.forget == "class" else torch.zeros_like(y, dtype=bool)
        if keep.any():
            forget[r.id] = TensorData((x[keep], y[keep]))

    kept = {}  # per MPU request: the test pool without the classes it forgets (utility beside what it removes)
    for r in world.scenario.mpu_requests:  # a client's own forget set (research metric: only a simulation sees it)
        forget[mpu_request_id(r.partition)] = world.mpu_split(r.partition)[0]
        other = ~torch.isin(y, torch.tensor(r.classes)) if r.forget == "class" else torch.ones_like(y, dtype=bool)
        kept[mpu_request_id(r.partition)] = TensorData((x[other], y[other]))

    def evaluate(server_round: int, arrays: ArrayRecord):
        model = world.model()
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = {"accuracy": accuracy(model, ImageTask(), test)}
        metrics |= {f"forget-accuracy-{rid}": accuracy(model, ImageTask(), data) for rid, data in forget.items()}
        metrics |= {f"kept-accuracy-{rid}": accuracy(model, ImageTask(), data) for rid, data in kept.items()}
        return MetricRecord(metrics)

    return evaluate


def provider_main(
    grid: Grid,
    scenario_path: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    supernode_wait_s: float = SUPERNODE_WAIT_S,
) -> dict:
    """The fleet provider: pretrain θg, run the verified-unlearning schedule, write the report.

    ``resume``: keep ``out/provider`` (registry and ledger) from an earlier run of this provider against
    the same SuperNodes, e.g. after the provider process was killed; registered nodes are not asked to
    commit again and decided (request, node) pairs are not asked again. Without it, a simulated fleet
    (fresh node ids every run) starts from an empty provider state. ``overrides``: scenario keys set on
    top of the file (the run config's). Fewer SuperNodes than the scenario's ``clients`` within
    ``supernode_wait_s`` is a :class:`FleetSizeError`, before any training.
    """
    from flwr.serverapp.strategy import FedAvg
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from strategies import DeletionRequest, SaliencyMasker, UnlearningConfig, VerifiedUnlearning
    from zkapex_flwr.machine import describe_machine
    from zkapex_flwr.tasks import ImageTask
    from zkapex_flwr.training import resolve_device, seed_everything, train

    from .fleet import fleet_world
    from .report import write_report

    t0 = time.perf_counter()
    path = resolve_scenario(scenario_path)
    sc = load_scenario(path, overrides)
    wait_for_nodes(grid, sc.clients, supernode_wait_s, f"{path} ({sc.name})")  # fail fast, before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        for stale in ("provider", "wiretap"):  # a simulated fleet has fresh node ids: start a fresh provider
            shutil.rmtree(out / stale, ignore_errors=True)
    seed_everything(sc.seed)
    world = fleet_world(path, overrides)
    t, u = sc.training, sc.unlearning
    console = Console(stderr=True)
    timings: dict[str, float] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        tasks: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        nodes = list(grid.get_node_ids())
        console.log(f"[{sc.name}] {len(nodes)} of {sc.clients} SuperNodes connected")
        s = time.perf_counter()
        model = world.model()
        train(
            model,
            ImageTask(),
            world.provider_data(),
            epochs=t.pretrain_epochs,
            lr=t.pretrain_lr,
            batch_size=t.batch_size,
            seed=sc.seed,
            progress=progress,
            desc="provider pretraining θg",
            device=resolve_device(sc.resources.device),
        )
        model.cpu()
        timings["pretrain_s"] = time.perf_counter() - s
        masker = SaliencyMasker(
            world.model,
            ImageTask(),
            world.provider_retain(),
            scope=u.scope,
            block_size=u.block_size,
            mask_fraction=u.mask_fraction,
            max_blocks=u.max_blocks,
            group=u.group,
            slots=u.slots,
        )
        requests = [
            DeletionRequest(
                r.id,
                world.forget_set(r.id),
                r.after_round,
                f"{r.forget} {list(r.classes) if r.forget == 'class' else r.count}",
            )
            for r in sc.requests
        ]
        cfg = UnlearningConfig(
            slots=u.slots,
            steps=tuple(u.steps),
            damping=u.damping,
            num_grads=u.num_grads,
            personal_epochs=t.personal_epochs,
            personal_lr=t.personal_lr,
            batch_size=t.batch_size,
            deadline_s=u.deadline_s,
            commit_deadline_s=u.commit_deadline_s,
            max_attempts=u.max_attempts,
            max_in_flight=u.max_in_flight,
        )
        fedavg = FedAvg(
            fraction_train=t.fraction_train, fraction_evaluate=0.0, min_train_nodes=2, min_available_nodes=2
        )
        wrapped, mpu = fedavg, None
        if sc.mpu_requests:  # client-held forget sets, served with MPU after the provider's requests
            from zkapex_flwr.mpu.perturb import MPUConfig

            from .scenario import mpu_config_kwargs

            node_of = {}  # filled once the provider exists: partition -> node, from the commit replies
            wrapped = mpu = partition_mpu(
                fedavg,
                world,
                lambda pid: node_of["fn"](pid),
                config=MPUConfig(**mpu_config_kwargs(sc.mpu)),
                deadline_s=sc.mpu.deadline_s,
                max_attempts=u.max_attempts,
                screen_threshold=sc.mpu.screen_threshold,
                ledger_path=out / "mpu_ledger.csv",
                seed=sc.seed,
                accept_in_band=False,
                hide_quarantined=True,
            )
        s = time.perf_counter()
        provider = VerifiedUnlearning(
            wrapped, masker=masker, requests=requests, state_dir=out / "provider", config=cfg, on_progress=on_progress
        )
        if mpu is not None:
            node_of["fn"] = lambda pid: next((n for n, p in provider.partitions.items() if p == pid), None)
        timings["circuit_setup_s"] = time.perf_counter() - s
        s = time.perf_counter()
        result = provider.start(
            grid,
            ArrayRecord(model.state_dict()),
            num_rounds=t.rounds + t.rounds_after,
            evaluate_fn=central_evaluation(world),
            train_config=ConfigRecord({"lr": t.lr, "local-epochs": t.local_epochs, "batch-size": t.batch_size}),
        )
        timings["schedule_s"] = time.perf_counter() - s
    result.save(out)  # result.json: Flower's per-round metrics, and θg evaluated before and after each deletion
    node_of = {pid: node for node, pid in provider.partitions.items()}
    import pandas as pd

    clients = pd.DataFrame(
        [
            {
                "partition_id": c.partition_id,
                "node_id": node_of.get(c.partition_id),  # empty: the node never registered
                "behaviour": c.behaviour,
                "profile": c.profile,
            }
            for c in world.fleet
        ]
    ).astype({"node_id": "UInt64"})
    ledger = provider.ledger.frame()
    unattributed = int((ledger["partition_id"].astype(int) < 0).sum()) if len(ledger) else 0
    ledger = ledger[ledger["partition_id"].astype(int) >= 0] if len(ledger) else ledger
    (out / "rounds.json").write_text(
        json.dumps(
            {"participants": provider.participants, "quarantined_after": sorted(provider.quarantined())}, indent=1
        )
    )
    (out / "replies.json").write_text(json.dumps(provider.reply_audit, indent=1))
    masks = {
        rid: {"masked_weights": len(m), "touched_blocks": int(len(m.touched_blocks())), "scope_weights": m.layout.size}
        for rid, m in provider.masks.items()
    }
    extra = {
        "mpu": mpu_summary(mpu, result, world, out) if mpu is not None else None,
        "scenario": sc.name,
        "scenario_file": str(path),
        "scenario_digest": sc.digest,
        "scenario_overrides": dict(sc.overrides),
        "masks": masks,
        "circuits": {c.spec.name(): {"logrows": c.logrows, "setup_s": c.setup_s} for c in provider.circuits.values()},
        "unattributed_rows": unattributed,
        "timings_s": timings,
        "machine": describe_machine(),
    }
    reference = None
    if sc.retrain_clients:
        from .reference import retrain_reference, sample_clients

        first = provider.requests[0].request_id
        honest_pids = {c.partition_id for c in world.fleet if c.behaviour in HONEST_BEHAVIOURS}
        measured = []  # honest, compliant on the first request, with its own before/after metrics (not a resend)
        if len(ledger) and "client_forget_acc_before" in ledger:
            good = ledger[
                (ledger["request_id"] == first)
                & ledger["compliant"].astype(bool)
                & ledger["client_forget_acc_before"].notna()
                & ledger["client_forget_acc_after"].notna()
            ]
            measured = [int(p) for p in good["partition_id"] if int(p) in honest_pids]
        picked = sample_clients(measured, sc.retrain_clients)
        rounds = {
            rnd: [provider.partitions[n] for n in nodes if n in provider.partitions]
            for rnd, nodes in provider.participants.items()
        }
        s = time.perf_counter()
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as progress:
            bar = progress.add_task("retrain reference", total=1 + len(picked))
            reference = retrain_reference(
                world,
                rounds,
                picked,
                on_progress=lambda phase, done, total: progress.update(
                    bar, description=phase, completed=done, total=total
                ),
            )
        timings["retrain_reference_s"] = time.perf_counter() - s
    summary = write_report(
        ledger, clients, out, time.perf_counter() - t0, extra=extra, scenario_name=sc.name, reference=reference
    )
    console.log(
        f"[{sc.name}] {summary['cheaters_caught']} of {summary['dishonest']} cheaters caught, "
        f"{summary['honest_rejected']} honest rejected, wall {summary['wall_s']:.0f} s → {out}"
    )
    return summary


def mpu_summary(mpu, result, world, out: Path) -> dict:
    """The MPU requests' outcomes, consistency scores and θg's accuracy on each requester's forget set
    right before and after its request (``mpu_requests.csv`` beside ``mpu_ledger.csv``)."""
    import pandas as pd

    from strategies.mpu import MPUDeletionRecord

    rows = []
    for rec in result.deletions:
        if not isinstance(rec, MPUDeletionRecord):
            continue
        pid = int(rec.request_id.removeprefix("mpu-p"))
        req = world.mpu_request(pid)
        key = f"forget-accuracy-{rec.request_id}"
        before, after = rec.evaluate_before.get("serverapp") or {}, rec.evaluate_after.get("serverapp") or {}
        scores = [float(c) for c in rec.consistency] if getattr(rec, "consistency", None) else []
        rows.append(
            {
                "request_id": rec.request_id,
                "partition_id": pid,
                "node_id": rec.node_id,
                "behaviour": req.behaviour,
                "outcome": rec.outcome,
                "caught": rec.outcome in ("flagged", "malformed"),
                "rounds_done": rec.rounds_done,
                "rounds": rec.rounds,
                "consistency_min": min(scores) if scores else None,
                "forget_acc_before": before.get(key),
                "forget_acc_after": after.get(key),
                "test_acc_before": before.get("accuracy"),
                "test_acc_after": after.get("accuracy"),
                "kept_acc_before": before.get(f"kept-accuracy-{rec.request_id}"),
                "kept_acc_after": after.get(f"kept-accuracy-{rec.request_id}"),
                "wall_s": rec.wall_s,
                "bytes_sent": rec.bytes_sent,
                "bytes_received": rec.bytes_received,
                "detail": rec.detail,
            }
        )
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "mpu_requests.csv", index=False)
    honest = frame[frame["behaviour"] == "honest"] if len(frame) else frame
    cheats = frame[frame["behaviour"] != "honest"] if len(frame) else frame
    cfg = mpu.cfg
    return {
        "requests": len(frame),
        "honest": len(honest),
        "honest_accepted": int((honest["outcome"] == "accepted").sum()) if len(honest) else 0,
        "cheaters": len(cheats),
        "cheaters_caught": int(cheats["caught"].sum()) if len(cheats) else 0,
        "config": {
            "copies": cfg.copies,
            "alphas": list(cfg.alphas),
            "kappa": cfg.kappa,
            "rounds": cfg.rounds,
            "algorithm": cfg.algorithm,
            "steps": cfg.steps,
            "lr": cfg.lr,
            "defence": cfg.defence,
        },
        "rows": json.loads(frame.to_json(orient="records")) if len(frame) else [],
    }


def simulate(
    scenario: str | Path,
    out: str | Path,
    *,
    overrides: dict | None = None,
    cpus_per_client: float | None = None,
    num_gpus: float | None = None,
    device: str | None = None,
    ray_address: str | None = None,
) -> dict:
    """Run ``scenario`` on Flower's simulation engine (Ray) and return its ``summary.json``.

    ``overrides`` (dotted scenario keys) are applied on top of the file and validated before anything
    starts; ``cpus_per_client``, ``num_gpus`` and ``device`` are the ``resources.*`` keys. With
    overrides, the scenario that runs is written to ``out/scenario.toml`` (the file the provider and
    every ClientApp load). Exactly ``clients`` SuperNodes are started. A scenario with
    ``method = "munkey"`` runs the MUNKEY fleet (:mod:`simulations.munkey_fleet`): its own scenario
    model, provider and ClientApp, the same Ray set-up."""
    import tomli_w
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from simulations.client_app import build_client_app

    from .munkey_fleet import build_munkey_client_app, is_munkey_scenario, load_munkey_scenario, munkey_provider_main

    overrides = dict(overrides or {})
    for key, value in (
        ("resources.num_cpus", cpus_per_client),
        ("resources.num_gpus", num_gpus),
        ("resources.device", device),
    ):
        if value is not None:
            overrides[key] = value
    path = resolve_scenario(scenario)
    munkey = is_munkey_scenario(path)
    load, provider, client_app = (
        (load_munkey_scenario, munkey_provider_main, build_munkey_client_app)
        if munkey
        else (load_scenario, provider_main, build_client_app)
    )
    sc = load(path, overrides)  # every error before Ray starts
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if overrides:
        tables = effective_tables(path, overrides)
        tables.setdefault("name", sc.name)
        effective = out / "scenario.toml"
        given = " ".join(f"{k}={v!r}" for k, v in overrides.items())
        effective.write_text(f"# {path} with overrides: {given}\n" + tomli_w.dumps(tables), encoding="utf-8")
        path = effective
        load(path)  # the written file is the same scenario
    summary_file = out / "summary.json"
    summary_file.unlink(missing_ok=True)
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context) -> None:
        provider(grid, path, out)

    res = sc.resources
    backend: dict = {"client_resources": {"num_cpus": float(res.num_cpus), "num_gpus": float(res.num_gpus)}}
    if ray_address:
        backend["init_args"] = {"address": ray_address}
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    run_simulation(
        server_app=server,
        client_app=client_app(str(path), str(out)),
        num_supernodes=sc.clients,
        backend_config=backend,
    )
    if not summary_file.exists():
        raise RuntimeError(f"the simulation of {path} ended without writing {summary_file}; see the log above")
    return json.loads(summary_file.read_text())
