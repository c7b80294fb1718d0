"""Declarative fleet scenarios (docs/protocol.md §7): one TOML file says everything a fleet run depends on.

A scenario names the model and dataset, the provider's training and unlearning settings, the deletion
requests, the device **profiles** (data size and label skew, domain shift, compute speed, memory
budget, uplink, availability) with their shares of the fleet, and the **behaviour** mix (§5). Clients
get a profile and a behaviour by a seeded draw, so a scenario file always yields the same fleet.
See ``simulations/smoke.toml`` for every key, with comments. Unknown keys are errors: a typo in a
scenario must not silently fall back to a default.

The file is the base; **overrides** (dotted keys such as ``training.rounds`` or
``unlearning.mask-fraction``) are applied on top of it and the result is validated (pydantic models,
one-line :class:`ScenarioError` naming the file and the key). ``zkapex simulate --set KEY=VALUE`` and
``flwr run . --run-config "KEY=VALUE"`` (keys declared in pyproject's ``[tool.flwr.app.config]``) both
go through :func:`load_scenario`'s ``overrides``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from zkapex_flwr.data.images import DomainShift
from zkapex_flwr.unlearning.scope import VERIFIED_SCOPE

from .behaviours import BUILTIN_BEHAVIOURS, HONEST_BEHAVIOURS, BehaviourError, resolve_behaviour

FLEET_BEHAVIOURS = BUILTIN_BEHAVIOURS  # the pre-registered names (simulations.behaviours adds more)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
OFFLINE_DATASETS = ("digits", "mnist")
PARTITIONERS = ("dirichlet", "iid", "pathological", "shard", "linear", "square", "exponential")
DEVICES = ("auto", "cpu", "cuda")
# run-config keys that are not scenario overrides (the ServerApp's own settings)
RUN_KEYS = ("scenario", "out", "resume", "supernode-wait-s")

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Scalar = Int | Float | Bool | Str


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or inconsistent; the message names the file and the key."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _int_tuple(value: Any) -> Any:
    """A list of integers; a run-config string "1,2" (Flower's run config has no lists) or a lone int too."""
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return value


def _float_tuple(value: Any) -> Any:
    """A list of numbers; a run-config string "1,2,4" or a lone number too."""
    if isinstance(value, str):
        try:
            return tuple(float(v) for v in value.split(",") if v.strip())
        except ValueError:
            return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),)
    return value


class ModelSpec(_Spec):
    kind: Str = "vit"  # vit (a small timm ViT built from config) | timm:<model name> | hf:<transformers classifier>
    embed_dim: Int = 32
    depth: Int = 2
    num_heads: Int = 2
    mlp_ratio: Float = 2.0
    patch_size: Int | None = None  # vit: default 2 on 8×8 digits, 4 on 28×28 MNIST
    pretrained: Bool = False  # timm: load the hub weights (needs the Hugging Face Hub)
    options: dict[str, Scalar] = Field(default_factory=dict)  # timm: more timm.create_model keyword arguments


class DataSpec(_Spec):
    dataset: Str = "digits"  # digits | mnist (both ship inside a package) | hf:<hub dataset>
    provider_fraction: Float = 0.3  # the provider's own pool: pretrains θg, holds D_f and retain data
    test_fraction: Float = 0.15  # shared test pool: client test sets (in each client's domain), MIA non-members
    partitioner: Str = "dirichlet"  # flwr-datasets partitioner of each profile's clients (PARTITIONERS)
    partitioner_options: dict[str, Scalar] = Field(default_factory=dict)  # e.g. num_classes_per_partition
    alpha: Float | None = None  # Dirichlet α of every profile that sets none of its own
    num_classes: Int = 10
    # hf: datasets only (loaded through flwr-datasets' FederatedDataset)
    subset: Str | None = None
    split: Str = "train"
    image_key: Str = "image"
    label_key: Str = "label"
    image_size: Int | None = None  # resize to image_size × image_size (default: as stored)
    max_samples: Int | None = None  # a seeded sample of the split (default: all of it)


