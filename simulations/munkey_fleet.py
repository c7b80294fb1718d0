"""The MUNKEY fleet: verified key deletion across a simulated Flower fleet (docs/munkey-proofs.md).

A scenario file with ``method = "munkey"`` at the top (``simulations/munkey.toml``) describes it. The
provider trains a ViT backbone on the *base* part of its pool (never subject to deletion), freezes it,
and puts the rest of its pool in θg's key/value memory (one row per instance, the instance id being the
dataset row). Every client's ClientApp carries :class:`~zkapex_flwr.client.munkey.MunkeyMod`: at commit
it adds its own instances' keys to its local copy of θg's memory and registers a commitment to it.
:class:`~strategies.munkey.MunkeyUnlearning` around FedAvg then serves the scenario's deletion requests:

* ``forget = "ids"``: provider-held instance ids, deleted from θg and from every client's copy;
* ``forget = "class"``: a class, every provider-held row of it and each client's own rows of it;
* ``forget = "client-ids"``: some of a client's own instances, deleted on that client.

Each client answers with a behaviour: ``honest`` or one of :mod:`zkapex_flwr.munkey.cheats` (each a real
code path whose reply goes to the real verifier), plus ``backbone-shift`` (honest deletion, then the
backbone fine-tuned on the forgotten instances it holds). ``replay`` and ``stale-root`` need an earlier
deletion, so they answer the first request honestly. ``hidden-copy`` and ``backbone-shift`` keep
forgotten signal outside the commitment; the verifier cannot see them, and the report measures what
they keep against the client's honest twin (the same client with the committed memory and θg's backbone).

There are no FedAvg rounds (``num_rounds = 0``): the backbone is frozen and the memories differ in size
from client to client, so there is nothing FedAvg could average; the federation's work is the commit
and the deletions. :func:`simulate_munkey` runs it on Flower's simulation engine (Ray);
:func:`munkey_provider_main` is the ServerApp's body (a test drives it through
:class:`zkapex_flwr.testing.SyncGrid`). Outputs: ``ledger.csv``, ``clients.csv``, ``research.csv``,
``summary.json``, ``report.md``, ``detection.png``, ``deletion_time.png``, ``uncatchable.png`` and
``provider/`` (the strategy's registry and ledger).

Client-reported ``research-*`` metrics are simulation ground truth (the world's images of the deleted
ids, the client's live model and its honest twin): research data only, never part of a verdict.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from zkapex_flwr.client.munkey import META_KEY, MODEL_KEY, MUNKEY_COMMIT, MUNKEY_DELETE, MunkeyMod, MunkeySetup
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.munkey import cheats
from zkapex_flwr.munkey.commitment import MemoryCommitment
from zkapex_flwr.munkey.memory import KeyValueMemory
from zkapex_flwr.munkey.model import MunkeyViT, Retrieval

from .scenario import (
    ResourcesSpec,
    ScenarioError,
    apply_overrides,
    read_scenario_file,
    resolve_scenario,
    run_config_overrides,
)

log = logging.getLogger("zkapex_flwr.fleet.munkey")
METHOD = "munkey"
HONEST = ("honest",)
BEHAVIOURS = (*cheats.BEHAVIOURS, "backbone-shift")
EXPECTED = {**cheats.EXPECTED, "backbone-shift": "compliant"}  # the verifier's reason for each behaviour
UNCATCHABLE = tuple(cheats.UNCATCHABLE)
FROM_SECOND = ("replay", "stale-root")  # they need an earlier deletion: honest on the first request
RESEARCH = "research-"
BACKBONE_KEY = "munkey-research.backbone"  # θg's backbone as committed (the honest twin's), research only
SUPERNODE_WAIT_S = 30.0
PLOTS = ("detection.png", "deletion_time.png", "uncatchable.png")

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


# ------------------------------------------------------------------------------------------ scenario
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MunkeyModelSpec(_Spec):
    """The backbone (a config-built timm ViT) and how the memory is read (``Retrieval``)."""

    embed_dim: Int = 32
    depth: Int = 2
    num_heads: Int = 2
    mlp_ratio: Float = 2.0
    patch_size: Int = 4
    global_pool: Str = "avg"
    k: Int = 10  # top-k keys read
    temperature: Float = 0.05
    lam: Float = 4.0  # weight of the memory read against the backbone's head


class MunkeyDataSpec(_Spec):
    dataset: Str = "digits"  # digits | mnist (offline corpora)
    test_fraction: Float = 0.15  # shared test pool: utility, and the MIA's non-members
    provider_fraction: Float = 0.4  # the provider's pool
    base_fraction: Float = 0.6  # of the provider's pool: trains the backbone, never deleted; the rest is θg's memory
    val_fraction: Float = 0.15  # of the base pool: held out, the provider's check of the retrieval settings
    alpha: Float | None = 1.0  # Dirichlet label skew of the client partitions (None: iid)
    num_classes: Int = 10
    eval_samples: Int = 100  # test-pool samples each client evaluates on


class MunkeyTrainingSpec(_Spec):
    steps: Int = 300  # backbone optimiser steps on the base pool
    lr: Float = 3e-3
    batch_size: Int = 64
    weight_decay: Float = 0.01
    reference: Bool = True  # a second backbone (seed + 1000) calibrates θg's RMIA (MembershipAudit)
    shift_steps: Int = 30  # backbone-shift: fine-tuning steps on the forgotten instances
    shift_lr: Float = 1e-3


class MunkeyDeletionSpec(_Spec):
    deadline_s: Float = 60.0
    commit_deadline_s: Float | None = None  # default 2 × deadline_s
    max_attempts: Int = 2
    max_in_flight: Int = 0  # 0: every node at once


class MunkeyRequestSpec(_Spec):
    id: Str
    forget: Literal["ids", "class", "client-ids"]
    count: Int = 30  # ids: provider-held ids drawn; client-ids: own ids drawn on each named client
    label: Int | None = None  # class: the class
    clients: Int = 0  # client-ids: on how many clients (0: every client)


class MunkeyScenario(_Spec):
    method: Literal["munkey"]
    name: Str = ""
    description: Str = ""
    clients: Int
    seed: Int = 0
    model: MunkeyModelSpec = Field(default_factory=MunkeyModelSpec)
    data: MunkeyDataSpec = Field(default_factory=MunkeyDataSpec)
    training: MunkeyTrainingSpec = Field(default_factory=MunkeyTrainingSpec)
    deletion: MunkeyDeletionSpec = Field(default_factory=MunkeyDeletionSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    requests: tuple[MunkeyRequestSpec, ...]
    behaviours: dict[str, Int | Float] = Field(default_factory=lambda: {"honest": 1})
    source: str = ""
    digest: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()

    def retrieval(self) -> Retrieval:
        return Retrieval(self.model.k, self.model.temperature, self.model.lam)

    def vit(self) -> dict:
        m = self.model
        return dict(
            embed_dim=m.embed_dim,
            depth=m.depth,
            num_heads=m.num_heads,
            mlp_ratio=m.mlp_ratio,
            patch_size=m.patch_size,
            global_pool=m.global_pool,
        )

    def fleet(self) -> list[str]:
        """Every client's behaviour (partition id → name), a seeded draw: counts if the weights are
        integers summing to ``clients``, else shares (largest remainder)."""
        mix = [(b, w) for b, w in self.behaviours.items() if w > 0]
        if all(float(w).is_integer() for _, w in mix) and sum(w for _, w in mix) == self.clients:
            counts = {b: int(w) for b, w in mix}
        else:
            total = sum(w for _, w in mix)
            raw = {b: self.clients * w / total for b, w in mix}
            counts = {b: int(np.floor(r)) for b, r in raw.items()}
            for b in sorted(raw, key=lambda b: raw[b] - counts[b], reverse=True)[: self.clients - sum(counts.values())]:
                counts[b] += 1
        names = np.array(sum(([b] * c for b, c in counts.items()), []))
        np.random.default_rng([self.seed, 23]).shuffle(names)
        return [str(b) for b in names]


_SECTIONS = {
    "model": MunkeyModelSpec,
    "data": MunkeyDataSpec,
    "training": MunkeyTrainingSpec,
    "deletion": MunkeyDeletionSpec,
    "resources": ResourcesSpec,
}


def _one_line(err: ValidationError, src: str) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        unknown = sorted(str(e["loc"][-1]) for e in err.errors() if e["type"] == "extra_forbidden")
        if len(loc) == 1:
            allowed = sorted(k for k in MunkeyScenario.model_fields if k not in ("source", "digest", "overrides"))
            return f"{src}: unknown top-level key(s) {unknown}; allowed: {allowed}"
        if loc[0] in _SECTIONS:
            return f"{src} [{loc[0]}]: unknown key(s) {unknown}; allowed: {sorted(_SECTIONS[loc[0]].model_fields)}"
        if loc[0] == "requests":
            return (
                f"{src} [[requests]] #{int(loc[1]) + 1}: unknown key(s) {unknown}; "
                f"allowed: {sorted(MunkeyRequestSpec.model_fields)}"
            )
    where = ".".join(str(p) for p in loc)
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list, tuple)) or first["type"] == "missing" else f" (got {got!r})"
    return f"{src}: '{where}': {first['msg']}{shown}"


def _check(cond: bool, src: str, msg: str) -> None:
    if not cond:
        raise ScenarioError(f"{src}: {msg}")


def is_munkey_scenario(path: str | Path) -> bool:
    """Whether a scenario file says ``method = "munkey"`` (what the CLI and the ServerApp dispatch on)."""
    raw, _ = read_scenario_file(resolve_scenario(path))
    return raw.get("method") == METHOD


def load_munkey_scenario(path: str | Path, overrides: Mapping[str, Any] | None = None) -> MunkeyScenario:
    """Read a MUNKEY scenario file, apply dotted-key ``overrides`` and validate it; every error is a
    one-line :class:`~simulations.scenario.ScenarioError` naming the file and the key."""
    path = Path(path)
    overrides = dict(overrides or {})
    raw, raw_bytes = read_scenario_file(path)
    src = str(path)
    raw = apply_overrides(raw, overrides, src)
    _check(
        raw.get("method") == METHOD,
        src,
        f"'method' must be \"{METHOD}\" for a MUNKEY fleet (got {raw.get('method')!r}); "
        "other scenario files run with simulations.runner.simulate",
    )
    try:
        sc = MunkeyScenario.model_validate(raw)
    except ValidationError as err:
        raise ScenarioError(_one_line(err, src)) from None
    digest = hashlib.sha256(raw_bytes)
    if overrides:
        digest.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    sc = sc.model_copy(
        update={
            "name": sc.name or path.stem,
            "source": src,
            "digest": digest.hexdigest(),
            "overrides": tuple(overrides.items()),
        }
    )
    d, t = sc.data, sc.training
    _check(sc.clients >= 2, src, f"'clients' must be >= 2, got {sc.clients}")
    _check(d.dataset in ("digits", "mnist"), src, f"[data] dataset '{d.dataset}': digits or mnist")
    _check(
        0 < d.test_fraction < 1 and 0 < d.provider_fraction < 1 and d.test_fraction + d.provider_fraction < 1,
        src,
        "[data] test_fraction and provider_fraction must be in (0, 1) and sum below 1",
    )
    _check(0 < d.base_fraction < 1 and 0 < d.val_fraction < 1, src, "[data] base_fraction, val_fraction in (0, 1)")
    _check(d.alpha is None or d.alpha > 0, src, "[data] alpha must be > 0")
    _check(d.num_classes >= 2 and d.eval_samples >= 10, src, "[data] num_classes >= 2 and eval_samples >= 10")
    _check(t.steps >= 1 and t.lr > 0 and t.batch_size >= 1, src, "[training] steps >= 1, lr > 0, batch_size >= 1")
    _check(t.shift_steps >= 0 and t.shift_lr > 0, src, "[training] shift_steps >= 0 and shift_lr > 0")
    _check(
        sc.deletion.deadline_s > 0 and sc.deletion.max_attempts >= 1, src, "[deletion] deadline_s > 0, attempts >= 1"
    )
    _check(sc.requests, src, "at least one [[requests]] entry is needed")
    ids = [r.id for r in sc.requests]
    _check(len(set(ids)) == len(ids), src, f"[[requests]] ids must be unique, got {ids}")
    for r in sc.requests:
        _check(r.count >= 1, src, f"request '{r.id}': count must be >= 1")
        _check(
            (r.forget == "class") == (r.label is not None),
            src,
            f"request '{r.id}': 'label' is the class of a forget = \"class\" request (and only of one)",
        )
        _check(
            r.label is None or 0 <= r.label < d.num_classes, src, f"request '{r.id}': label in 0..{d.num_classes - 1}"
        )
        _check(0 <= r.clients <= sc.clients, src, f"request '{r.id}': clients in 0..{sc.clients}")
    for b, w in sc.behaviours.items():
        _check(b in BEHAVIOURS, src, f"[behaviours] unknown behaviour '{b}'; known: {list(BEHAVIOURS)}")
        _check(w >= 0, src, f"[behaviours] {b} must be >= 0")
    _check(sc.behaviours.get("honest", 0) > 0, src, "[behaviours] needs honest clients")
    if any(sc.behaviours.get(b, 0) > 0 for b in FROM_SECOND):
        _check(len(sc.requests) >= 2, src, f"[behaviours] {list(FROM_SECOND)} need at least two requests")
    return sc


# ------------------------------------------------------------------------------------------- world
class MunkeyWorld:
    """The data of a MUNKEY scenario: pools, client partitions and the ids every request names.

    Instance ids are dataset row indices, so the provider's and the clients' ids never collide, and the
    simulation can look up any deleted instance's image (research metrics)."""

    def __init__(self, sc: MunkeyScenario):
        from zkapex_flwr.data.images import load_images

        from .fleet import _skewed_partitions

        self.scenario = sc
        d = sc.data
        self.x, self.y = load_images(d.dataset)
        n = len(self.y)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(sc.seed))
        n_test, n_prov = round(n * d.test_fraction), round(n * d.provider_fraction)
        self.test_ids = order[:n_test]
        provider = order[n_test : n_test + n_prov]
        n_base = round(len(provider) * d.base_fraction)
        n_val = round(n_base * d.val_fraction)
        self.val_ids, self.fit_ids = provider[:n_val], provider[n_val:n_base]
        self.memory_ids = torch.sort(provider[n_base:]).values  # θg's memory: the deletable provider-held rows
        pool = order[n_test + n_prov :]
        self.fleet = sc.fleet()
        if len(pool) < 4 * sc.clients:
            raise ScenarioError(f"{sc.source}: {len(pool)} client samples for {sc.clients} clients; use fewer clients")
        if d.alpha is None:
            parts = list(torch.arange(len(pool)).chunk(sc.clients))
        else:
            parts = _skewed_partitions(self.y[pool], sc.clients, d.alpha, sc.seed)
        self.parts = {pid: torch.sort(pool[p]).values for pid, p in enumerate(parts)}
        self.image_shape = tuple(self.x.shape[1:])
        self.requests = {r.id: self._request(i, r) for i, r in enumerate(sc.requests)}

    def _request(self, index: int, r: MunkeyRequestSpec) -> dict:
        """``{"provider": ids, "clients": {pid: ids}}`` of one request (class requests: only the class)."""
        g = torch.Generator().manual_seed(self.scenario.seed * 1000 + 101 + index)
        out: dict = {"provider": [], "clients": {}}
        if r.forget == "ids":
            pick = torch.randperm(len(self.memory_ids), generator=g)[: r.count]
            out["provider"] = sorted(self.memory_ids[pick].tolist())
        elif r.forget == "client-ids":
            pids = torch.randperm(self.scenario.clients, generator=g).tolist()
            for pid in sorted(pids[: r.clients] if r.clients else pids):
                own = self.parts[pid]
                out["clients"][pid] = sorted(own[torch.randperm(len(own), generator=g)[: r.count]].tolist())
        return out

    def model(self, seed: int | None = None) -> MunkeyViT:
        sc = self.scenario
        seed = sc.seed if seed is None else seed
        return MunkeyViT.build(
            self.image_shape, sc.data.num_classes, seed=seed, retrieval=sc.retrieval(), **sc.vit()
        ).freeze()

    def data(self, ids) -> TensorData:
        ids = torch.as_tensor(ids, dtype=torch.int64)
        return TensorData((self.x[ids], self.y[ids]))

    def eval_ids(self) -> torch.Tensor:
        return self.test_ids[: self.scenario.data.eval_samples]


