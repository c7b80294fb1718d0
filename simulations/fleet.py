"""The fleet: a scenario's data world, its clients' setups, behaviours and device profiles.

:class:`FleetWorld` turns a scenario into data: the provider's pool (pretraining θg, the forget sets
D_f it names, retain data for saliency), a shared test pool, and one partition per client, split by
profile (data weight) and then split by the scenario's flwr-datasets partitioner (Dirichlet label
skew at the profile's α by default). The data is an offline corpus (digits, MNIST) or any hub dataset
through flwr-datasets' ``FederatedDataset`` (``zkapex_flwr.data.hub``); the model is the small ViT or
any timm model (``zkapex_flwr.models.create_image_model``). Each client sees its data through its own domain shift. Everything is seeded by the
scenario, so every Ray worker rebuilds the same world on its own.

:func:`node_setup` is what the ready ClientApp (``simulations.client_app``) calls per node: the
node's model, private data, research metrics data, memory budget, speed, uplink and — for dishonest
nodes — the behaviour hook (``simulations.behaviours``: a registry of named hooks, the built-ins
being real code paths producing what such a client would send, ``zkapex_flwr.proof.cheats``). Two
Flower mods model the network: :func:`dropout_mod_for` (availability: an offline node's reply is a
Flower error reply, ``ErrorCode.NODE_UNAVAILABLE``, which the provider's dispatch counts as a failed
attempt) and :func:`wiretap_mod_for` (honest bundles on the wire can be captured, which is what a
replaying client replays).

The world of a ``flwr run`` comes from the run config (``scenario`` plus its overrides); the world of
``zkapex simulate`` from the scenario file it binds.
"""

from __future__ import annotations

import functools
import json
import logging
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from zkapex_flwr.client.mod import UnlearningSetup
from zkapex_flwr.client.mpu import MPUSetup
from zkapex_flwr.data.images import DomainShift, dirichlet_partitions, load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.models import create_image_model
from zkapex_flwr.protocol import CONFIG, UNLEARN
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.training import resolve_device

from .behaviours import FleetClient, bind_hook, captured_bundle  # noqa: F401 - captured_bundle: public here too
from .scenario import (
    HONEST_BEHAVIOURS,
    ClientSpec,
    MPURequestSpec,
    RequestSpec,
    Scenario,
    load_scenario,
    resolve_scenario,
    run_config_overrides,
)

log = logging.getLogger("zkapex_flwr.fleet")
MAX_EVAL = 200