class TrainingSpec(_Spec):
    pretrain_epochs: Int = 20  # provider pretraining of the initial θg on its own pool
    pretrain_lr: Float = 2e-3
    rounds: Int = 2  # FedAvg rounds before personalize-and-commit
    rounds_after: Int = 1  # FedAvg rounds after the unlearning round(s) (quarantine in force)
    fraction_train: Float = 0.25
    local_epochs: Int = 1
    lr: Float = 1e-3
    personal_epochs: Int = 5
    personal_lr: Float = 1e-3
    batch_size: Int = 32


class UnlearningSpec(_Spec):
    scope: Str = VERIFIED_SCOPE  # every block's fc1 and the classifier head (the verified default)
    block_size: Int = 16
    mask_fraction: Float = 0.01
    max_blocks: Int | None = None  # block budget (with group > 1: counts every block of a touched unit)
    group: Int = 1  # G: Fisher blocks per proof unit (G > 1: column-structured mask)
    slots: Int = 2  # K: masked columns per proof step
    steps: tuple[Int, ...] = (1,)  # B choices offered to clients; each picks by its memory budget
    damping: Float = 1.0  # λ in units of each block's mean Fisher diagonal
    num_grads: Int = 64
    deadline_s: Float = 60.0
    commit_deadline_s: Float | None = None  # the commit round's per-attempt deadline (default: 2 × deadline_s)
    max_attempts: Int = 2
    max_in_flight: Int = 4

    _steps = field_validator("steps", mode="before")(_int_tuple)


class ResourcesSpec(_Spec):
    device: Str = "auto"  # client-side torch device: auto (cuda when available) | cpu | cuda[:N]
    num_cpus: Float = 1.0  # Ray CPUs per ClientApp (zkapex simulate)
    num_gpus: Float = 0.0  # Ray GPUs per ClientApp (zkapex simulate; a fraction shares a GPU)


class RequestSpec(_Spec):
    id: Str
    after_round: Int
    forget: Str = "class"  # class | samples
    classes: tuple[Int, ...] = (3,)
    count: Int = 30

    _classes = field_validator("classes", mode="before")(_int_tuple)


class MPUSpec(_Spec):
    """MPU's parameters for the fleet's client-initiated requests (zkapex_flwr.mpu.perturb.MPUConfig)."""

    copies: Int = 3  # m
    alphas: tuple[Float, ...] = (1.0, 2.0, 4.0)  # one per copy; the server's aggregation weights are 1/α
    kappa: Float = 0.1  # noise per tensor: κ·RMS
    rounds: Int = 2  # R
    algorithm: Str = "graddiff"  # a zkapex_flwr.posthoc name
    steps: Int = 10  # local steps per copy and round
    lr: Float = 5e-4
    batch_size: Int = 32
    defence: Str = "none"  # none | common-noise | independent-noise (against the copies' reconstruction)
    defence_kappa: Float = 0.1
    deadline_s: Float = 120.0  # per attempt of one train.mpu message
    screen_threshold: Float = 0.1  # the consistency score below which a reply is flagged (the screen's default)

    _alphas = field_validator("alphas", mode="before")(_float_tuple)


class MPURequestSpec(_Spec):
    """A client's own deletion request, served with MPU (the client holds the forget set)."""

    partition: Int  # the requesting client
    after_round: Int = 1
    forget: Str = "class"  # class: the client's own samples of `classes` | samples: `count` of its samples
    classes: tuple[Int, ...] = (3,)
    count: Int = 20
    behaviour: Str = "honest"  # honest | zero-update | garbage | random-update (zkapex_flwr.client.mpu.MPU_CHEATS)

    _classes = field_validator("classes", mode="before")(_int_tuple)


class ProfileSpec(_Spec):
    name: Str
    share: Float = 1.0  # fraction of the fleet
    data_weight: Float = 1.0  # relative data size per client
    alpha: Float = 1.0  # Dirichlet label skew (smaller = more skewed)
    shift: Str = "style"  # style | mild | geometric | none (DomainShift.KINDS)
    speed: Float = 1.0  # compute speed relative to this machine (modelled device time)
    memory_mb: Float = 64.0  # prover working-set budget: picks the steps per proof B
    uplink_mbps: Float = 10.0  # modelled upload time of the proof bundle
    availability: Float = 1.0  # probability that the node answers a given message