@functools.lru_cache(maxsize=4)
def _world(path: str, mtime_ns: int, size: int, overrides: str) -> MunkeyWorld:
    return MunkeyWorld(load_munkey_scenario(path, json.loads(overrides)))


def munkey_world(path: str | Path, overrides: Mapping[str, Any] | None = None) -> MunkeyWorld:
    """The world of a scenario file, built once per process (the mods call this on every message)."""
    st = Path(path).stat()
    return _world(str(path), st.st_mtime_ns, st.st_size, json.dumps(dict(overrides or {}), sort_keys=True))


def context_world(scenario_path: str | None, context: Context) -> MunkeyWorld:
    """The bound scenario file (``simulate_munkey``), else the run config's ``scenario`` (``flwr run``)."""
    if scenario_path:
        return munkey_world(scenario_path)
    rc = context.run_config
    return munkey_world(resolve_scenario(str(rc["scenario"])), run_config_overrides(rc))


# ------------------------------------------------------------------------------------- client side
def _from_second(cheat: cheats.Behaviour) -> cheats.Behaviour:
    """Honest while the client has made no deletion yet (its committed state is still the first one)."""

    def behaviour(task: cheats.DeletionTask) -> cheats.DeletionReply:
        first = task.first_state.commitment if task.first_state is not None else None
        if first is None or task.state.commitment == first:
            return cheats.honest(task)
        return cheat(task)

    behaviour.__name__ = f"{getattr(cheat, '__name__', 'cheat')}_from_second"
    return behaviour


