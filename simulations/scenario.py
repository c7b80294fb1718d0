"""Declarative fleet scenarios (docs/protocol.md §7): one TOML file says everything a fleet run depends on.

A scenario names the model and dataset, the provider's training and unlearning settings, the deletion
requests, the device **profiles** (data size and label skew, domain shift, compute speed, memory
budget, uplink, availability) with their shares of the fleet, and the **behaviour** mix (§5). Clients
get a profile and a behaviour by a seeded draw, so a scenario file always yields the same fleet.
See ``simulations/smoke.toml`` for every key, with comments. Unknown keys are errors: a typo in a
scenario must not silently fall back to a default.
"""
from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from zkapex_flwr.data.images import DomainShift
from zkapex_flwr.proof.cheats import BEHAVIOURS
from zkapex_flwr.unlearning.scope import VERIFIED_SCOPE

FLEET_BEHAVIOURS = BEHAVIOURS + ("late",)   # late = honest but slow: answers after the deadline once
HONEST_BEHAVIOURS = ("honest", "late")


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or inconsistent; the message names the file and the key."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "vit"
    embed_dim: int = 32
    depth: int = 2
    num_heads: int = 2
    mlp_ratio: float = 2.0
    patch_size: int | None = None    # default: 2 on 8×8 digits, 4 on 28×28 MNIST


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "digits"          # digits | mnist (both ship inside a package)
    provider_fraction: float = 0.3   # the provider's own pool: pretrains θg, holds D_f and retain data
    test_fraction: float = 0.15      # shared test pool: client test sets (in each client's domain), MIA non-members
    client_holdout: float = 0.2      # not used for training: reserved per client (kept for held-out checks)


@dataclass(frozen=True)
class TrainingSpec:
    pretrain_epochs: int = 20        # provider pretraining of the initial θg on its own pool
    pretrain_lr: float = 2e-3
    rounds: int = 2                  # FedAvg rounds before personalize-and-commit
    rounds_after: int = 1            # FedAvg rounds after the unlearning round(s) (quarantine in force)
    fraction_train: float = 0.25
    local_epochs: int = 1
    lr: float = 1e-3
    personal_epochs: int = 5
    personal_lr: float = 1e-3
    batch_size: int = 32


@dataclass(frozen=True)
class UnlearningSpec:
    scope: str = VERIFIED_SCOPE      # every block's fc1 and the classifier head (the verified default)
    block_size: int = 16
    mask_fraction: float = 0.01
    max_blocks: int | None = None    # block budget (with group > 1: counts every block of a touched unit)
    group: int = 1                   # G: Fisher blocks per proof unit (G > 1: column-structured mask)
    slots: int = 2                   # K: masked columns per proof step
    steps: tuple[int, ...] = (1,)    # B choices offered to clients; each picks by its memory budget
    damping: float = 1.0             # λ in units of each block's mean Fisher diagonal
    num_grads: int = 64
    deadline_s: float = 60.0
    max_attempts: int = 2
    max_in_flight: int = 4


@dataclass(frozen=True)
class RequestSpec:
    id: str
    after_round: int
    forget: str = "class"            # class | samples
    classes: tuple[int, ...] = (3,)
    count: int = 30


@dataclass(frozen=True)
class ProfileSpec:
    name: str
    share: float = 1.0               # fraction of the fleet
    data_weight: float = 1.0         # relative data size per client
    alpha: float = 1.0               # Dirichlet label skew (smaller = more skewed)
    shift: str = "style"             # style | mild | geometric | none (DomainShift.KINDS)
    speed: float = 1.0               # compute speed relative to this machine (modelled device time)
    memory_mb: float = 64.0          # prover working-set budget: picks the steps per proof B
    uplink_mbps: float = 10.0        # modelled upload time of the proof bundle
    availability: float = 1.0        # probability that the node answers a given message