class ClientSpec(_Spec):
    partition_id: int
    profile: str
    behaviour: str


class Scenario(_Spec):
    name: str
    clients: int
    seed: int = 0
    description: str = ""
    plugins: tuple[str, ...] = ()  # modules imported at load time (e.g. ones that register behaviours)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    unlearning: UnlearningSpec = Field(default_factory=UnlearningSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    requests: tuple[RequestSpec, ...] = ()
    mpu: MPUSpec = Field(default_factory=MPUSpec)
    mpu_requests: tuple[MPURequestSpec, ...] = ()
    profiles: tuple[ProfileSpec, ...] = (ProfileSpec(name="default"),)
    behaviours: tuple[tuple[str, float], ...] = (("honest", 1.0),)
    replay_wait_s: float = 20.0  # a replaying client waits this long for a bundle to capture
    retrain_clients: Any = 8  # honest clients given a retrain-from-scratch reference in the report (0: none;
    # a file without the key: min(8, clients))
    overrides: tuple[tuple[str, Any], ...] = ()  # the overrides applied on top of the file (key, value)
    source: str = ""  # the file it was loaded from
    digest: str = ""  # sha256 of the file's bytes (and of the overrides, if any)

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
        return [ClientSpec(partition_id=i, profile=str(prof[i]), behaviour=str(beh[i])) for i in range(self.clients)]

    def behaviour_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.fleet():
            counts[c.behaviour] = counts.get(c.behaviour, 0) + 1
        return counts