def behaviour_of(name: str, world: MunkeyWorld, pid: int):
    """``(behaviour, after_delete)`` of a fleet behaviour name, for :class:`MunkeySetup`."""
    if name == "backbone-shift":
        own = set(world.parts[pid].tolist())
        t = world.scenario.training

        def shift(model, task: cheats.DeletionTask) -> None:
            held = [i for i in task.ids if i in own]  # it holds the images of its own instances only
            if held and t.shift_steps:
                x, y = world.data(held).tensors
                cheats.backbone_shift(model, x, y, steps=t.shift_steps, lr=t.shift_lr, seed=world.scenario.seed + pid)

        return cheats.honest, shift
    if name == "hidden-copy":

        def hidden_copy(task: cheats.DeletionTask) -> cheats.DeletionReply:
            # its live memory still holds rows it proved deleted before; a class request maps the class
            # over the live memory, so it proves only the ids its committed state holds (else it could not)
            committed = task.state.position()
            task.ids = [i for i in task.ids if i in committed]
            return cheats.hidden_copy(task)

        return hidden_copy, None
    if name not in cheats.BEHAVIOURS:
        raise ValueError(f"unknown MUNKEY behaviour '{name}'; known: {list(BEHAVIOURS)}")
    fn = cheats.BEHAVIOURS[name]
    return (_from_second(fn) if name in FROM_SECOND else fn), None


def munkey_node_setup(context: Context, scenario_path: str | None = None) -> MunkeySetup:
    """This node's model, own instances (ids = dataset rows), evaluation data and behaviour."""
    world = context_world(scenario_path, context)
    pid = int(context.node_config["partition-id"])
    if not 0 <= pid < len(world.fleet):
        raise ValueError(
            f"{world.scenario.source}: partition-id {pid}, but the scenario has clients = {world.scenario.clients}"
        )
    torch.set_num_threads(1)
    behaviour, after = behaviour_of(world.fleet[pid], world, pid)
    ids = world.parts[pid]
    return MunkeySetup(
        model=world.model(),
        ids=ids,
        data=world.data(ids),
        behaviour=behaviour,
        after_delete=after,
        test=world.data(world.eval_ids()),
    )


def _likelihood(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]).softmax(-1) for i in range(0, len(x), 256)]).gather(1, y.view(-1, 1))[
            :, 0
        ]


def forget_signal(model, members: TensorData, non_members: TensorData) -> dict[str, float]:
    """Forget accuracy, mean true-class probability and the likelihood-threshold MIA AUC (members vs
    non-members; 0.5 = indistinguishable) of ``model`` on ``members``."""
    from sklearn.metrics import roc_auc_score

    xm, ym = members.tensors
    xn, yn = non_members.tensors
    with torch.no_grad():
        acc = float(
            (torch.cat([model(xm[i : i + 256]) for i in range(0, len(xm), 256)]).argmax(-1) == ym).float().mean()
        )
    pm, pn = _likelihood(model, xm, ym), _likelihood(model, xn, yn)
    labels = np.r_[np.ones(len(pm)), np.zeros(len(pn))]
    auc = float(roc_auc_score(labels, torch.cat([pm, pn]).double().numpy()))
    return {"forget_acc": acc, "forget_p": float(pm.mean()), "mia_auc": auc}


def non_members_for(world: MunkeyWorld, labels: torch.Tensor) -> TensorData:
    """Never-trained test-pool samples of the deleted instances' classes (all of the test pool if < 10)."""
    ty = world.y[world.test_ids]
    same = world.test_ids[torch.isin(ty, torch.unique(labels))]
    return world.data(same if len(same) >= 10 else world.test_ids)