@dataclass(frozen=True)
class ClientSpec:
    partition_id: int
    profile: str
    behaviour: str


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    seed: int = 0
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    unlearning: UnlearningSpec = field(default_factory=UnlearningSpec)
    requests: tuple[RequestSpec, ...] = ()
    profiles: tuple[ProfileSpec, ...] = (ProfileSpec("default"),)
    behaviours: tuple[tuple[str, float], ...] = (("honest", 1.0),)
    replay_wait_s: float = 20.0      # a replaying client waits this long for a bundle to capture
    retrain_clients: int = 8         # honest clients given a retrain-from-scratch reference in the report (0: none;
                                     # a file without the key: min(8, clients))
    source: str = ""                 # the file it was loaded from
    digest: str = ""                 # sha256 of the file's bytes

    def profile(self, name: str) -> ProfileSpec:
        for p in self.profiles:
            if p.name == name:
                return p
        raise ScenarioError(f"{self.source}: no profile named '{name}'")

    def fleet(self) -> list[ClientSpec]:
        """Every client's profile and behaviour, drawn with the scenario's seed (largest remainder counts)."""
        rng = np.random.default_rng([self.seed, 17])
        profiles = _counts([(p.name, p.share) for p in self.profiles], self.clients)
        behaviours = _counts(list(self.behaviours), self.clients)
        prof = np.array(sum(([n] * c for n, c in profiles), []))
        beh = np.array(sum(([n] * c for n, c in behaviours), []))
        rng.shuffle(prof)
        rng.shuffle(beh)
        return [ClientSpec(i, str(prof[i]), str(beh[i])) for i in range(self.clients)]


def _counts(mix: list[tuple[str, float]], total: int) -> list[tuple[str, int]]:
    """Split ``total`` by weights (an integer weight ≥ 1 is a count; fractions are shares)."""
    if all(float(w).is_integer() and w >= 1 for _, w in mix) and sum(w for _, w in mix) == total:
        return [(n, int(w)) for n, w in mix]
    s = sum(w for _, w in mix)
    raw = [(n, total * w / s) for n, w in mix]
    counts = {n: math.floor(r) for n, r in raw}
    for n, r in sorted(raw, key=lambda t: t[1] - math.floor(t[1]), reverse=True)[:total - sum(counts.values())]:
        counts[n] += 1
    return [(n, counts[n]) for n, _ in mix]


def _build(cls, table: dict, where: str):
    if not isinstance(table, dict):
        raise ScenarioError(f"{where} must be a table")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in table.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ScenarioError(f"{where}: {err}") from None


def _check(cond: bool, source: str, msg: str) -> None:
    if not cond:
        raise ScenarioError(f"{source}: {msg}")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; every error names the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file '{path}' does not exist")
    raw_bytes = path.read_bytes()
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None
    src = str(path)
    top = {"name", "clients", "seed", "description", "model", "data", "training", "unlearning", "requests",
           "profiles", "behaviours", "replay_wait_s", "retrain_clients"}
    unknown = sorted(set(raw) - top)
    _check(not unknown, src, f"unknown top-level key(s) {unknown}; allowed: {sorted(top)}")
    _check("clients" in raw and isinstance(raw["clients"], int) and raw["clients"] >= 2, src,
           "'clients' must be an integer >= 2")
    profiles = tuple(_build(ProfileSpec, {"name": n, **t}, f"{src} [profiles.{n}]")
                     for n, t in raw.get("profiles", {"default": {}}).items())
    behaviours = raw.get("behaviours", {"honest": 1})
    _check(isinstance(behaviours, dict) and behaviours, src, "[behaviours] must be a non-empty table")
    for b, w in behaviours.items():
        _check(b in FLEET_BEHAVIOURS, src, f"[behaviours] unknown behaviour '{b}'; choose from {FLEET_BEHAVIOURS}")
        _check(isinstance(w, (int, float)) and w >= 0, src, f"[behaviours] {b} must be a non-negative number")
    requests = tuple(_build(RequestSpec, t, f"{src} [[requests]] #{i + 1}") for i, t in enumerate(raw.get("requests", [])))
    sc = Scenario(name=str(raw.get("name", path.stem)), clients=raw["clients"], seed=int(raw.get("seed", 0)),
                  description=str(raw.get("description", "")),
                  model=_build(ModelSpec, raw.get("model", {}), f"{src} [model]"),
                  data=_build(DataSpec, raw.get("data", {}), f"{src} [data]"),
                  training=_build(TrainingSpec, raw.get("training", {}), f"{src} [training]"),
                  unlearning=_build(UnlearningSpec, raw.get("unlearning", {}), f"{src} [unlearning]"),
                  requests=requests, profiles=profiles,
                  behaviours=tuple((b, float(w)) for b, w in behaviours.items() if w > 0),
                  replay_wait_s=float(raw.get("replay_wait_s", 20.0)),
                  retrain_clients=raw.get("retrain_clients", min(8, raw["clients"])),
                  source=src, digest=hashlib.sha256(raw_bytes).hexdigest())
    _validate(sc)
    return sc


