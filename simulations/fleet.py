"""The fleet: a scenario's data world, its clients' setups, behaviours and device profiles.

:class:`FleetWorld` turns a scenario into data: the provider's pool (pretraining θg, the forget sets
D_f it names, retain data for saliency), a shared test pool, and one partition per client, split by
profile (data weight) and then label-skewed with flwr-datasets' Dirichlet partitioner at the
profile's α. Each client sees its data through its own domain shift. Everything is seeded by the
scenario, so every Ray worker rebuilds the same world on its own.

:func:`node_setup` is what the ready ClientApp (``simulations.client_app``) calls per node: the
node's model, private data, research metrics data, memory budget, speed, uplink and — for dishonest
nodes — the behaviour hook, a real code path producing what such a client would send
(``zkapex_flwr.proof.cheats``). Two Flower mods model the network: :func:`dropout_mod` (availability)
and :func:`wiretap_mod` (honest bundles on the wire can be captured, which is what a replaying client
replays).
"""
from __future__ import annotations

import functools
import logging
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message

from zkapex_flwr.client.mod import UnlearningSetup
from zkapex_flwr.data.images import DomainShift, dirichlet_partitions, load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.models import build_vit
from zkapex_flwr.proof.bundle import MalformedBundle, ProofBundle
from zkapex_flwr.proof.cheats import cheat_bundle
from zkapex_flwr.protocol import CONFIG, UNLEARN
from zkapex_flwr.tasks import ImageTask

from .scenario import HONEST_BEHAVIOURS, ClientSpec, RequestSpec, Scenario, load_scenario

log = logging.getLogger("zkapex_flwr.fleet")
MAX_EVAL = 200


class FleetWorld:
    def __init__(self, scenario: Scenario):
        self.scenario = sc = scenario
        self.x, self.y = load_images(sc.data.dataset)
        n = len(self.y)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(sc.seed))
        n_test, n_prov = round(n * sc.data.test_fraction), round(n * sc.data.provider_fraction)
        self.test_idx, self.provider_idx = order[:n_test], order[n_test:n_test + n_prov]
        pool = order[n_test + n_prov:]
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
                raise ValueError(f"{sc.source}: profile '{p.name}' gets {len(sub)} samples for {len(members)} clients; "
                                 "use a larger dataset, fewer clients or a larger data_weight")
            parts = _skewed_partitions(self.y[sub], len(members), p.alpha, sc.seed + lo)
            for pid, part in zip(members, parts):
                self.parts[pid] = sub[part]
        self.forget_idx = {r.id: self._forget_index(r) for r in sc.requests}
        self.image_shape = tuple(self.x.shape[1:])

    def _forget_index(self, r: RequestSpec) -> torch.Tensor:
        py = self.y[self.provider_idx]
        if r.forget == "class":
            return torch.nonzero(torch.isin(py, torch.tensor(r.classes))).flatten()
        g = torch.Generator().manual_seed(self.scenario.seed + zlib.crc32(r.id.encode()))
        return torch.randperm(len(py), generator=g)[:r.count]

    # --------------------------------------------------------------------------- provider side
    def model(self) -> torch.nn.Module:
        m = self.scenario.model
        return build_vit(self.image_shape, 10, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
                         mlp_ratio=m.mlp_ratio, patch_size=m.patch_size, seed=self.scenario.seed)

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
def _world(path: str, mtime_ns: int, size: int) -> FleetWorld:
    return FleetWorld(load_scenario(path))


def fleet_world(path: str | Path) -> FleetWorld:
    """The world of a scenario file, built once per process (the mods call this on every message)."""
    try:
        st = Path(path).stat()
    except OSError:
        return FleetWorld(load_scenario(path))   # load_scenario names the missing file
    return _world(str(path), st.st_mtime_ns, st.st_size)   # a changed file gives a new world


