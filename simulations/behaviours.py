"""Fleet behaviours by name: what a client sends instead of (or besides) its honest unlearning reply.

A behaviour is a **bundle hook**, the signature :class:`zkapex_flwr.client.mod.UnlearningSetup` takes::

    hook(prover, mask, req, context) -> bytes | None     # None: answer honestly

A scenario's ``[behaviours]`` table names behaviours by registry name (the built-ins of
docs/protocol.md §5 are pre-registered) or as ``"package.module:function"``, imported when the
scenario is loaded. Register your own with :func:`register_behaviour`, as a call or a decorator::

    @register_behaviour("flip-sign")
    def flip_sign(prover, mask, req, context):
        ...
        return bundle_bytes

A hook that also takes a keyword-only ``client`` parameter gets the :class:`FleetClient` it runs for
(partition id, scenario seed, wiretap board, replay wait), which is how the built-in cheats seed
their randomness and how ``replay`` finds captured bundles. Every behaviour except ``honest`` and
``late`` counts as dishonest in the report: the provider must catch it. Names registered in a
process exist in that process only; a scenario that runs on Ray workers names its behaviours as
``module:function`` or lists the registering module in its top-level ``plugins``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zkapex_flwr.proof.bundle import MalformedBundle, ProofBundle
from zkapex_flwr.proof.cheats import BEHAVIOURS as CHEAT_BEHAVIOURS
from zkapex_flwr.proof.cheats import cheat_bundle

HONEST_BEHAVIOURS = ("honest", "late")  # late = honest but slow: answers after the deadline once


class BehaviourError(ValueError):
    """A behaviour name that is neither registered nor an importable ``module:function``."""


@dataclass(frozen=True)
class FleetClient:
    """What a behaviour may know about the client it runs for."""

    partition_id: int
    behaviour: str
    seed: int = 0  # the scenario's seed
    board: Path | None = None  # the run's wiretap board (honest bundles captured on the wire)
    replay_wait_s: float = 20.0


_REGISTRY: dict[str, Callable | None] = {}


def register_behaviour(name: str, fn: Callable | None = None, *, replace: bool = False):
    """Register the bundle hook ``fn`` under ``name``; without ``fn``, a decorator that registers what it wraps."""
    if not isinstance(name, str) or not name or ":" in name:
        raise BehaviourError(f"behaviour name must be a non-empty string without ':', got {name!r}")

    def add(hook):
        if not callable(hook):
            raise BehaviourError(f"behaviour '{name}': the hook must be callable, got {type(hook).__name__}")
        if name in _REGISTRY and _REGISTRY[name] is not hook and not replace:
            raise BehaviourError(f"behaviour '{name}' is already registered (pass replace=True to replace it)")
        _REGISTRY[name] = hook
        return hook

    return add if fn is None else add(fn)


def registered_behaviours() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def resolve_behaviour(name: str) -> Callable | None:
    """The hook of a registered name or of ``"package.module:function"`` (imported here)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise BehaviourError(
            f"unknown behaviour '{name}'; choose from {registered_behaviours()} "
            "or name a hook as 'package.module:function'"
        )
    module, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any import failure is a bad behaviour path
        raise BehaviourError(
            f"behaviour '{name}': cannot import module '{module}' ({type(err).__name__}: {err})"
        ) from None
    for part in attr.split("."):
        if not part or not hasattr(obj, part):
            raise BehaviourError(f"behaviour '{name}': module '{module}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BehaviourError(f"behaviour '{name}': '{attr}' is not callable")
    return obj


def bind_hook(name: str, client: FleetClient):
    """The bundle hook of behaviour ``name`` for ``client`` (None for an honest client)."""
    hook = resolve_behaviour(name)
    if hook is None:
        return None
    try:
        params = inspect.signature(hook).parameters
    except (TypeError, ValueError):
        return hook
    if "client" in params and params["client"].kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return functools.partial(hook, client=client)
    return hook


# ------------------------------------------------------------------------------------ built-ins
def late(prover, mask, req, context):
    """Honest but slow: the device was busy, it answers after the deadline, then on time when retried."""
    if req.attempt == 1:
        time.sleep(req.deadline_s + 2.0)
    return None  # then the honest reply


def replay(prover, mask, req, context, *, client: FleetClient):
    """Send another node's bundle captured on the wire (the run's wiretap board)."""
    return captured_bundle(
        client.board, req.request_id, context.node_id, client.replay_wait_s, prover.circuit.circuit_id
    )


def cheat(prover, mask, req, context, *, client: FleetClient):
    """One of the cheats of ``zkapex_flwr.proof.cheats`` (the client's behaviour names which)."""
    rng = np.random.default_rng([client.seed, client.partition_id, zlib.crc32(req.request_id.encode())])
    return cheat_bundle(prover, mask, req.request_id, client.behaviour, rng=rng, binding=req.binding(context.node_id))


def captured_bundle(board: Path | None, request_id: str, own_node: int, wait_s: float, circuit_id: str) -> bytes:
    """Another node's bundle captured on the wire: this request's if one shows up in time, else an older one.

    The attacker prefers a bundle proven with its own circuit (a bundle of another circuit is refused
    as ``wrong-circuit`` before anything else is looked at).
    """
    if board is None:
        raise RuntimeError("a replaying client needs the run's wiretap board (run config 'out')")
    deadline = time.monotonic() + wait_s
    mine = f"{own_node}.bin"
    circuits: dict[Path, str] = {}  # a captured file is parsed once, not at every poll
    while True:
        here = (
            sorted(p for p in (board / request_id).glob("*.bin") if p.name != mine)
            if (board / request_id).is_dir()
            else []
        )
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


_REGISTRY["honest"] = None
register_behaviour("late", late)
for _b in CHEAT_BEHAVIOURS:
    if _b == "honest":
        continue
    register_behaviour(_b, replay if _b == "replay" else cheat)
BUILTIN_BEHAVIOURS = tuple(_REGISTRY)