class FleetWorld:
    def __init__(self, scenario: Scenario):
        self.scenario = sc = scenario
        self.x, self.y = _load(sc)
        n = len(self.y)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(sc.seed))
        n_test, n_prov = round(n * sc.data.test_fraction), round(n * sc.data.provider_fraction)
        self.test_idx, self.provider_idx = order[:n_test], order[n_test : n_test + n_prov]
        pool = order[n_test + n_prov :]
        self.fleet: list[ClientSpec] = sc.fleet()
        self.parts: dict[int, torch.Tensor] = {}
        by_profile = {p.name: [c.partition_id for c in self.fleet if c.profile == p.name] for p in sc.profiles}
        weights = np.array([len(by_profile[p.name]) * p.data_weight for p in sc.profiles], dtype=float)
        bounds = np.concatenate([[0], np.cumsum(weights / weights.sum() * len(pool))]).round().astype(int)
        for p, lo, hi in zip(sc.profiles, bounds[:-1], bounds[1:]):
            members = by_profile[p.name]
            if not members:
                continue
            sub = pool[lo:hi]
            if len(sub) < 2 * len(members):
                raise ValueError(
                    f"{sc.source}: profile '{p.name}' gets {len(sub)} samples for {len(members)} clients; "
                    "use a larger dataset, fewer clients or a larger data_weight"
                )
            parts = _partitions(sc, self.y[sub], len(members), p.alpha, sc.seed + lo)
            for pid, part in zip(members, parts):
                self.parts[pid] = sub[part]
        self.forget_idx = {r.id: self._forget_index(r) for r in sc.requests}
        self.image_shape = tuple(self.x.shape[1:])

    # ---------------------------------------------------------------- client-held (MPU) requests
    def mpu_request(self, pid: int) -> MPURequestSpec | None:
        """The client's own deletion request served with MPU ([[mpu_requests]]), if it has one."""
        return next((r for r in self.scenario.mpu_requests if r.partition == pid), None)

    def mpu_split(self, pid: int) -> tuple[TensorData, TensorData]:
        """(forget, retain) of client ``pid``'s own training data under its MPU request (in its domain)."""
        r = self.mpu_request(pid)
        if r is None:
            raise ValueError(f"partition {pid} has no [[mpu_requests]] entry")
        train, _, _ = self.client_data(pid)
        y = train.tensors[1]
        if r.forget == "class":
            drop = torch.isin(y, torch.tensor(r.classes))
        else:
            g = torch.Generator().manual_seed(self.scenario.seed + 7919 * (pid + 1))
            drop = torch.zeros(len(y), dtype=torch.bool)
            drop[torch.randperm(len(y), generator=g)[: min(r.count, len(y) - 1)]] = True
        if not drop.any() or drop.all():
            held = sorted(int(c) for c in torch.unique(y))
            raise ValueError(
                f"{self.scenario.source}: [[mpu_requests]] partition {pid}: its request ({r.forget} "
                f"{list(r.classes) if r.forget == 'class' else r.count}) leaves "
                f"{'nothing to forget' if not drop.any() else 'nothing to keep'}; the client holds classes {held}"
            )
        idx = torch.arange(len(y))
        return train.subset(idx[drop]), train.subset(idx[~drop])

    def _forget_index(self, r: RequestSpec) -> torch.Tensor:
        py = self.y[self.provider_idx]
        if r.forget == "class":
            return torch.nonzero(torch.isin(py, torch.tensor(r.classes))).flatten()
        g = torch.Generator().manual_seed(self.scenario.seed + zlib.crc32(r.id.encode()))
        return torch.randperm(len(py), generator=g)[: r.count]

    # --------------------------------------------------------------------------- provider side
    def model(self) -> torch.nn.Module:
        m = self.scenario.model
        vit = (
            dict(
                embed_dim=m.embed_dim,
                depth=m.depth,
                num_heads=m.num_heads,
                mlp_ratio=m.mlp_ratio,
                patch_size=m.patch_size,
            )
            if m.kind == "vit"
            else {}
        )
        return create_image_model(
            m.kind,
            self.image_shape,
            self.scenario.data.num_classes,
            seed=self.scenario.seed,
            pretrained=m.pretrained,
            options=dict(m.options),
            **vit,
        )

    def provider_data(self) -> TensorData:
        return TensorData((self.x[self.provider_idx], self.y[self.provider_idx]))

    def forget_set(self, request_id: str) -> TensorData:
        return self.provider_data().subset(self.forget_idx[request_id])

    def provider_retain(self) -> TensorData:
        drop = torch.zeros(len(self.provider_idx), dtype=torch.bool)
        for idx in self.forget_idx.values():
            drop[idx] = True
        return self.provider_data().subset(torch.nonzero(~drop).flatten())

    # ----------------------------------------------------------------------------- client side
    def shift(self, pid: int) -> DomainShift:
        return DomainShift.for_client(pid, self.scenario.seed, self.scenario.profile(self.fleet[pid].profile).shift)

    def client_data(self, pid: int) -> tuple[TensorData, TensorData, TensorData]:
        """(train, test, forget) of client ``pid``, all in its domain; test excludes forgotten classes."""
        if pid not in self.parts:
            raise ValueError(f"partition {pid} is outside this scenario's {self.scenario.clients} clients")
        shift = self.shift(pid)
        idx = self.parts[pid]
        train = TensorData((shift(self.x[idx]), self.y[idx]))
        ty = self.y[self.test_idx]
        keep = torch.isin(ty, torch.unique(self.y[idx]))
        for r in self.scenario.requests:
            if r.forget == "class":
                keep &= ~torch.isin(ty, torch.tensor(r.classes))
        tidx = self.test_idx[keep][:MAX_EVAL]
        test = TensorData((shift(self.x[tidx]), self.y[tidx]))
        fidx = self.provider_idx[torch.cat(list(self.forget_idx.values()))][:MAX_EVAL]
        forget = TensorData((shift(self.x[fidx]), self.y[fidx]))
        return train, test, forget