class ResearchMod:
    """A Flower mod outside :class:`MunkeyMod` that measures, on the client, what a deletion did: forget
    signal of the deleted instances before, after (the live model the client predicts with) and in the
    honest twin (θg's backbone as committed, the memory restricted to the committed ids), added to the
    reply's metrics as ``research-*`` (simulation ground truth; the verifier never reads them)."""

    def __init__(self, munkey: MunkeyMod, scenario_path: str | None):
        self.munkey = munkey
        self.scenario_path = scenario_path

    def __call__(self, msg: Message, ctx: Context, call_next) -> Message:
        kind = msg.metadata.message_type
        if kind == MUNKEY_COMMIT:
            reply = call_next(msg, ctx)
            if not reply.has_error() and "arrays" in msg.content.array_records:
                state = msg.content.array_records["arrays"].to_torch_state_dict()
                backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
                ctx.state[BACKBONE_KEY] = ArrayRecord(backbone)
            return reply
        if kind != MUNKEY_DELETE:
            return call_next(msg, ctx)
        from zkapex_flwr.client.munkey import MunkeyDeleteRequest

        try:
            req = MunkeyDeleteRequest.from_message(msg)
        except Exception:  # noqa: BLE001 - the mod behind it answers a malformed request
            return call_next(msg, ctx)
        meta = ctx.state.config_records.get(META_KEY)
        first_try = (
            meta is not None
            and f"{req.request_id}|{req.nonce}" not in list(meta.get("sent-keys", []))
            and meta.get("pre-request") != req.request_id
            and BACKBONE_KEY in ctx.state.array_records
        )
        if not first_try:
            return call_next(msg, ctx)
        world = context_world(self.scenario_path, ctx)
        before = world.model()
        before.load_state_dict(ctx.state.array_records[MODEL_KEY].to_torch_state_dict())
        held = before.memory.ids
        wanted = set(req.ids)
        if req.label >= 0:
            wanted |= set(held[before.memory.labels == req.label].tolist())
        reply = call_next(msg, ctx)
        if reply.has_error() or not wanted:
            return reply
        try:
            out = self._measure(ctx, world, before, wanted)
        except Exception as err:  # noqa: BLE001 - research must never change what the client sends
            log.warning("research metrics of node %s failed: %s: %s", ctx.node_id, type(err).__name__, err)
            out = {"error": 1.0}
        metrics = reply.content.metric_records["metrics"]
        for k, v in out.items():
            metrics[RESEARCH + k] = float(v)
        return reply

    def _measure(self, ctx: Context, world: MunkeyWorld, before: MunkeyViT, wanted: set[int]) -> dict[str, float]:
        live = self.munkey.setup_for(ctx).model
        real = len(world.y)  # a cheat's fresh ids (reinsert) are not instances: only dataset rows count
        deleted = sorted(i for i in wanted & set(before.memory.ids.tolist()) if i < real)
        if not deleted:
            return {"deleted": 0.0}
        committed = MemoryCommitment.from_bytes(ctx.state.config_records[META_KEY]["state"]).ids()
        twin = world.model()
        twin.backbone.load_state_dict(
            {
                k.removeprefix("backbone."): v
                for k, v in ctx.state.array_records[BACKBONE_KEY].to_torch_state_dict().items()
            }
        )
        rows = before.memory.state()
        keep = torch.isin(rows["ids"], torch.tensor(committed, dtype=torch.int64))
        twin.memory = KeyValueMemory.from_state({k: v[keep] for k, v in rows.items()})
        members = world.data(deleted)
        non = non_members_for(world, members.tensors[1])
        out = {"deleted": float(len(deleted))}
        for tag, model in (("before", before), ("after", live), ("twin", twin.eval())):
            for k, v in forget_signal(model, members, non).items():
                out[f"{k}-{tag}"] = v
        out["still-held"] = float(torch.isin(live.memory.ids, torch.tensor(deleted)).sum())
        same_rows = all(torch.equal(a, b) for a, b in zip(live.memory.state().values(), twin.memory.state().values()))
        same_backbone = all(
            torch.equal(a, b) for a, b in zip(live.backbone.state_dict().values(), twin.backbone.state_dict().values())
        )
        out["twin-equal"] = float(same_rows and same_backbone)
        return out


def build_munkey_client_app(scenario: str | None = None, out: str | None = None) -> ClientApp:
    """The MUNKEY fleet's ClientApp: :class:`MunkeyMod` (one line) plus the research mod around it.
    ``scenario`` None: the run config's ``scenario`` (``flwr run``). ``out`` is unused (kept for the
    signature of :func:`simulations.client_app.build_client_app`)."""
    munkey = MunkeyMod(lambda context: munkey_node_setup(context, scenario))
    app = ClientApp(mods=[ResearchMod(munkey, scenario)])
    return munkey.install(app)


# ----------------------------------------------------------------------------------- provider side
class RecordingGrid:
    """A Grid that hands everything to the real one and keeps the metrics of each MUNKEY reply (research)."""

    def __init__(self, grid: Grid):
        self._grid = grid
        self._sent: dict[str, tuple[int, str, str]] = {}
        self.commit: dict[int, dict] = {}
        self.delete: dict[tuple[str, int], dict] = {}  # (request, node) -> the first reply's metrics

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def get_node_ids(self):
        return self._grid.get_node_ids()

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(self._grid.push_messages(messages))
        for m, mid in zip(messages, ids):
            cfg = m.content.config_records.get("munkey")
            rid = str(cfg.get("request-id", "")) if cfg is not None else ""
            self._sent[mid] = (int(m.metadata.dst_node_id), m.metadata.message_type, rid)
        return ids

    def pull_messages(self, ids):
        from zkapex_flwr.protocol import reply_metrics

        replies = list(self._grid.pull_messages(ids))
        for r in replies:
            node, kind, rid = self._sent.get(r.metadata.reply_to_message_id, (-1, "", ""))
            metrics = reply_metrics(r)
            if kind == MUNKEY_COMMIT and metrics:
                self.commit.setdefault(node, metrics)
            elif kind == MUNKEY_DELETE and any(k.startswith(RESEARCH) for k in metrics):
                self.delete.setdefault((rid, node), metrics)
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def train_provider(world: MunkeyWorld, progress=None) -> dict:
    """θg (backbone trained on the base pool, frozen; memory = the provider's deletable rows), the
    retrieval :func:`tune_retrieval` would pick on held-out base-pool data, and the RMIA reference
    backbone (another seed, same base pool) when the scenario asks for one."""
    from zkapex_flwr.munkey.model import train_steps, tune_retrieval
    from zkapex_flwr.tasks import ImageTask
    from zkapex_flwr.training import accuracy, resolve_device

    sc, t = world.scenario, world.scenario.training
    device = resolve_device(sc.resources.device)
    timings = {}

    def backbone(seed: int, desc: str) -> MunkeyViT:
        s = time.perf_counter()
        model = world.model(seed)
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        model.backbone.to(device)
        train_steps(
            model.backbone,
            ImageTask(),
            world.data(world.fit_ids),
            steps=t.steps,
            lr=t.lr,
            batch_size=t.batch_size,
            weight_decay=t.weight_decay,
            seed=seed,
            progress=progress,
            desc=desc,
        )
        model.backbone.cpu()
        timings[desc] = time.perf_counter() - s
        return model.freeze()

    theta = backbone(sc.seed, "provider backbone (base pool)")
    tuned, _ = tune_retrieval(theta, world.data(world.fit_ids), world.data(world.val_ids))
    s = time.perf_counter()
    theta.add_instances(world.memory_ids, *world.data(world.memory_ids).tensors)
    timings["θg memory"] = time.perf_counter() - s
    ref = backbone(sc.seed + 1000, "RMIA reference backbone") if t.reference else None
    test = world.data(world.test_ids)
    return {
        "theta": theta,
        "reference": ref,
        "tuned": tuned,
        "timings_s": timings,
        "accuracy": {
            "theta_test_acc": accuracy(theta, ImageTask(), test),
            "backbone_only_test_acc": accuracy(theta.backbone, ImageTask(), test),
        },
    }