def _validate(sc: Scenario) -> None:
    src, t, u = sc.source, sc.training, sc.unlearning
    _check(sc.model.kind == "vit", src, f"[model] kind '{sc.model.kind}': fleets run the ViT (the OPT runs in `zkapex local`)")
    _check(sc.data.dataset in ("digits", "mnist"), src, f"[data] dataset '{sc.data.dataset}': choose digits or mnist")
    _check(0 < sc.data.provider_fraction < 1 and 0 < sc.data.test_fraction < 1
           and sc.data.provider_fraction + sc.data.test_fraction < 1, src,
           "[data] provider_fraction and test_fraction must be in (0, 1) and sum below 1")
    _check(t.rounds >= 0 and t.rounds_after >= 0 and 0 < t.fraction_train <= 1, src,
           "[training] rounds >= 0, rounds_after >= 0 and 0 < fraction_train <= 1")
    _check(sc.requests, src, "at least one [[requests]] entry is needed")
    _check(isinstance(sc.retrain_clients, int) and not isinstance(sc.retrain_clients, bool)
           and 0 <= sc.retrain_clients <= sc.clients, src,
           f"'retrain_clients' must be an integer in 0..clients={sc.clients}, got {sc.retrain_clients!r}")
    ids = [r.id for r in sc.requests]
    _check(len(set(ids)) == len(ids), src, f"[[requests]] ids must be unique, got {ids}")
    for r in sc.requests:
        _check(r.forget in ("class", "samples"), src, f"request '{r.id}': forget must be 'class' or 'samples'")
        _check(0 <= r.after_round <= t.rounds, src,
               f"request '{r.id}': after_round {r.after_round} must be within 0..rounds={t.rounds} "
               "(clients personalize and commit after the last training round before it)")
        _check(r.forget != "class" or (r.classes and all(0 <= c < 10 for c in r.classes)), src,
               f"request '{r.id}': classes must be digits 0..9")
        _check(r.forget != "samples" or r.count >= 1, src, f"request '{r.id}': count must be >= 1")
    _check(0 < u.mask_fraction < 1, src, "[unlearning] mask_fraction must be in (0, 1)")
    _check(u.steps and all(isinstance(b, int) and b >= 1 for b in u.steps), src,
           "[unlearning] steps must be a list of integers >= 1")
    _check(u.deadline_s > 0 and u.max_attempts >= 1 and u.max_in_flight >= 1, src,
           "[unlearning] deadline_s > 0, max_attempts >= 1 and max_in_flight >= 1")
    names = [p.name for p in sc.profiles]
    _check(len(set(names)) == len(names), src, "profile names must be unique")
    for p in sc.profiles:
        _check(p.share > 0 and p.data_weight > 0 and p.alpha > 0 and p.speed > 0 and p.memory_mb > 0
               and p.uplink_mbps > 0 and 0 < p.availability <= 1, src,
               f"[profiles.{p.name}]: share, data_weight, alpha, speed, memory_mb, uplink_mbps must be > 0 and "
               "availability in (0, 1]")
        _check(p.shift in DomainShift.KINDS, src, f"[profiles.{p.name}] shift must be one of {', '.join(DomainShift.KINDS)}")
    _check(any(b in HONEST_BEHAVIOURS for b, _ in sc.behaviours), src,
           "[behaviours] needs honest clients: a replaying client captures an honest client's bundle")