# --------------------------------------------------------------------------------- behaviours
def behaviour_hook(behaviour: str, pid: int, board: Path | None, replay_wait_s: float, seed: int):
    """The bundle hook of a fleet behaviour (None for honest clients)."""
    if behaviour == "honest":
        return None
    if behaviour == "late":
        def late(prover, mask, req, context):
            if req.attempt == 1:   # the device was busy: it answers after the deadline, then on time when retried
                time.sleep(req.deadline_s + 2.0)
            return None
        return late
    if behaviour == "replay":
        def replay(prover, mask, req, context):
            return captured_bundle(board, req.request_id, context.node_id, replay_wait_s, prover.circuit.circuit_id)
        return replay

    def cheat(prover, mask, req, context):
        rng = np.random.default_rng([seed, pid, zlib.crc32(req.request_id.encode())])
        return cheat_bundle(prover, mask, req.request_id, behaviour, rng=rng, binding=req.binding(context.node_id))
    return cheat


def captured_bundle(board: Path | None, request_id: str, own_node: int, wait_s: float, circuit_id: str) -> bytes:
    """Another node's bundle captured on the wire: this request's if one shows up in time, else an older one.

    The attacker prefers a bundle proven with its own circuit (a bundle of another circuit is refused
    as ``wrong-circuit`` before anything else is looked at).
    """
    if board is None:
        raise RuntimeError("a replaying client needs the run's wiretap board (run config 'out')")
    deadline = time.monotonic() + wait_s
    mine = f"{own_node}.bin"
    circuits: dict[Path, str] = {}   # a captured file is parsed once, not at every poll
    while True:
        here = sorted(p for p in (board / request_id).glob("*.bin") if p.name != mine) if (board / request_id).is_dir() else []
        for p in here:
            if p not in circuits:
                circuits[p] = _circuit_of(p.read_bytes())
        same = [p for p in here if circuits[p] == circuit_id]
        if same or (here and time.monotonic() > deadline):
            return (same or here)[0].read_bytes()
        if time.monotonic() > deadline:
            older = sorted(p for p in board.glob("*/*.bin") if p.name != mine)
            if older:
                return older[0].read_bytes()
            raise RuntimeError(f"replay: no bundle of another node captured within {wait_s:g} s")
        time.sleep(0.5)


def _circuit_of(data: bytes) -> str:
    try:
        return ProofBundle.from_bytes(data).circuit_id
    except MalformedBundle:
        return ""


# ------------------------------------------------------------------------------ node set-up
def node_setup(context: Context, scenario_path: str | None = None, out: str | None = None) -> UnlearningSetup:
    """The :class:`UnlearningSetup` of this node (scenario and output folder default to the run config)."""
    world = fleet_world(scenario_path or context.run_config["scenario"])
    pid = int(context.node_config["partition-id"])
    spec = world.fleet[pid]
    prof = world.scenario.profile(spec.profile)
    train, test, forget = world.client_data(pid)
    torch.set_num_threads(1)
    hook = behaviour_hook(spec.behaviour, pid, board_dir(out, context), world.scenario.replay_wait_s,
                          world.scenario.seed)
    return UnlearningSetup(model=world.model(), task=ImageTask(), data=train, test=test, forget=forget,
                           memory_mb=prof.memory_mb, bundle_hook=hook, speed=prof.speed, uplink_mbps=prof.uplink_mbps,
                           seed=world.scenario.seed + pid)


# ------------------------------------------------------------------------------------- mods
class NodeUnavailable(RuntimeError):
    """The simulated device is offline for this message (its profile's availability)."""


def dropout_mod_for(scenario_path: str | None):
    """A mod dropping training and unlearning messages with probability 1 − availability (seeded)."""
    def dropout_mod(msg: Message, ctx: Context, call_next) -> Message:
        kind = msg.metadata.message_type
        if kind in ("train", UNLEARN):
            world = fleet_world(scenario_path or ctx.run_config["scenario"])
            pid = int(ctx.node_config["partition-id"])
            avail = world.scenario.profile(world.fleet[pid].profile).availability
            if avail < 1.0:
                cfg = next(iter(msg.content.config_records.values()), {})
                key = f"{kind}|{cfg.get('server-round', '')}|{cfg.get('request-id', '')}|{cfg.get('attempt', '')}"
                rng = np.random.default_rng([world.scenario.seed, pid, zlib.crc32(key.encode())])
                if rng.random() > avail:
                    raise NodeUnavailable(f"partition {pid} is offline for this {kind} message")
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
        world = fleet_world(scenario_path or ctx.run_config["scenario"])
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