def wait_for_nodes(grid, n: int, timeout_s: float, scenario: str) -> list[int]:
    from .runner import wait_for_nodes as wait

    return wait(grid, n, timeout_s, scenario)


def munkey_provider_main(
    grid: Grid,
    scenario_path: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    supernode_wait_s: float = SUPERNODE_WAIT_S,
) -> dict:
    """The MUNKEY provider (the ServerApp's body): train θg, commit, serve the requests, write the report.

    The same signature as :func:`simulations.runner.provider_main`. ``resume`` keeps ``out/provider``
    (registry, ledger, deleted ids) of an earlier run against the same SuperNodes."""
    from flwr.serverapp.strategy import FedAvg
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from strategies.munkey import MunkeyConfig, MunkeyRequest, MunkeyUnlearning
    from zkapex_flwr.training import seed_everything

    t0 = time.perf_counter()
    path = resolve_scenario(scenario_path)
    sc = load_munkey_scenario(path, overrides)
    wait_for_nodes(grid, sc.clients, supernode_wait_s, f"{path} ({sc.name})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out / "provider", ignore_errors=True)
    seed_everything(sc.seed)
    world = munkey_world(path, overrides)
    console = Console(stderr=True)
    timings: dict[str, float] = {}
    rec = RecordingGrid(grid)
    d = sc.deletion
    cfg = MunkeyConfig(
        deadline_s=d.deadline_s,
        max_attempts=d.max_attempts,
        max_in_flight=d.max_in_flight,
        commit_deadline_s=d.commit_deadline_s,
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        bars: dict[str, int] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = progress.add_task(phase, total=total)
            progress.update(bars[phase], completed=done, total=total)

        s = time.perf_counter()
        prov = train_provider(world, progress)
        timings["provider_s"] = time.perf_counter() - s
        theta = prov["theta"]
        arrays = ArrayRecord({k: v.detach().cpu() for k, v in theta.state_dict().items()})
        # commit first: a client-held request names each node's own ids, and node ids are known only then
        s = time.perf_counter()
        MunkeyUnlearning(requests=[], state_dir=out / "provider", config=cfg).commit_round(rec, arrays)
        timings["commit_s"] = time.perf_counter() - s
        registry = json.loads((out / "provider" / "munkey-registry.json").read_text())
        node_of = {int(e["partition"]): int(n) for n, e in registry.items() if int(e["partition"]) >= 0}
        requests = []
        for index, r in enumerate(sc.requests):
            ids = world.requests[r.id]
            requests.append(
                MunkeyRequest(
                    r.id,
                    ids=tuple(ids["provider"]),
                    label=r.label,
                    client_ids={node_of[p]: tuple(v) for p, v in ids["clients"].items() if p in node_of},
                    after_round=index,
                    description=f"{r.forget} " + (str(r.label) if r.forget == "class" else f"{r.count}"),
                )
            )
        strategy = MunkeyUnlearning(
            FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
            requests=requests,
            state_dir=out / "provider",
            config=cfg,
            on_progress=on_progress,
        )
        # No FedAvg rounds (frozen backbone, per-client memories): the requests are served one after the
        # other, each against θg without the rows of the ones before it, make-up rounds for quarantined
        # nodes first (what MunkeyUnlearning.start does after each round).
        s = time.perf_counter()
        for index in range(len(requests)):
            strategy.serve_requests(rec, strategy.forget_in_global(arrays), index)
        final = strategy.forget_in_global(arrays)
        timings["deletions_s"] = time.perf_counter() - s
    s = time.perf_counter()
    theta_eval = evaluate_theta(world, prov, strategy, final)
    timings["evaluation_s"] = time.perf_counter() - s
    summary = write_munkey_report(
        out,
        world,
        strategy,
        rec,
        node_of,
        theta_eval,
        prov,
        wall_s=time.perf_counter() - t0,
        timings=timings,
    )
    console.log(
        f"[{sc.name}] {summary['cheaters_caught']} of {summary['catchable_cheaters']} catchable cheaters caught "
        f"({summary['uncatchable_caught']} of {summary['uncatchable']} uncatchable), {summary['honest_rejected']} "
        f"honest rejected, wall {summary['wall_s']:.0f} s → {out}"
    )
    return summary


def evaluate_theta(world: MunkeyWorld, prov: dict, strategy, final: ArrayRecord) -> dict:
    """θg per request, before and after its provider-held deletion: forget signal, RMIA (reference:
    the other backbone with the memory rebuilt without the deleted rows) and the exact-rebuild check."""
    from zkapex_flwr.membership import MembershipAudit
    from zkapex_flwr.munkey.model import build_munkey
    from zkapex_flwr.tasks import ImageTask

    theta, ref = prov["theta"], prov["reference"]
    gone: set[int] = set()
    out: dict = {}
    current = theta.copy()
    for req in strategy.requests:
        rid = req.request_id
        served = strategy.served.get(rid)
        ids = sorted(strategy.required_ids(req, -1, served)) if served is not None else []
        row: dict = {"provider_ids_deleted": len(ids)}
        if ids:
            members = world.data(ids)
            non = non_members_for(world, members.tensors[1])
            after = current.copy()
            after.forget(ids)
            kept = sorted(set(world.memory_ids.tolist()) - gone - set(ids))
            rebuilt = build_munkey(theta.backbone, theta.num_classes, theta.retrieval, kept, world.data(kept))
            row["exact_rebuild"] = all(
                torch.equal(a, b) for a, b in zip(after.memory.state().values(), rebuilt.memory.state().values())
            )
            for tag, model in (("before", current), ("after", after)):
                row |= {f"{k}_{tag}": v for k, v in forget_signal(model, members, non).items()}
            if ref is not None:
                reference = build_munkey(ref.backbone, ref.num_classes, theta.retrieval, kept, world.data(kept))
                audit = MembershipAudit.calibrate([reference], ImageTask(), members, non)
                for tag, model in (("before", current), ("after", after)):
                    scores = audit.score(model, ImageTask())
                    row[f"rmia_auc_{tag}"] = scores["auc"]
                    row[f"rmia_tpr_at_1pct_fpr_{tag}"] = scores["tpr_at_1pct_fpr"]
            current = after
            gone |= set(ids)
        out[rid] = row
    final_ids = set(final.to_torch_state_dict()["memory.ids"].tolist())
    expected = set(world.memory_ids.tolist()) - gone
    return {
        "requests": out,
        "final_memory_rows": len(final_ids),
        "deleted_ids_in_final": len(final_ids & gone),
        "final_is_theta_minus_deleted": final_ids == expected,
    }


# ------------------------------------------------------------------------------------------ report
def _first_cheat(behaviour: str, requests: list[str]) -> str | None:
    if behaviour in HONEST:
        return None
    return requests[1] if behaviour in FROM_SECOND else requests[0]


def _num(v):
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return None if not np.isfinite(f) else f


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    return obj


def _median(values) -> float | None:
    values = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.median(values)) if values else None


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.mean(values)) if values else None