def _load(sc: Scenario) -> tuple[torch.Tensor, torch.Tensor]:
    """The scenario's images and labels: an offline corpus, or a hub dataset through flwr-datasets."""
    d = sc.data
    if not d.dataset.startswith("hf:"):
        return load_images(d.dataset)
    from zkapex_flwr.data.hub import load_hub_images

    x, y = load_hub_images(
        d.dataset,
        split=d.split,
        subset=d.subset,
        image_key=d.image_key,
        label_key=d.label_key,
        image_size=d.image_size,
        max_samples=d.max_samples,
        seed=sc.seed,
    )
    if len(y) and int(y.max()) >= d.num_classes:
        raise ValueError(
            f"{sc.source}: [data] {d.dataset} has labels up to {int(y.max())}; set num_classes = {int(y.max()) + 1}"
        )
    return x, y


def _partitions(sc: Scenario, labels: torch.Tensor, n: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """One profile's client partitions by the scenario's flwr-datasets partitioner."""
    d = sc.data
    if d.partitioner == "dirichlet" and not d.partitioner_options:
        return _skewed_partitions(labels, n, alpha, seed)
    if n == 1:
        return [torch.arange(len(labels))]
    from zkapex_flwr.data.hub import make_partitioner, partition_indices

    return partition_indices(
        labels, make_partitioner(d.partitioner, n, alpha=alpha, seed=seed, **dict(d.partitioner_options))
    )


def _skewed_partitions(labels: torch.Tensor, n: int, alpha: float, seed: int) -> list[torch.Tensor]:
    """Dirichlet(α) label skew; the minimum partition size is relaxed until flwr-datasets can sample it."""
    import warnings

    size = max(2, min(10, len(labels) // (2 * n)))
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return dirichlet_partitions(labels, n, alpha, seed, min_partition_size=size)
        except ValueError:
            if size <= 1:
                raise
            size //= 2


@functools.lru_cache(maxsize=4)
def _world(path: str, mtime_ns: int, size: int, overrides: str) -> FleetWorld:
    return FleetWorld(load_scenario(path, json.loads(overrides)))


def fleet_world(path: str | Path, overrides: Mapping[str, Any] | None = None) -> FleetWorld:
    """The world of a scenario file (with ``overrides``), built once per process (the mods call this on
    every message)."""
    try:
        st = Path(path).stat()
    except OSError:
        return FleetWorld(load_scenario(path, overrides))  # load_scenario names the missing file
    key = json.dumps(dict(overrides or {}), sort_keys=True)
    return _world(str(path), st.st_mtime_ns, st.st_size, key)  # a changed file gives a new world


def context_world(scenario_path: str | None, context: Context) -> FleetWorld:
    """The world of a node: the bound scenario file (``zkapex simulate``), else the run config's
    ``scenario`` with the run config's overrides (``flwr run``)."""
    if scenario_path:
        return fleet_world(scenario_path)
    rc = context.run_config
    return fleet_world(resolve_scenario(str(rc["scenario"])), run_config_overrides(rc))


# --------------------------------------------------------------------------------- behaviours
def behaviour_hook(behaviour: str, pid: int, board: Path | None, replay_wait_s: float, seed: int):
    """The bundle hook of a fleet behaviour (None for honest clients), from ``simulations.behaviours``."""
    return bind_hook(
        behaviour,
        FleetClient(partition_id=pid, behaviour=behaviour, seed=seed, board=board, replay_wait_s=replay_wait_s),
    )


# ------------------------------------------------------------------------------ node set-up
def node_setup(context: Context, scenario_path: str | None = None, out: str | None = None) -> UnlearningSetup:
    """The :class:`UnlearningSetup` of this node (scenario and output folder default to the run config)."""
    world = context_world(scenario_path, context)
    pid = int(context.node_config["partition-id"])
    if not 0 <= pid < len(world.fleet):
        raise ValueError(
            f"{world.scenario.source}: this SuperNode has partition-id {pid}, but the scenario has "
            f"clients = {world.scenario.clients} (start as many SuperNodes as the scenario has clients)"
        )
    spec = world.fleet[pid]
    prof = world.scenario.profile(spec.profile)
    train, test, forget = world.client_data(pid)
    torch.set_num_threads(1)
    hook = behaviour_hook(
        spec.behaviour, pid, board_dir(out, context), world.scenario.replay_wait_s, world.scenario.seed
    )
    return UnlearningSetup(
        model=world.model(),
        task=ImageTask(),
        data=train,
        test=test,
        forget=forget,
        memory_mb=prof.memory_mb,
        bundle_hook=hook,
        speed=prof.speed,
        uplink_mbps=prof.uplink_mbps,
        seed=world.scenario.seed + pid,
        device=str(resolve_device(world.scenario.resources.device)),
    )


def mpu_setup(context: Context, scenario_path: str | None = None) -> MPUSetup:
    """The :class:`~zkapex_flwr.client.mpu.MPUSetup` of this node: its own forget set when the scenario
    gives it an MPU request ([[mpu_requests]]; its behaviour there picks the reply hook), else none."""
    from zkapex_flwr.client.mpu import MPU_CHEATS, MPUSetup

    world = context_world(scenario_path, context)
    pid = int(context.node_config["partition-id"])
    req = world.mpu_request(pid)
    train, test, _ = world.client_data(pid)
    forget, retain = world.mpu_split(pid) if req is not None else (None, train)
    return MPUSetup(
        model=world.model(),
        task=ImageTask(),
        forget=forget,
        retain=retain,
        test=test,
        reply_hook=MPU_CHEATS[req.behaviour] if req is not None and req.behaviour != "honest" else None,
        seed=world.scenario.seed + pid,
        device=str(resolve_device(world.scenario.resources.device)),
    )


def training_data(context: Context, setup: UnlearningSetup, server_round: int, scenario_path: str | None = None):
    """What the node trains on in ``server_round``: its data, less its own forget set once it asked for
    that to be unlearned (rounds after its MPU request's ``after_round``)."""
    world = context_world(scenario_path, context)
    pid = int(context.node_config["partition-id"])
    req = world.mpu_request(pid)
    if req is None or server_round <= req.after_round:
        return setup.data
    return world.mpu_split(pid)[1]


# ------------------------------------------------------------------------------------- mods
def offline_reply(msg: Message, reason: str) -> Message:
    """The reply of a node that is offline for ``msg``: an ordinary Flower error reply (no exception, no
    traceback); the provider's dispatch counts it as a failed attempt and retries or gives up."""
    return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=msg)


def dropout_mod_for(scenario_path: str | None):
    """A mod dropping training and unlearning messages with probability 1 − availability (seeded)."""

    def dropout_mod(msg: Message, ctx: Context, call_next) -> Message:
        kind = msg.metadata.message_type
        if kind in ("train", UNLEARN):
            world = context_world(scenario_path, ctx)
            pid = int(ctx.node_config["partition-id"])
            avail = world.scenario.profile(world.fleet[pid].profile).availability
            if avail < 1.0:
                cfg = next(iter(msg.content.config_records.values()), {})
                key = f"{kind}|{cfg.get('server-round', '')}|{cfg.get('request-id', '')}|{cfg.get('attempt', '')}"
                rng = np.random.default_rng([world.scenario.seed, pid, zlib.crc32(key.encode())])
                if rng.random() > avail:
                    log.info("partition %d is offline for this %s message (availability %g)", pid, kind, avail)
                    return offline_reply(msg, f"node unavailable: partition {pid} is offline for this {kind} message")
        return call_next(msg, ctx)

    return dropout_mod


def board_dir(out: str | None, context: Context) -> Path | None:
    """The run's wiretap board: ``<out>/wiretap`` (``out`` given, or the run config's ``out``)."""
    where = out or context.run_config.get("out")
    return Path(str(where)) / "wiretap" if where else None


def wiretap_mod_for(scenario_path: str | None, out: str | None):
    """A mod that captures honest nodes' outgoing unlearning bundles on the run's wiretap board.

    It models an eavesdropper (or a public audit log of accepted bundles): what a replaying client
    replays. Only honest nodes' bundles are captured: a replay attack replays a *valid* bundle.
    """

    def wiretap_mod(msg: Message, ctx: Context, call_next) -> Message:
        reply = call_next(msg, ctx)
        board = board_dir(out, ctx)
        if board is None or msg.metadata.message_type != UNLEARN or reply.has_error():
            return reply
        world = context_world(scenario_path, ctx)
        if world.fleet[int(ctx.node_config["partition-id"])].behaviour in HONEST_BEHAVIOURS:
            cfg = reply.content.config_records.get(CONFIG)
            if cfg is not None and "bundle" in cfg:
                folder = board / str(cfg["request-id"])
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{ctx.node_id}.tmp"
                tmp.write_bytes(cfg["bundle"])
                tmp.replace(folder / f"{ctx.node_id}.bin")
        return reply

    return wiretap_mod