class _ScenarioFile(_Spec):
    """A scenario file as written (TOML tables), before the fleet is derived from it."""

    name: Str | None = None
    clients: Int
    seed: Int = 0
    description: Str = ""
    plugins: tuple[Str, ...] = ()
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    unlearning: UnlearningSpec = Field(default_factory=UnlearningSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    requests: tuple[RequestSpec, ...] = ()
    mpu: MPUSpec = Field(default_factory=MPUSpec)
    mpu_requests: tuple[MPURequestSpec, ...] = ()
    profiles: dict[str, ProfileSpec] | None = None
    behaviours: dict[str, Any] | None = None
    replay_wait_s: Float = 20.0
    retrain_clients: Any = None


_SECTIONS = {
    "model": ModelSpec,
    "data": DataSpec,
    "training": TrainingSpec,
    "unlearning": UnlearningSpec,
    "resources": ResourcesSpec,
    "mpu": MPUSpec,
}


def _counts(mix: list[tuple[str, float]], total: int) -> list[tuple[str, int]]:
    """Split ``total`` by weights (an integer weight ≥ 1 is a count; fractions are shares)."""
    if all(float(w).is_integer() and w >= 1 for _, w in mix) and sum(w for _, w in mix) == total:
        return [(n, int(w)) for n, w in mix]
    s = sum(w for _, w in mix)
    raw = [(n, total * w / s) for n, w in mix]
    counts = {n: math.floor(r) for n, r in raw}
    for n, r in sorted(raw, key=lambda t: t[1] - math.floor(t[1]), reverse=True)[: total - sum(counts.values())]:
        counts[n] += 1
    return [(n, counts[n]) for n, _ in mix]


def _check(cond: bool, source: str, msg: str) -> None:
    if not cond:
        raise ScenarioError(f"{source}: {msg}")


# ------------------------------------------------------------------------------------ overrides
def parse_override(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, value); the value is read as a TOML value (``3``, ``0.5``, ``true``, ``[1, 2]``,
    ``"text"``), else taken as a plain string (``data.dataset=mnist``)."""
    key, sep, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise ScenarioError(f"override '{item}': expected KEY=VALUE, e.g. training.rounds=3")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def parse_overrides(items: Iterable[str] | None) -> dict[str, Any]:
    """``--set`` arguments (each ``KEY=VALUE``; one argument may hold several separated by spaces)."""
    out: dict[str, Any] = {}
    for item in items or ():
        for part in _split_pairs(item):
            key, value = parse_override(part)
            out[key] = value
    return out


def _split_pairs(item: str) -> list[str]:
    """Split ``a=1 b='x y'`` into pairs (quotes and brackets may hold spaces)."""
    parts, cur, quote, depth = [], "", "", 0
    for ch in item.strip():
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch.isspace() and depth == 0:
            if cur:
                parts.append(cur)
            cur = ""
            continue
        cur += ch
    if cur:
        parts.append(cur)
    if len(parts) > 1 and any("=" not in p for p in parts):  # "key = value" with spaces around '='
        return [item]
    return parts


def run_config_overrides(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario overrides in a Flower run config (``[tool.flwr.app.config]`` fused with ``--run-config``).

    Every key other than the ServerApp's own (:data:`RUN_KEYS`) is a scenario key; the empty string
    means "the scenario file's value" (pyproject lists the overridable keys with that value, since
    ``flwr run --run-config`` only accepts keys the app's config declares)."""
    return {k: v for k, v in run_config.items() if k not in RUN_KEYS and v != ""}


def key_parts(key: str, src: str = "") -> list[str]:
    """A dotted override key's parts, TOML-style: ``behaviours."my.cheats:flip"`` is two parts."""
    try:
        node = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        raise ScenarioError(
            f"{src + ': ' if src else ''}override key '{key}' is not a dotted key "
            "(quote a part holding dots or ':', e.g. behaviours.\"my.cheats:flip\")"
        ) from None
    parts = []
    while isinstance(node, dict) and len(node) == 1:
        ((k, node),) = node.items()
        parts.append(k)
    return parts


def _normal(part: str) -> str:
    return part.replace("-", "_")


def apply_overrides(raw: dict, overrides: Mapping[str, Any], src: str) -> dict:
    """``raw`` (a scenario file's tables) with dotted-key overrides applied: ``training.rounds``,
    ``unlearning.mask-fraction`` (dashes or underscores), ``profiles.phone.availability``,
    ``behaviours.garbage-proof``, ``requests.0.after_round``."""
    raw = json.loads(json.dumps(raw))  # a deep copy (TOML values are JSON values)
    for key, value in overrides.items():
        parts = key_parts(str(key), src)
        node: Any = raw
        for i, part in enumerate(parts):
            parent = parts[i - 1] if i else ""
            # profile and behaviour names are kept as written; every other key is a field name
            name = part if (i == 1 and parts[0] in ("profiles", "behaviours")) else _normal(part)
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not name.isdigit() or int(name) >= len(node):
                    raise ScenarioError(
                        f"{src}: override '{key}': '{parent}' has {len(node)} entries, "
                        f"'{part}' is not one of their indices 0..{len(node) - 1}"
                    )
                name = int(name)
            elif not isinstance(node, dict):
                raise ScenarioError(f"{src}: override '{key}': '{parent}' is not a table")
            if last:
                node[name] = value
            else:
                if isinstance(node, dict) and name not in node:
                    node[name] = {}
                node = node[name]
    return raw


# --------------------------------------------------------------------------------------- errors
def _where(loc: tuple) -> str:
    if not loc:
        return ""
    head = loc[0]
    if head in _SECTIONS:
        return f"[{head}]" + (f" {'.'.join(map(str, loc[1:]))}" if len(loc) > 1 else "")
    if head == "profiles" and len(loc) > 1:
        return f"[profiles.{loc[1]}]" + (f" {'.'.join(map(str, loc[2:]))}" if len(loc) > 2 else "")
    if head == "requests" and len(loc) > 1 and isinstance(loc[1], int):
        return f"[[requests]] #{loc[1] + 1}" + (f" {'.'.join(map(str, loc[2:]))}" if len(loc) > 2 else "")
    if head == "mpu_requests" and len(loc) > 1 and isinstance(loc[1], int):
        return f"[[mpu_requests]] #{loc[1] + 1}" + (f" {'.'.join(map(str, loc[2:]))}" if len(loc) > 2 else "")
    if head == "behaviours":
        return "[behaviours]" + (f" {'.'.join(map(str, loc[1:]))}" if len(loc) > 1 else "")
    return f"'{'.'.join(map(str, loc))}'"


def _owner(loc: tuple) -> tuple[str, type[BaseModel]]:
    """Where an unknown key sits and the model that lists the allowed ones."""
    if len(loc) == 1:
        return "unknown top-level key(s)", _ScenarioFile
    if loc[0] in _SECTIONS and len(loc) == 2:
        return f"[{loc[0]}]: unknown key(s)", _SECTIONS[loc[0]]
    if loc[0] == "profiles" and len(loc) == 3:
        return f"[profiles.{loc[1]}]: unknown key(s)", ProfileSpec
    if loc[0] == "requests" and len(loc) == 3:
        return f"[[requests]] #{loc[1] + 1}: unknown key(s)", RequestSpec
    if loc[0] == "mpu_requests" and len(loc) == 3:
        return f"[[mpu_requests]] #{loc[1] + 1}: unknown key(s)", MPURequestSpec
    return f"{_where(loc[:-1])}: unknown key(s)", _ScenarioFile


def _one_line(err: ValidationError, src: str, overrides: Mapping[str, Any]) -> str:
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        unknown = sorted(
            str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == loc[:-1]
        )
        what, model = _owner(loc)
        allowed = sorted(k for k in model.model_fields if not (model is ProfileSpec and k == "name"))
        msg = f"{src} {what} {unknown}; allowed: {allowed}".replace(f"{src} unknown", f"{src}: unknown")
    else:
        text = first["msg"].removeprefix("Value error, ")
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list, tuple)) or first["type"] == "missing" else f" (got {got!r})"
        msg = f"{src} {_where(loc)}: {text}{shown}"
    dotted = ".".join(str(p) for p in loc)

    def norm(k: str) -> str:
        try:
            return ".".join(_normal(p) for p in key_parts(k))
        except ScenarioError:
            return k

    hit = [k for k in overrides if norm(str(k)) in (dotted, _normal(dotted))]
    if hit:
        msg += f" (set by override {hit[0]}={overrides[hit[0]]!r})"
    more = len(errors) - 1
    if more and first["type"] != "extra_forbidden":
        msg += f"; and {more} more error(s)"
    return msg