def write_munkey_report(out: Path, world, strategy, rec: RecordingGrid, node_of, theta_eval, prov, *, wall_s, timings):
    """``ledger.csv``, ``clients.csv``, ``research.csv``, ``summary.json``, ``report.md`` and the plots."""
    import pandas as pd

    from zkapex_flwr.files import atomic_write
    from zkapex_flwr.machine import describe_machine

    sc = world.scenario
    rids = [r.request_id for r in strategy.requests]
    pid_of = {n: p for p, n in node_of.items()}
    frame = strategy.ledger.frame()  # every verdict in order: a request's first, then make-up rounds
    rows, seen = [], set()
    for _, r in frame.iterrows():
        node = int(r["node_id"])
        phase = "makeup" if (r["request_id"], node) in seen else "request"
        seen.add((r["request_id"], node))
        pid = pid_of.get(node, -1)
        beh = world.fleet[pid] if pid >= 0 else "unknown"
        first = _first_cheat(beh, rids)
        expected = "compliant" if (first is None or rids.index(r["request_id"]) < rids.index(first)) else None
        if r["request_id"] == first:
            expected = EXPECTED[beh]
        rows.append(
            {
                "request_id": r["request_id"],
                "phase": phase,
                "node_id": node,
                "partition_id": pid,
                "behaviour": beh,
                "reason": r["reason"],
                "expected": expected if phase == "request" else None,
                "caught": not bool(r["compliant"]),
                "attempts": r["attempts"],
                "deleted": r["deleted"],
                "verify_ms": r["verify_ms"],
                "client_prove_ms": r["client_prove_ms"],
                "proof_bytes": r["proof_bytes"],
                "detail": r["detail"],
            }
        )
    ledger = pd.DataFrame(rows)
    ledger.to_csv(out / "ledger.csv", index=False)

    quarantined = strategy.quarantined()
    clients = []
    for pid, beh in enumerate(world.fleet):
        node = node_of.get(pid)
        every = ledger[ledger["partition_id"] == pid]
        mine = every[every["phase"] == "request"]
        first = _first_cheat(beh, rids)
        observed = None
        if first is not None and len(mine[mine["request_id"] == first]):
            observed = mine[mine["request_id"] == first].iloc[0]["reason"]
        caught = bool(every["caught"].any()) if len(every) else False
        expected = EXPECTED[beh]
        clients.append(
            {
                "partition_id": pid,
                "node_id": node,
                "behaviour": beh,
                "first_cheat_request": first,
                "expected_reason": expected,
                "observed_reason": observed if first is not None else ("compliant" if not caught else "rejected"),
                "caught": caught,
                "quarantined": node in quarantined,
                "as_expected": (not caught) if expected == "compliant" else (caught and observed == expected),
                **{f"commit_{k}": v for k, v in rec.commit.get(node, {}).items() if k != "partition-id"},
            }
        )
    clients = pd.DataFrame(clients)
    clients.to_csv(out / "clients.csv", index=False)

    research = []
    for (rid, node), m in rec.delete.items():
        pid = pid_of.get(node, -1)
        research.append(
            {
                "request_id": rid,
                "node_id": node,
                "partition_id": pid,
                "behaviour": world.fleet[pid] if pid >= 0 else "unknown",
                **{k.removeprefix(RESEARCH).replace("-", "_"): v for k, v in m.items() if k.startswith(RESEARCH)},
                "test_acc_before": m.get("accuracy-before"),
                "test_acc_after": m.get("accuracy-after"),
                "prove_ms": m.get("prove-ms"),
            }
        )
    research = pd.DataFrame(research).sort_values(["request_id", "partition_id"]) if research else pd.DataFrame()
    research.to_csv(out / "research.csv", index=False)

    honest = clients[clients["behaviour"].isin(HONEST)]
    catchable = clients[~clients["behaviour"].isin(HONEST + UNCATCHABLE)]
    uncatch = clients[clients["behaviour"].isin(UNCATCHABLE)]
    by_behaviour = {}
    for beh, g in clients.groupby("behaviour", sort=False):
        by_behaviour[beh] = {
            "clients": len(g),
            "expected_reason": EXPECTED[beh],
            "observed_reasons": sorted({str(v) for v in g["observed_reason"] if v is not None}),
            "caught": int(g["caught"].sum()),
            "as_expected": bool(g["as_expected"].all()),
        }
    per_request = {}
    for r in sc.requests:
        rows_r = ledger[
            (ledger["request_id"] == r.id) & ledger["behaviour"].isin(HONEST) & (ledger["phase"] == "request")
        ]
        ok = rows_r[~rows_r["caught"]]
        ok = ok[ok["deleted"].astype(float) > 0]
        res = research[(research["request_id"] == r.id)] if len(research) else research
        hres = res[res["behaviour"].isin(HONEST)] if len(res) else res
        ids = world.requests[r.id]
        per_request[r.id] = {
            "forget": r.forget,
            "label": r.label,
            "provider_ids": len(ids["provider"])
            if r.forget != "class"
            else theta_eval["requests"][r.id]["provider_ids_deleted"],
            "client_ids": sum(len(v) for v in ids["clients"].values()),
            "theta": theta_eval["requests"].get(r.id, {}),
            "prove_ms_per_deleted": _median(ok["client_prove_ms"].astype(float) / ok["deleted"].astype(float)),
            "verify_ms_per_deleted": _median(ok["verify_ms"].astype(float) / ok["deleted"].astype(float)),
            "proof_bytes_per_deleted": _median(ok["proof_bytes"].astype(float) / ok["deleted"].astype(float)),
            "deleted_per_honest_client": _median(ok["deleted"].astype(float)),
            "honest_clients": {
                k: _mean(hres[k]) if len(hres) and k in hres else None
                for k in (
                    "forget_acc_before",
                    "forget_acc_after",
                    "forget_p_before",
                    "forget_p_after",
                    "mia_auc_before",
                    "mia_auc_after",
                    "test_acc_before",
                    "test_acc_after",
                )
            },
            "honest_deleted_ids_still_held": int(hres["still_held"].sum())
            if len(hres) and "still_held" in hres
            else None,
            "honest_equal_to_twin": bool(hres["twin_equal"].astype(bool).all())
            if len(hres) and "twin_equal" in hres
            else None,
        }
    uncatchable = {}
    for beh in UNCATCHABLE:
        u = research[research["behaviour"] == beh] if len(research) else research
        if not len(u):
            continue
        uncatchable[beh] = {}
        for rid, g in u.groupby("request_id"):
            h = research[(research["request_id"] == rid) & research["behaviour"].isin(HONEST)]
            uncatchable[beh][rid] = {
                "deleted": _mean(g["deleted"]),
                **{
                    f"{k}_{tag}": _mean(g[f"{k}_{tag}"])
                    for k in ("forget_acc", "forget_p", "mia_auc")
                    for tag in ("before", "after", "twin")
                },
                "test_acc_after": _mean(g["test_acc_after"]),
                "honest_forget_acc_after": _mean(h["forget_acc_after"]),
                "honest_mia_auc_after": _mean(h["mia_auc_after"]),
                "honest_test_acc_after": _mean(h["test_acc_after"]),
            }
    summary = {
        "scenario": sc.name,
        "scenario_file": sc.source,
        "scenario_digest": sc.digest,
        "scenario_overrides": dict(sc.overrides),
        "method": METHOD,
        "fedavg_rounds": 0,
        "clients": len(clients),
        "honest": len(honest),
        "cheaters": len(clients) - len(honest),
        "catchable_cheaters": len(catchable),
        "cheaters_caught": int(catchable["caught"].sum()),
        "uncatchable": len(uncatch),
        "uncatchable_caught": int(uncatch["caught"].sum()),
        "honest_rejected": int(honest["caught"].sum()),
        "all_as_expected": bool(clients["as_expected"].all()),
        "registered": len(node_of),
        "by_behaviour": by_behaviour,
        "requests": per_request,
        "uncatchable_signal": uncatchable,
        "theta": {
            **prov["accuracy"],
            "memory_rows": len(world.memory_ids),
            "base_pool": len(world.fit_ids) + len(world.val_ids),
            "client_rows": {
                "min": min(len(p) for p in world.parts.values()),
                "max": max(len(p) for p in world.parts.values()),
            },
            "retrieval": {"k": sc.model.k, "temperature": sc.model.temperature, "lam": sc.model.lam},
            "tuned_retrieval": {
                "k": prov["tuned"].k,
                "temperature": prov["tuned"].temperature,
                "lam": prov["tuned"].lam,
            },
            "final_memory_rows": theta_eval["final_memory_rows"],
            "deleted_ids_in_final": theta_eval["deleted_ids_in_final"],
            "final_is_theta_minus_deleted": theta_eval["final_is_theta_minus_deleted"],
        },
        "commit_ms_median": _median([m.get("commit-ms") for m in rec.commit.values()]),
        "wall_s": wall_s,
        "timings_s": {**timings, **{f"train: {k}": v for k, v in prov["timings_s"].items()}},
        "machine": describe_machine(),
    }
    summary = _plain(summary)
    atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())
    plot_munkey(ledger, clients, research, summary, out)
    (out / "report.md").write_text(markdown(summary), encoding="utf-8")
    return summary


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(s: dict) -> str:
    t = s["theta"]
    lines = [
        f"# MUNKEY fleet: {s['scenario']}",
        "",
        f"{s['clients']} clients ({s['honest']} honest, {s['catchable_cheaters']} catchable cheaters, "
        f"{s['uncatchable']} uncatchable), {len(s['requests'])} deletion requests, {s['fedavg_rounds']} FedAvg "
        f"rounds (frozen backbone, per-client memories). Wall time {s['wall_s']:.0f} s.",
        "",
        f"**{s['cheaters_caught']} of {s['catchable_cheaters']} catchable cheaters caught, "
        f"{s['honest_rejected']} honest clients rejected**; the uncatchable ones (state outside the commitment) "
        f"caught: {s['uncatchable_caught']} of {s['uncatchable']}. Every behaviour got its expected reason: "
        f"{_f(s['all_as_expected'])}.",
        "",
        f"θg: test accuracy {_f(t['theta_test_acc'])} (backbone alone {_f(t['backbone_only_test_acc'])}), "
        f"{t['memory_rows']} provider-held memory rows, base pool {t['base_pool']} (never deleted), "
        f"{t['client_rows']['min']}–{t['client_rows']['max']} own rows per client; retrieval k={t['retrieval']['k']}, "
        f"τ={t['retrieval']['temperature']}, λ={t['retrieval']['lam']} (tune_retrieval on held-out base-pool data "
        f"picks k={t['tuned_retrieval']['k']}, τ={t['tuned_retrieval']['temperature']}, "
        f"λ={t['tuned_retrieval']['lam']}). After all requests θg holds {t['final_memory_rows']} rows, "
        f"{t['deleted_ids_in_final']} of them deleted ids; θg = θ minus the deleted rows: "
        f"{_f(t['final_is_theta_minus_deleted'])}.",
        "",
        "## Detection by behaviour",
        "",
        "| behaviour | clients | expected reason | observed (first cheating request) | caught | as expected |",
        "|---|---:|---|---|---:|---|",
    ]
    for b, v in s["by_behaviour"].items():
        lines.append(
            f"| {b} | {v['clients']} | {v['expected_reason']} | {', '.join(v['observed_reasons'])} | "
            f"{v['caught']} | {_f(v['as_expected'])} |"
        )
    lines += [
        "",
        "## Requests",
        "",
        "θg columns: the provider's model on the deleted provider-held instances (likelihood-threshold MIA AUC "
        "and RMIA AUC against never-trained test samples of the same classes; 0.5 = indistinguishable). "
        "Client columns: mean over honest clients of their own copy on the instances deleted there.",
        "",
        "| request | deleted (θg / per honest client) | θg forget acc | θg MIA AUC | θg RMIA AUC | exact rebuild "
        "| clients forget acc | clients MIA AUC | prove ms / deleted | verify ms / deleted | proof B / deleted |",
        "|---|---|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for rid, r in s["requests"].items():
        th, hc = r["theta"], r["honest_clients"]

        def arrow(d, k):
            return (
                f"{_f(d.get(f'{k}_before'))} → {_f(d.get(f'{k}_after'))}" if d.get(f"{k}_before") is not None else "–"
            )

        lines.append(
            f"| {rid} ({r['forget']}{'' if r['label'] is None else ' ' + str(r['label'])}) | "
            f"{th.get('provider_ids_deleted', 0)} / {_f(r['deleted_per_honest_client'], 0)} | {arrow(th, 'forget_acc')} | "
            f"{arrow(th, 'mia_auc')} | {arrow(th, 'rmia_auc')} | {_f(th.get('exact_rebuild'))} | "
            f"{arrow(hc, 'forget_acc')} | {arrow(hc, 'mia_auc')} | {_f(r['prove_ms_per_deleted'], 4)} | "
            f"{_f(r['verify_ms_per_deleted'], 4)} | {_f(r['proof_bytes_per_deleted'], 0)} |"
        )
    lines += [
        "",
        "Honest clients: deleted ids still in their memories: "
        + ", ".join(f"{rid} {_f(r['honest_deleted_ids_still_held'])}" for rid, r in s["requests"].items())
        + "; each honest client's model equals its honest twin: "
        + ", ".join(f"{rid} {_f(r['honest_equal_to_twin'])}" for rid, r in s["requests"].items())
        + ".",
        "",
        "## What the uncatchable cheats keep",
        "",
        "Compliant to the verifier. *live*: the model the client predicts with; *twin*: the same client honest "
        "(θg's backbone, the committed memory); *honest*: mean of the honest clients after the same request.",
        "",
        "| behaviour | request | deleted | forget acc live / twin / honest | MIA AUC live / twin / honest "
        "| true-class p live / twin | test acc live / honest |",
        "|---|---|---:|---|---|---|---|",
    ]
    for beh, reqs in s["uncatchable_signal"].items():
        for rid, u in reqs.items():
            lines.append(
                f"| {beh} | {rid} | {_f(u['deleted'], 0)} | {_f(u['forget_acc_after'])} / {_f(u['forget_acc_twin'])} / "
                f"{_f(u['honest_forget_acc_after'])} | {_f(u['mia_auc_after'])} / {_f(u['mia_auc_twin'])} / "
                f"{_f(u['honest_mia_auc_after'])} | {_f(u['forget_p_after'])} / {_f(u['forget_p_twin'])} | "
                f"{_f(u['test_acc_after'])} / {_f(u['honest_test_acc_after'])} |"
            )
    m = s["machine"]
    lines += [
        "",
        f"Commit (client, median): {_f(s['commit_ms_median'], 2)} ms. Timings (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in s["timings_s"].items())
        + ".",
        "",
        f"Machine: {m.get('cpu', m.get('processor'))}, {m.get('cpu_count')} CPUs, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads), {m.get('date')}.",
        "",
        "Files: `ledger.csv` (every verdict: each request's own (`phase = request`), then the make-up rounds "
        "of quarantined clients), `clients.csv`, `research.csv` (client-side research metrics), `summary.json`, "
        + ", ".join(f"`{p}`" for p in PLOTS)
        + ", `provider/`.",
        "",
    ]
    return "\n".join(lines)


def replot(folder: str | Path) -> list[Path]:
    """Redraw the plots and ``report.md`` of a finished run from its own files (no re-run)."""
    import pandas as pd

    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text())
    ledger = pd.read_csv(folder / "ledger.csv")
    research = pd.read_csv(folder / "research.csv")
    paths = plot_munkey(ledger, pd.read_csv(folder / "clients.csv"), research, summary, folder)
    (folder / "report.md").write_text(markdown(summary), encoding="utf-8")
    return [*paths, folder / "report.md"]


def plot_munkey(ledger, clients, research, summary: dict, out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    from zkapex_flwr.figures import paper_style, save_figure

    paths = []
    with paper_style():
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.add_subplot()
        behs = list(summary["by_behaviour"])
        rate = [summary["by_behaviour"][b]["caught"] / summary["by_behaviour"][b]["clients"] for b in behs]
        colours = ["tab:green" if b in HONEST else ("tab:gray" if b in UNCATCHABLE else "tab:red") for b in behs]
        ax.barh(range(len(behs)), rate, color=colours)
        for i, b in enumerate(behs):
            v = summary["by_behaviour"][b]
            ax.text(min(rate[i], 1.0) + 0.02, i, ", ".join(v["observed_reasons"]) or "–", va="center", fontsize=7)
        ax.set_yticks(range(len(behs)), behs)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.45)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_xlabel("fraction of clients caught")
        ax.set_title("MUNKEY fleet: detection by behaviour (reason of the first cheating request)")
        ax.grid(axis="x")
        paths.append(save_figure(fig, out / "detection.png"))

        fig = Figure(figsize=(6.4, 3.2))
        ax = fig.add_subplot()
        reqs = list(summary["requests"])
        ok = ledger[ledger["behaviour"].isin(HONEST) & ~ledger["caught"] & (ledger["phase"] == "request")]
        ok = ok[ok["deleted"].astype(float) > 0] if len(ok) else ok
        data_p = [
            (ok[ok["request_id"] == r]["client_prove_ms"] / ok[ok["request_id"] == r]["deleted"]).astype(float)
            for r in reqs
        ]
        data_v = [
            (ok[ok["request_id"] == r]["verify_ms"] / ok[ok["request_id"] == r]["deleted"]).astype(float) for r in reqs
        ]
        pos = np.arange(len(reqs))
        for d, off, colour, label in (
            (data_p, -0.18, "tab:blue", "prove (client)"),
            (data_v, 0.18, "tab:orange", "verify (provider)"),
        ):
            vals = [v.dropna().values if len(v.dropna()) else np.array([np.nan]) for v in d]
            bp = ax.boxplot(vals, positions=pos + off, widths=0.3, patch_artist=True, manage_ticks=False)
            for b in bp["boxes"]:
                b.set_facecolor(colour)
                b.set_alpha(0.6)
            ax.plot([], [], color=colour, lw=6, alpha=0.6, label=label)
        ax.set_xticks(pos, reqs)
        ax.set_yscale("log")
        ax.set_ylabel("ms per deleted instance")
        ax.set_xlabel("deletion request")
        ax.set_title("Time per deleted instance (honest clients)")
        ax.legend()
        ax.grid(axis="y")
        paths.append(save_figure(fig, out / "deletion_time.png"))

        fig = Figure(figsize=(6.4, 3.2))
        ax = fig.add_subplot()
        items = [(b, r, u) for b, reqs_ in summary["uncatchable_signal"].items() for r, u in reqs_.items()]
        if items:
            pos = np.arange(len(items))
            for key, off, colour, label in (
                ("forget_acc_after", -0.25, "tab:red", "cheater's live model"),
                ("forget_acc_twin", 0.0, "tab:green", "its honest twin"),
                ("honest_forget_acc_after", 0.25, "tab:blue", "honest clients (mean)"),
            ):
                ax.bar(
                    pos + off,
                    [u[key] if u[key] is not None else np.nan for _, _, u in items],
                    0.25,
                    color=colour,
                    label=label,
                )
            ax.set_xticks(pos, [f"{b}\n{r}" for b, r, _ in items], fontsize=7)
            ax.set_ylim(0, 1.3)
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
            ax.legend(fontsize=7, ncols=3, loc="upper center")
        else:
            ax.text(0.5, 0.5, "no uncatchable clients", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel("accuracy on the deleted instances")
        ax.set_title("Forgotten signal kept by the uncatchable cheats")
        ax.grid(axis="y")
        paths.append(save_figure(fig, out / "uncatchable.png"))
    return paths


# ------------------------------------------------------------------------------------------ runner
def simulate_munkey(
    scenario: str | Path,
    out: str | Path,
    *,
    overrides: dict | None = None,
    cpus_per_client: float | None = None,
    num_gpus: float | None = None,
    device: str | None = None,
    ray_address: str | None = None,
) -> dict:
    """Run a MUNKEY scenario on Flower's simulation engine (Ray) and return its ``summary.json``:
    :func:`simulations.runner.simulate`, which runs a ``method = "munkey"`` scenario here.
    ``cpus_per_client``, ``num_gpus`` and ``device`` are the ``resources.*`` keys (``device``: where
    the provider trains the backbone)."""
    from .runner import simulate

    if not is_munkey_scenario(scenario):
        raise ScenarioError(f'{scenario}: not a MUNKEY scenario (it has no method = "{METHOD}")')
    return simulate(
        scenario,
        out,
        overrides=overrides,
        cpus_per_client=cpus_per_client,
        num_gpus=num_gpus,
        device=device,
        ray_address=ray_address,
    )


app = build_munkey_client_app()  # for `flwr run .` (the scenario comes from the run config)