# ---------------------------------------------------------------------------------------- loading
def resolve_scenario(path: str | Path) -> Path:
    """A scenario path as given, else relative to the project (``flwr run`` may run from another folder)."""
    p = Path(path)
    if p.is_file():
        return p.resolve()
    if (PROJECT_ROOT / p).is_file():
        return PROJECT_ROOT / p
    raise ScenarioError(f"scenario file '{path}' does not exist (looked in {Path.cwd()} and {PROJECT_ROOT})")


def read_scenario_file(path: str | Path) -> tuple[dict, bytes]:
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file '{path}' does not exist")
    raw_bytes = path.read_bytes()
    try:
        return tomllib.loads(raw_bytes.decode()), raw_bytes
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None


def effective_tables(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """The scenario file's tables with ``overrides`` applied (what :func:`load_scenario` validates)."""
    raw, _ = read_scenario_file(path)
    return apply_overrides(raw, overrides or {}, str(path))


def load_scenario(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Read a scenario file, apply ``overrides`` (dotted keys, see :func:`apply_overrides`) and validate.

    Every error is a :class:`ScenarioError` of one line naming the file and the offending key."""
    path = Path(path)
    overrides = dict(overrides or {})
    raw, raw_bytes = read_scenario_file(path)
    src = str(path)
    raw = apply_overrides(raw, overrides, src)
    _check(
        "clients" in raw
        and isinstance(raw["clients"], int)
        and not isinstance(raw["clients"], bool)
        and raw["clients"] >= 2,
        src,
        "'clients' must be an integer >= 2" + (f" (got {raw['clients']!r})" if "clients" in raw else ""),
    )
    for module in raw.get("plugins", []) if isinstance(raw.get("plugins"), list) else []:
        try:
            importlib.import_module(str(module))
        except Exception as err:  # noqa: BLE001 - any failure is a bad plugin entry
            raise ScenarioError(f"{src}: plugins: cannot import '{module}' ({type(err).__name__}: {err})") from None
    profiles = raw.get("profiles")
    if isinstance(profiles, dict):
        for n, t in profiles.items():
            _check(isinstance(t, dict), src, f"[profiles.{n}] must be a table")
            _check("name" not in t, src, f"[profiles.{n}]: unknown key(s) ['name']; the table's name is the profile's")
        alpha = raw.get("data", {}).get("alpha") if isinstance(raw.get("data"), dict) else None
        raw["profiles"] = {
            n: {"name": n, **({"alpha": alpha} if alpha is not None and "alpha" not in t else {}), **t}
            for n, t in profiles.items()
        }
    try:
        f = _ScenarioFile.model_validate(raw)
    except ValidationError as err:
        raise ScenarioError(_one_line(err, src, overrides)) from None
    behaviours = f.behaviours if f.behaviours is not None else {"honest": 1}
    _check(isinstance(behaviours, dict) and behaviours, src, "[behaviours] must be a non-empty table")
    for b, w in behaviours.items():
        try:
            resolve_behaviour(b)
        except BehaviourError as err:
            raise ScenarioError(f"{src}: [behaviours] {err}") from None
        _check(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0,
            src,
            f"[behaviours] {b} must be a non-negative number",
        )
    digest = hashlib.sha256(raw_bytes)
    if overrides:
        digest.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    sc = Scenario(
        name=f.name if f.name is not None else path.stem,
        clients=f.clients,
        seed=f.seed,
        description=f.description,
        plugins=f.plugins,
        model=f.model,
        data=f.data,
        training=f.training,
        unlearning=f.unlearning,
        resources=f.resources,
        requests=f.requests,
        mpu=f.mpu,
        mpu_requests=f.mpu_requests,
        profiles=tuple(f.profiles.values()) if f.profiles is not None else (ProfileSpec(name="default"),),
        behaviours=tuple((b, float(w)) for b, w in behaviours.items() if w > 0),
        replay_wait_s=f.replay_wait_s,
        retrain_clients=f.retrain_clients if f.retrain_clients is not None else min(8, f.clients),
        overrides=tuple(overrides.items()),
        source=src,
        digest=digest.hexdigest(),
    )
    _validate(sc)
    return sc


def summary_line(sc: Scenario) -> str:
    """A short description of a scenario (``zkapex scenario check``)."""
    fleet = sc.behaviour_counts()
    counts = {b: fleet[b] for b, _ in sc.behaviours if b in fleet}
    reqs = ", ".join(
        f"{r.id} after round {r.after_round}: {r.forget} {list(r.classes) if r.forget == 'class' else r.count}"
        for r in sc.requests
    )
    return (
        f"{sc.name}: {sc.clients} clients ({sum(n for b, n in counts.items() if b in HONEST_BEHAVIOURS)} honest, "
        f"{sum(n for b, n in counts.items() if b not in HONEST_BEHAVIOURS)} dishonest); behaviours "
        + ", ".join(f"{b} {n}" for b, n in counts.items())
        + f"; requests: {reqs}"
        + (
            f"; MPU requests: {', '.join(f'client {r.partition} ({r.behaviour})' for r in sc.mpu_requests)}"
            if sc.mpu_requests
            else ""
        )
    )


def _validate(sc: Scenario) -> None:
    src, t, u = sc.source, sc.training, sc.unlearning
    m, d = sc.model, sc.data
    _check(
        m.kind == "vit" or (m.kind.startswith(("timm:", "hf:")) and len(m.kind.split(":", 1)[1]) > 0),
        src,
        f"[model] kind '{m.kind}': fleets run image models, 'vit', 'timm:<model name>' or 'hf:<transformers image "
        "classifier>' (transformers language models run in `zkapex local`)",
    )
    if m.kind.startswith("timm:"):
        from zkapex_flwr.models import timm_model_known

        _check(
            timm_model_known(m.kind.removeprefix("timm:")),
            src,
            f"[model] kind '{m.kind}': timm has no model named '{m.kind.removeprefix('timm:')}'",
        )
    _check(
        d.dataset in OFFLINE_DATASETS or (d.dataset.startswith("hf:") and len(d.dataset) > 3),
        src,
        f"[data] dataset '{d.dataset}': choose digits, mnist or hf:<Hugging Face dataset> (e.g. hf:uoft-cs/cifar10)",
    )
    _check(
        d.partitioner in PARTITIONERS,
        src,
        f"[data] partitioner '{d.partitioner}': choose one of {', '.join(PARTITIONERS)}",
    )
    _check(d.num_classes >= 2 and (d.alpha is None or d.alpha > 0), src, "[data] num_classes >= 2 and alpha > 0")
    _check(
        (d.image_size is None or d.image_size >= 1) and (d.max_samples is None or d.max_samples >= 2),
        src,
        "[data] image_size >= 1 and max_samples >= 2",
    )
    res = sc.resources
    _check(
        res.device in DEVICES or (res.device.startswith("cuda:") and res.device[5:].isdigit()),
        src,
        f"[resources] device '{res.device}': choose auto, cpu, cuda or cuda:<index>",
    )
    _check(res.num_cpus > 0 and res.num_gpus >= 0, src, "[resources] num_cpus > 0 and num_gpus >= 0")
    _check(sc.seed >= 0 and sc.replay_wait_s >= 0, src, "'seed' and 'replay_wait_s' must be >= 0")
    _check(
        min(t.pretrain_epochs, t.local_epochs, t.personal_epochs) >= 0
        and t.batch_size >= 1
        and min(t.pretrain_lr, t.lr, t.personal_lr) > 0,
        src,
        "[training] epochs must be >= 0, batch_size >= 1 and learning rates > 0",
    )
    _check(
        min(u.block_size, u.group, u.slots, u.num_grads) >= 1
        and (u.max_blocks is None or u.max_blocks >= 1)
        and u.damping >= 0,
        src,
        "[unlearning] block_size, group, slots, num_grads and max_blocks must be >= 1 and damping >= 0",
    )
    _check(
        0 < sc.data.provider_fraction < 1
        and 0 < sc.data.test_fraction < 1
        and sc.data.provider_fraction + sc.data.test_fraction < 1,
        src,
        "[data] provider_fraction and test_fraction must be in (0, 1) and sum below 1",
    )
    _check(
        t.rounds >= 0 and t.rounds_after >= 0 and 0 < t.fraction_train <= 1,
        src,
        "[training] rounds >= 0, rounds_after >= 0 and 0 < fraction_train <= 1",
    )
    _check(sc.requests, src, "at least one [[requests]] entry is needed")
    _check(
        isinstance(sc.retrain_clients, int)
        and not isinstance(sc.retrain_clients, bool)
        and 0 <= sc.retrain_clients <= sc.clients,
        src,
        f"'retrain_clients' must be an integer in 0..clients={sc.clients}, got {sc.retrain_clients!r}",
    )
    ids = [r.id for r in sc.requests]
    _check(len(set(ids)) == len(ids), src, f"[[requests]] ids must be unique, got {ids}")
    for r in sc.requests:
        _check(r.forget in ("class", "samples"), src, f"request '{r.id}': forget must be 'class' or 'samples'")
        _check(
            0 <= r.after_round <= t.rounds,
            src,
            f"request '{r.id}': after_round {r.after_round} must be within 0..rounds={t.rounds} "
            "(clients personalize and commit after the last training round before it)",
        )
        _check(
            r.forget != "class" or (r.classes and all(0 <= c < d.num_classes for c in r.classes)),
            src,
            f"request '{r.id}': classes must be in 0..{d.num_classes - 1}",
        )
        _check(r.forget != "samples" or r.count >= 1, src, f"request '{r.id}': count must be >= 1")
    _check(0 < u.mask_fraction < 1, src, "[unlearning] mask_fraction must be in (0, 1)")
    _check(
        u.steps and all(isinstance(b, int) and b >= 1 for b in u.steps),
        src,
        "[unlearning] steps must be a list of integers >= 1",
    )
    _check(
        u.deadline_s > 0 and u.max_attempts >= 1 and u.max_in_flight >= 1,
        src,
        "[unlearning] deadline_s > 0, max_attempts >= 1 and max_in_flight >= 1",
    )
    _validate_mpu(sc)
    names = [p.name for p in sc.profiles]
    _check(len(set(names)) == len(names), src, "profile names must be unique")
    for p in sc.profiles:
        _check(
            p.share > 0
            and p.data_weight > 0
            and p.alpha > 0
            and p.speed > 0
            and p.memory_mb > 0
            and p.uplink_mbps > 0
            and 0 < p.availability <= 1,
            src,
            f"[profiles.{p.name}]: share, data_weight, alpha, speed, memory_mb, uplink_mbps must be > 0 and "
            "availability in (0, 1]",
        )
        _check(
            p.shift in DomainShift.KINDS,
            src,
            f"[profiles.{p.name}] shift must be one of {', '.join(DomainShift.KINDS)}",
        )
    _check(
        any(b in HONEST_BEHAVIOURS for b, _ in sc.behaviours),
        src,
        "[behaviours] needs honest clients: a replaying client captures an honest client's bundle",
    )


def _validate_mpu(sc: Scenario) -> None:
    """The [mpu] table and the [[mpu_requests]] entries (clear errors before any work starts)."""
    if not sc.mpu_requests:
        return
    from zkapex_flwr.client.mpu import MPU_CHEATS
    from zkapex_flwr.mpu.perturb import MPUConfig

    src, m = sc.source, sc.mpu
    try:
        MPUConfig(**mpu_config_kwargs(m))
    except ValueError as err:
        raise ScenarioError(f"{src}: [mpu] {err}") from None
    try:
        from zkapex_flwr.posthoc import get_algorithm

        get_algorithm(m.algorithm)
    except ValueError as err:
        raise ScenarioError(f"{src}: [mpu] algorithm: {err}") from None
    _check(m.deadline_s > 0 and m.steps >= 1, src, "[mpu] deadline_s > 0 and steps >= 1")
    _check(m.kappa > 0 or m.defence != "none", src, "[mpu] kappa must be > 0 (κ = 0 sends θ itself)")
    first = min(r.after_round for r in sc.requests)
    parts = [r.partition for r in sc.mpu_requests]
    _check(len(set(parts)) == len(parts), src, f"[[mpu_requests]] partitions must be unique, got {parts}")
    behaviours = ("honest", *MPU_CHEATS)
    for i, r in enumerate(sc.mpu_requests, 1):
        where = f"[[mpu_requests]] #{i}"
        _check(0 <= r.partition < sc.clients, src, f"{where}: partition {r.partition} is not in 0..{sc.clients - 1}")
        _check(
            first <= r.after_round <= sc.training.rounds,
            src,
            f"{where}: after_round {r.after_round} must be within {first}..rounds={sc.training.rounds} (the "
            f"provider learns which node a partition is when the nodes commit, after round {first})",
        )
        _check(r.forget in ("class", "samples"), src, f"{where}: forget must be 'class' or 'samples'")
        _check(
            r.forget != "class" or (r.classes and all(0 <= c < sc.data.num_classes for c in r.classes)),
            src,
            f"{where}: classes must be in 0..{sc.data.num_classes - 1}",
        )
        _check(r.forget != "samples" or r.count >= 1, src, f"{where}: count must be >= 1")
        _check(r.behaviour in behaviours, src, f"{where}: behaviour '{r.behaviour}': choose {', '.join(behaviours)}")


def mpu_config_kwargs(m: MPUSpec) -> dict[str, Any]:
    """The [mpu] table as :class:`zkapex_flwr.mpu.perturb.MPUConfig` keyword arguments."""
    return {
        "copies": m.copies,
        "alphas": tuple(m.alphas),
        "kappa": m.kappa,
        "rounds": m.rounds,
        "algorithm": m.algorithm,
        "steps": m.steps,
        "lr": m.lr,
        "batch_size": m.batch_size,
        "defence": m.defence,
        "defence_kappa": m.defence_kappa,
    }
