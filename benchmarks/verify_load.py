"""Load: the provider's verification throughput and its store's writes and reads.

    python -m benchmarks.verify_load --out docs/results/load [--quick] [--bundles N]
    zkapex bench load --out DIR [--quick] [--bundles N]

Three parts, in one process:

1. **Set-up** (timed on its own, not part of the throughput): the fleet's circuit (simulations/smoke.toml
   ``[unlearning]``: d = 16, K = 2 slots, S = 16, units of G = 16 blocks, B = 1 step per proof) on a scope
   shaped like the fleet ViT's (two ``fc1`` of 64 × 32: 256 blocks, 16 units) and a request mask chosen as
   the fleet chooses it (1 % of the scope, at most 32 blocks, column-structured (16, 2): two units, two
   proofs per bundle). ``CLIENTS`` clients with their own θp and Fisher register; each proves one honest
   bundle with :meth:`ClientProver.unlearn`. Dishonest clients produce bundles with
   :func:`~zkapex_flwr.proof.cheats.cheat_bundle` (docs/protocol.md §5), and a few malformed byte strings are
   added. Every pool bundle is verified once, by a separate verifier, to check it gets its expected verdict
   and to count its SNARK verifications.
2. **Throughput**: ``--bundles`` verifications (default 1 000) drawn from the pool, ``HONEST_SHARE`` honest
   and the rest cycling through the dishonest and malformed kinds, shuffled. Each one is a fresh
   ``Verifier.verify(bytes, registry entry, mask, menu=…, request_id=…)`` call, exactly as the provider
   makes it, one after another in one thread. The verifier starts cold, as a provider's does for a new
   request: it commits each distinct mask pattern once and reuses it (the real behaviour, kept; the
   number of commitments is reported). Every verdict must equal the bundle's expected reason, otherwise
   the run stops with an error: a benchmark of wrong answers measures nothing.
3. **Store**: every verdict of part 2 is recorded in a fresh provider store (SQLite, WAL,
   ``synchronous=FULL``, on the disk of ``--out``) as the provider records it: one transaction holding the
   registry's move to θu (compliant verdicts) and the ledger row (with the ``failed_requests`` look-up
   ``_record`` makes). Then the per-round read queries (``quarantined``, ``decided``, ``failed_requests``)
   are timed with the ledger filled to ``READ_SIZES`` rows.

``--quick`` (the test's smoke run): 2 clients, a 64-block scope (same circuit and mask size), six dishonest
kinds and three malformed ones, 40 bundles.

Outputs in ``--out``: ``verify.csv`` (one row per verification), ``writes.csv`` (one row per recorded
verdict), ``reads.csv``, ``summary.json``, ``machine.json``, ``report.md`` and ``latency.png``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from zkapex_flwr.figures import DPI, paper_style
from zkapex_flwr.machine import describe_machine

# the fleet's unlearning settings (simulations/smoke.toml)
D, SLOTS, STEPS, GROUP, SCALE = 16, 2, 1, 16, 16
FC1, LAYERS = (64, 32), 2  # fc1 weight of the fleet ViT (embed 32, mlp ratio 2) in each of its 2 blocks
QUICK_FC1, QUICK_LAYERS = (32, 32), 1  # --quick: a 64-block scope (cheaper registration), same circuit and mask size
MASK_WEIGHTS, MAX_BLOCKS, DAMPING, NUM_GRADS = 41, 32, 0.01, 64  # 1 % of the fleet's 4 096 scope weights
REQUEST = "forget-class-3"
HONEST_SHARE = 0.8
CLIENTS, QUICK_CLIENTS = 8, 2
BUNDLES, QUICK_BUNDLES = 1000, 40
NODES, QUICK_NODES = 200, 20  # fleet size in the store part: verdict i goes to node i mod NODES
READ_SIZES = (1000, 10000)
READ_REPS, QUICK_READ_REPS = 50, 5
# docs/protocol.md §5: what each dishonest client sends and the verdict it must get (as tests/test_proof.py)
CHEATS = {
    "garbage-proof": "invalid-proof",
    "tamper-instances": "invalid-proof",
    "stale-model": "stale-model",
    "fake-fisher": "fisher-mismatch",
    "mask-only": "kkt-violation",
    "wrong-mask": "wrong-mask",
    "partial-mask": "wrong-mask",
    "drop-blocks": "incomplete",
    "duplicate-block": "incomplete",
    "hide-in-padding": "incomplete",
    "ignore": "incomplete",
    "replay": "stale-model",
}
QUICK_CHEATS = ("garbage-proof", "stale-model", "partial-mask", "drop-blocks", "replay", "ignore")
MALFORMED = ("junk-bytes", "empty", "bad-header", "truncated", "other-request", "unknown-circuit")
QUICK_MALFORMED = ("junk-bytes", "truncated", "other-request")
VERIFY_COLUMNS = [
    "i",
    "item",
    "kind",
    "behaviour",
    "client",
    "expected",
    "reason",
    "ok",
    "latency_ms",
    "verify_ms",
    "snarks",
    "proofs",
    "bundle_bytes",
]


@dataclass
class Item:
    """One bundle of the pool: its bytes, whose registry entry it is checked against, and its expected verdict."""

    name: str
    kind: str  # honest | cheat | malformed
    behaviour: str
    client: int
    data: bytes
    expected: str
    snarks: int = 0  # SNARK verifications its verdict takes (counted in the check pass)
    proofs: int = 0


@dataclass
class Fleet:
    circuit: object
    layout: object
    mask: object
    clients: list
    pool: list[Item] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def _scope(seed: int, quick: bool):
    """A model whose unlearning scope (``fc1`` weights) is shaped like the fleet ViT's."""
    import torch
    from torch import nn

    (rows, cols), layers = (QUICK_FC1, QUICK_LAYERS) if quick else (FC1, LAYERS)
    torch.manual_seed(seed)
    model = nn.Module()
    for b in range(layers):
        block = nn.Module()
        block.mlp = nn.Module()
        block.mlp.fc1 = nn.Linear(cols, rows, bias=False)
        model.add_module(f"block{b}", block)
    return model


def _fisher(layout, seed: int):
    import torch

    from zkapex_flwr.unlearning import BlockFisher

    g = torch.Generator().manual_seed(1000 + seed)
    grads = torch.randn(NUM_GRADS, layout.n_blocks, layout.block_size, generator=g, dtype=torch.float64)
    return BlockFisher(torch.einsum("mbi,mbj->bij", grads, grads) / NUM_GRADS, NUM_GRADS, layout)


def _malformed(name: str, honest: bytes, rng: np.random.Generator) -> bytes:
    from zkapex_flwr.proof import ProofBundle

    if name == "junk-bytes":
        return rng.bytes(4000)
    if name == "empty":
        return b""
    if name == "bad-header":
        return b"ZKAPEXB3" + b"\xff\xff\xff\x7f" + rng.bytes(64)
    if name == "truncated":
        return honest[: len(honest) // 2]
    bundle = ProofBundle.from_bytes(honest)
    if name == "other-request":  # an honest bundle for another request (the provider passes request_id)
        bundle.request_id = "another-request"
    elif name == "unknown-circuit":  # a well-formed circuit id outside the provider's menu
        bundle.circuit_id = "0" * 32
    else:
        raise ValueError(name)
    return bundle.to_bytes()


def build_fleet(n_clients: int, cheats, malformed, seed: int, quick: bool = False, progress=None) -> Fleet:
    """The set-up: circuit, clients, mask and the pool of bundles (honest, dishonest, malformed)."""
    import torch

    from zkapex_flwr.proof import CircuitSpec, ClientProver, get_circuit
    from zkapex_flwr.proof.cheats import cheat_bundle
    from zkapex_flwr.unlearning import BlockLayout
    from zkapex_flwr.unlearning.saliency import select_mask

    timings = {}
    t0 = time.perf_counter()
    circuit = get_circuit(CircuitSpec(d=D, slots=SLOTS, scale=SCALE, steps=STEPS, group=GROUP))
    timings["circuit_s"] = time.perf_counter() - t0
    layout = BlockLayout.from_model(_scope(0, quick), D)
    g = torch.Generator().manual_seed(seed)  # the fleet's masker on random saliency scores
    mask = select_mask(
        torch.rand(layout.size, generator=g, dtype=torch.float64),
        layout,
        MASK_WEIGHTS / layout.size,
        max_blocks=MAX_BLOCKS,
        group=(GROUP, SLOTS),
    )
    task = progress.add_task("register clients", total=n_clients) if progress else None
    t0 = time.perf_counter()
    clients, models = [], []
    for c in range(n_clients):
        model = _scope(seed * 1000 + c, quick)
        clients.append(
            ClientProver.register(
                model,
                layout,
                _fisher(layout, seed * 1000 + c),
                DAMPING,
                CircuitSpec(d=layout.block_size, slots=SLOTS, scale=SCALE, steps=STEPS, group=GROUP),
            )
        )
        models.append(model)
        if task is not None:
            progress.advance(task)
    timings["register_s"] = time.perf_counter() - t0
    fleet = Fleet(circuit, layout, mask, clients, timings=timings)
    rng = np.random.default_rng(seed)
    if task is not None:
        progress.remove_task(task)
        task = progress.add_task("prove the pool", total=n_clients + len(cheats))
    t0 = time.perf_counter()
    honest = []
    for c, prover in enumerate(clients):  # the real client path, on a copy (unlearn moves θ to θu)
        copy = prover.copy()
        bundle, _ = copy.unlearn(models[c], mask, REQUEST)
        honest.append(bundle.to_bytes())
        fleet.pool.append(Item(f"honest/{c}", "honest", "honest", c, honest[-1], "compliant"))
        if task is not None:
            progress.advance(task)
    timings["prove_honest_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j, behaviour in enumerate(cheats):
        c = j % n_clients
        other = honest[(c + 1) % n_clients] if behaviour == "replay" else None
        t1 = time.perf_counter()
        data = cheat_bundle(clients[c], mask, REQUEST, behaviour, rng=rng, other=other)
        timings[f"prove_cheat[{behaviour}]_s"] = time.perf_counter() - t1
        fleet.pool.append(Item(f"cheat/{behaviour}", "cheat", behaviour, c, data, CHEATS[behaviour]))
        if task is not None:
            progress.advance(task)
    timings["prove_cheats_s"] = time.perf_counter() - t0
    for j, name in enumerate(malformed):
        c = j % n_clients
        fleet.pool.append(
            Item(f"malformed/{name}", "malformed", name, c, _malformed(name, honest[c], rng), "malformed")
        )
    if task is not None:
        progress.remove_task(task)
    return fleet


def check_pool(fleet: Fleet) -> float:
    """Verify every pool bundle once (own verifier): expected verdict, and how many SNARKs it takes."""
    import zkapex_flwr.proof.verifier as vmod
    from zkapex_flwr.proof import ProofBundle, Verifier

    verifier = Verifier(fleet.circuit)
    menu = {fleet.circuit.circuit_id: fleet.circuit}
    calls = [0]
    real = vmod._snark_ok

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    t0 = time.perf_counter()
    vmod._snark_ok = counting
    try:
        for item in fleet.pool:
            calls[0] = 0
            verdict = verifier.verify(
                item.data, fleet.clients[item.client].registry, fleet.mask, menu=menu, request_id=REQUEST
            )
            if verdict.reason != item.expected:
                raise RuntimeError(
                    f"pool bundle {item.name} (client {item.client}) got '{verdict.reason}', expected "
                    f"'{item.expected}': {verdict.detail}"
                )
            item.snarks = calls[0]
            try:
                item.proofs = len(ProofBundle.from_bytes(item.data).proofs)
            except ValueError:
                item.proofs = 0
    finally:
        vmod._snark_ok = real
    return time.perf_counter() - t0


def schedule(pool: list[Item], n: int, rng: np.random.Generator) -> list[int]:
    """Indices into ``pool``: ``HONEST_SHARE`` honest (clients drawn at random), the rest cycling through
    the dishonest and malformed kinds (each at least once when ``n`` allows), shuffled."""
    honest = [i for i, it in enumerate(pool) if it.kind == "honest"]
    other = [i for i, it in enumerate(pool) if it.kind != "honest"]
    n_other = min(n, max(int(round((1 - HONEST_SHARE) * n)), len(other)))
    seq = [other[j % len(other)] for j in range(n_other)] + list(rng.choice(honest, size=n - n_other))
    rng.shuffle(seq)
    return [int(i) for i in seq]


def throughput(fleet: Fleet, seq: list[int], progress=None) -> tuple[list[dict], list, dict]:
    """The timed part: one fresh ``Verifier.verify`` per bundle, sequentially, as the provider calls it."""
    from zkapex_flwr.proof import Verifier

    verifier = Verifier(fleet.circuit)  # cold, as at the start of a request
    _ = verifier.proof_bytes  # one-time per circuit (cached on disk next to the keys), not per bundle
    menu = {fleet.circuit.circuit_id: fleet.circuit}
    rows, verdicts = [], []
    task = progress.add_task("verify", total=len(seq)) if progress else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, k in enumerate(seq):
        item = fleet.pool[k]
        entry = fleet.clients[item.client].registry
        t0 = time.perf_counter()
        verdict = verifier.verify(item.data, entry, fleet.mask, menu=menu, request_id=REQUEST)
        latency = time.perf_counter() - t0
        if verdict.reason != item.expected:
            raise RuntimeError(
                f"verification {i}: {item.name} (client {item.client}) got '{verdict.reason}', "
                f"expected '{item.expected}': {verdict.detail}"
            )
        rows.append(
            {
                "i": i,
                "item": item.name,
                "kind": item.kind,
                "behaviour": item.behaviour,
                "client": item.client,
                "expected": item.expected,
                "reason": verdict.reason,
                "ok": True,
                "latency_ms": 1000 * latency,
                "verify_ms": verdict.verify_ms,
                "snarks": item.snarks,
                "proofs": item.proofs,
                "bundle_bytes": len(item.data),
            }
        )
        verdicts.append((item, verdict))
        if task is not None:
            progress.advance(task)
    info = {
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "mask_commitments": len(getattr(verifier, "_mask_commitments", {})),
    }
    if task is not None:
        progress.remove_task(task)
    return rows, verdicts, info


def _ledger_row(
    rid: str, node: int, reason: str, detail: str, i: int, verify_ms=None, proofs=0, bundle_bytes=0, prove_s=None
) -> dict:
    """A ledger row with the columns ``VerifiedUnlearning._record`` writes."""
    from zkapex_flwr.proof.circuit import CircuitSpec

    return {
        "request_id": rid,
        "node_id": node,
        "partition_id": i % 997,
        "server_round": 2 + i // 997,
        "nonce": secrets.token_hex(16),
        "reason": reason,
        "detail": detail,
        "compliant": reason == "compliant",
        "attempts": 1,
        "verify_ms": verify_ms,
        "proofs": proofs,
        "bundle_bytes": bundle_bytes,
        "circuit": CircuitSpec(d=D, slots=SLOTS, scale=SCALE, steps=STEPS, group=GROUP).name(),
        "quarantined": False,
        "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client_prove_s": prove_s,
        "client_masked_weights": 41.0,
        "client_upload_s": 0.01,
    }


def _fs_type(path: Path) -> str:
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def store_bench(
    fleet: Fleet, verdicts: list, folder: Path, n_nodes: int, reps: int, seed: int, progress=None
) -> tuple[list[dict], list[dict], dict]:
    """Per-verdict transactions into a fresh store, then the per-round reads at ``READ_SIZES`` ledger rows."""
    from strategies.ledger import Ledger
    from strategies.registry import Registry
    from strategies.store import ProviderStore

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    store = ProviderStore(folder / "provider.sqlite")
    registry, ledger = Registry(store), Ledger(store)
    rng = np.random.default_rng(seed)
    nodes = [int(v) for v in rng.integers(1, 2**63, size=n_nodes, dtype=np.uint64)]  # Flower-like node ids
    spec = fleet.circuit.spec
    t0 = time.perf_counter()
    for j, node in enumerate(nodes):  # phase 2: one registry entry per node
        # a few real clients' entries under many node ids: the copy check is off for this load test only
        registry.register(node, fleet.clients[j % len(fleet.clients)].registry, spec, partition_id=j, unique=False)
    info = {
        "register_nodes": n_nodes,
        "register_s": time.perf_counter() - t0,
        "entry_bytes": len(fleet.clients[0].registry.to_bytes()),
        "fs_type": _fs_type(folder),
    }

    def record(i: int, item: Item, verdict) -> dict:
        """Verdict ``i``'s transaction, timed: as VerifiedUnlearning._verify_outcome + _record."""
        node, rid = nodes[i % n_nodes], f"req-{i // n_nodes}"
        row = _ledger_row(
            rid, node, verdict.reason, verdict.detail, i, verdict.verify_ms, verdict.steps_verified, len(item.data), 0.5
        )
        t0 = time.perf_counter()
        with store.transaction():
            if verdict.compliant:
                registry.update_theta(node, verdict.new_theta)
            failed_elsewhere = [r for r in ledger.failed_requests(node) if r != rid]
            row["quarantined"] = not verdict.compliant or bool(failed_elsewhere)
            ledger.append([row])
        return {
            "i": i,
            "node_id": str(node),
            "request_id": rid,
            "reason": verdict.reason,
            "registry_write": verdict.compliant,
            "latency_ms": 1000 * (time.perf_counter() - t0),
        }

    writes = []
    task = progress.add_task("record verdicts", total=len(verdicts)) if progress else None
    wall0 = time.perf_counter()
    for i, (item, verdict) in enumerate(verdicts):
        writes.append(record(i, item, verdict))
        if task is not None:
            progress.advance(task)
    info["wall_s"] = time.perf_counter() - wall0
    if task is not None:
        progress.remove_task(task)
    # reads: fill the ledger (same mix of outcomes, no registry moves) to each size, then time the queries
    # and, for comparison, ``reps`` more verdict transactions at that size (they add rows)
    reasons = [v.reason for _, v in verdicts]
    reads, i = [], len(verdicts)
    sizes = [s for s in READ_SIZES if s >= len(ledger)] or [len(ledger)]
    task = progress.add_task("reads", total=len(sizes)) if progress else None
    for size in sizes:
        while len(ledger) < size:
            batch = []
            for _ in range(min(1000, size - len(ledger))):
                reason = reasons[i % len(reasons)]
                batch.append(_ledger_row(f"req-{i // n_nodes}", nodes[i % n_nodes], reason, "", i))
                batch[-1]["quarantined"] = reason != "compliant"
                i += 1
            ledger.append(batch)
        last_rid = f"req-{(i - 1) // n_nodes}"
        failing = sorted(ledger.quarantined()) or [nodes[0]]
        queries = {
            "quarantined()": lambda: ledger.quarantined(),
            "decided(request)": lambda: ledger.decided(last_rid),
            "failed_requests(node)": lambda: ledger.failed_requests(failing[0]),
        }
        for name, fn in queries.items():
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - t0))
            reads.append(
                {
                    "rows": len(ledger),
                    "query": name,
                    "p50_ms": float(np.median(times)),
                    "p99_ms": float(np.percentile(times, 99)),
                    "max_ms": float(max(times)),
                    "reps": reps,
                    "result_size": len(fn()),
                }
            )
        rows_before = len(ledger)
        times = []
        for _ in range(reps):
            item, verdict = verdicts[i % len(verdicts)]
            times.append(record(i, item, verdict)["latency_ms"])
            i += 1
        reads.append(
            {
                "rows": rows_before,
                "query": "verdict transaction (write)",
                "p50_ms": float(np.median(times)),
                "p99_ms": float(np.percentile(times, 99)),
                "max_ms": float(max(times)),
                "reps": reps,
                "result_size": 1,
            }
        )
        if task is not None:
            progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    info["registry_versions"] = store.query("SELECT COUNT(*) FROM registry")[0][0]
    store.close()
    info["db_bytes"] = sum(p.stat().st_size for p in folder.iterdir())
    return writes, reads, info


def _stats(ms) -> dict:
    ms = np.asarray(ms, dtype=float)
    return {
        "n": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
    }


def summarize(rows: list[dict], info: dict, writes: list[dict], store_info: dict) -> dict:
    lat = [r["latency_ms"] for r in rows]
    busy = sum(lat) / 1000
    snarks = sum(r["snarks"] for r in rows)
    per_reason = {}
    for reason in sorted({r["reason"] for r in rows}):
        sel = [r for r in rows if r["reason"] == reason]
        per_reason[reason] = {
            **_stats([r["latency_ms"] for r in sel]),
            "share": len(sel) / len(rows),
            "snarks_per_bundle": float(np.mean([r["snarks"] for r in sel])),
        }
    w = [x["latency_ms"] for x in writes]
    w_busy = sum(w) / 1000
    return {
        "verify": {
            "bundles": len(rows),
            "busy_s": busy,
            "wall_s": info["wall_s"],
            "cpu_s": info["cpu_s"],
            "cpu_per_wall": info["cpu_s"] / info["wall_s"],
            "bundles_per_s": len(rows) / busy,
            "bundles_per_s_wall": len(rows) / info["wall_s"],
            "snarks": snarks,
            "snarks_per_s": snarks / busy,
            "mask_commitments": info["mask_commitments"],
            "first_compliant_ms": next((r["latency_ms"] for r in rows if r["reason"] == "compliant"), None),
            "mismatches": sum(not r["ok"] for r in rows),
            **_stats(lat),
            "per_reason": per_reason,
        },
        "writes": {
            "verdicts": len(writes),
            "busy_s": w_busy,
            "wall_s": store_info["wall_s"],
            "writes_per_s": len(writes) / w_busy,
            **_stats(w),
            "with_registry_move": _stats([x["latency_ms"] for x in writes if x["registry_write"]])
            if any(x["registry_write"] for x in writes)
            else None,
            "ledger_only": _stats([x["latency_ms"] for x in writes if not x["registry_write"]])
            if any(not x["registry_write"] for x in writes)
            else None,
            **{
                k: store_info[k]
                for k in ("register_nodes", "register_s", "entry_bytes", "fs_type", "registry_versions", "db_bytes")
            },
        },
    }


def plot(rows: list[dict], writes: list[dict], path: Path | None = None):
    """Empirical CDFs (numeric x) of verification latency per verdict and of the per-verdict store
    transaction. Writes ``path`` when given; returns the Figure."""
    from matplotlib.figure import Figure

    with paper_style():
        fig = Figure(figsize=(11.5, 4))
        axes = fig.subplots(1, 2)
        ax = axes[0]
        for reason in sorted({r["reason"] for r in rows}):
            ms = np.sort([r["latency_ms"] for r in rows if r["reason"] == reason])
            ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=f"{reason} (n = {len(ms)})")
        ax.set_xscale("log")
        ax.set_xlabel("verification latency (ms, log scale)")
        ax.set_ylabel("fraction of bundles ≤ latency")
        ax.set_title(f"Verifier.verify, {len(rows)} bundles, by verdict")
        ax.set_ylim(0, 1.02)
        ax.grid(True)
        ax.legend(title="verdict", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax = axes[1]
        for label, sel in (
            ("registry move + ledger row", [w for w in writes if w["registry_write"]]),
            ("ledger row only", [w for w in writes if not w["registry_write"]]),
        ):
            if sel:
                ms = np.sort([w["latency_ms"] for w in sel])
                ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=f"{label} (n = {len(ms)})")
        ax.set_xscale("log")
        ax.set_xlabel("transaction latency (ms, log scale)")
        ax.set_ylabel("fraction of transactions ≤ latency")
        ax.set_title("Store transaction per verdict (SQLite WAL, sync. FULL)")
        ax.set_ylim(0, 1.02)
        ax.grid(True)
        ax.legend(loc="center right")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=DPI)
    return fig


def replot(folder: Path) -> Path:
    """Re-render ``latency.png`` from the ``verify.csv`` and ``writes.csv`` in ``folder`` (no verification)."""
    import pandas as pd

    folder = Path(folder)
    rows = pd.read_csv(folder / "verify.csv").to_dict(orient="records")
    writes = pd.read_csv(folder / "writes.csv").to_dict(orient="records")
    plot(rows, writes, folder / "latency.png")
    return folder / "latency.png"


def _f(v, nd=1) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def write_report(out: Path, summary: dict, reads: list[dict]) -> Path:
    v, w, cfg, m = summary["verify"], summary["writes"], summary["config"], summary["machine"]
    lines = [
        f"# Verification load ({'quick' if cfg['quick'] else 'full'} configuration, {v['bundles']} bundles)",
        "",
        f"Command: `{summary['command']}`  ",
        f"Machine: {m.get('cpu', '?')}, {m['cpu_count']} cores, "
        f"{m.get('mem_gb', '?')} GB, {m['platform']}, Python {m['python']}, ezkl {m['ezkl']}; {m['date']}.",
        "",
        f"Circuit `{cfg['circuit']}` (d = {D}, K = {SLOTS}, S = {SCALE}, B = {STEPS}, G = {GROUP}; logrows "
        f"{cfg['logrows']}), scope {cfg['scope_blocks']} blocks, mask {cfg['mask_weights']} weights in "
        f"{cfg['mask_units']} units ({cfg['proofs_per_honest_bundle']} proofs per honest bundle, "
        f"{cfg['honest_bundle_bytes']:,} bytes). {cfg['clients']} clients; pool of {cfg['pool']} bundles "
        f"({cfg['pool_cheats']} dishonest kinds, {cfg['pool_malformed']} malformed).",
        "",
        f"Set-up (not in the throughput): circuit load {_f(summary['setup']['circuit_s'], 2)} s, "
        f"registration {_f(summary['setup']['register_s'], 1)} s, honest proofs "
        f"{_f(summary['setup']['prove_honest_s'], 1)} s, dishonest proofs {_f(summary['setup']['prove_cheats_s'], 1)} s, "
        f"check pass {_f(summary['setup']['check_s'], 2)} s.",
        "",
        "## Verification throughput",
        "",
        f"{v['bundles']} sequential `Verifier.verify` calls in one thread, every verdict equal to the expected one "
        f"({v['mismatches']} mismatches). The verifier starts cold and caches mask commitments per pattern "
        f"(provider behaviour): {v['mask_commitments']} commitments computed, in the first compliant verification "
        f"({_f(v['first_compliant_ms'])} ms). "
        f"CPU / wall during the loop: {v['cpu_per_wall']:.2f} (ezkl's verifier may use more than one thread).",
        "",
        "| bundles | bundles/s | SNARKs/s | p50 ms | p90 ms | p99 ms | max ms | busy s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {v['bundles']} | {_f(v['bundles_per_s'])} | {_f(v['snarks_per_s'])} | {_f(v['p50_ms'], 2)} | "
        f"{_f(v['p90_ms'], 2)} | {_f(v['p99_ms'], 2)} | {_f(v['max_ms'], 2)} | {_f(v['busy_s'], 2)} |",
        "",
        "| verdict | bundles | share | SNARKs / bundle | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for reason, s in v["per_reason"].items():
        lines.append(
            f"| {reason} | {s['n']} | {100 * s['share']:.1f} % | {s['snarks_per_bundle']:.2f} | "
            f"{_f(s['p50_ms'], 2)} | {_f(s['p90_ms'], 2)} | {_f(s['p99_ms'], 2)} | {_f(s['max_ms'], 2)} |"
        )
    lines += [
        "",
        "## Store writes",
        "",
        f"One transaction per verdict into a fresh SQLite store (WAL, synchronous=FULL) on `{w['fs_type']}`: "
        f"the registry's move to θu (new {w['entry_bytes']:,}-byte entry version) for compliant verdicts, the "
        f"`failed_requests` look-up and the ledger row. {w['register_nodes']} nodes registered first "
        f"({_f(w['register_s'], 2)} s); {w['registry_versions']} registry versions at the end.",
        "",
        "| transactions | writes/s | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
        f"| all ({w['verdicts']}) | {_f(w['writes_per_s'])} | {_f(w['p50_ms'], 2)} | {_f(w['p90_ms'], 2)} | "
        f"{_f(w['p99_ms'], 2)} | {_f(w['max_ms'], 2)} |",
    ]
    for key, label in (("with_registry_move", "registry move + ledger row"), ("ledger_only", "ledger row only")):
        s = w.get(key)
        if s:
            lines.append(
                f"| {label} ({s['n']}) | {_f(1000 / s['mean_ms'])} | {_f(s['p50_ms'], 2)} | "
                f"{_f(s['p90_ms'], 2)} | {_f(s['p99_ms'], 2)} | {_f(s['max_ms'], 2)} |"
            )
    lines += [
        "",
        "## Store reads (per round) and writes at size",
        "",
        "The ledger filled to each size with the same mix of outcomes (page cache warm); a verdict transaction "
        "at that size for comparison.",
        "",
        "| ledger rows | operation | p50 ms | p99 ms | max ms | result size |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in reads:
        lines.append(
            f"| {r['rows']:,} | `{r['query']}` | {_f(r['p50_ms'], 3)} | {_f(r['p99_ms'], 3)} | "
            f"{_f(r['max_ms'], 3)} | {r['result_size']} |"
        )
    lines += ["", "Files: `verify.csv`, `writes.csv`, `reads.csv`, `summary.json`, `machine.json`, `latency.png`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def print_tables(console, summary: dict, reads: list[dict]) -> None:
    from rich import box
    from rich.table import Table

    v, w = summary["verify"], summary["writes"]

    def table(title, cols):
        t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1))
        for col in cols:
            t.add_column(col, justify="right", no_wrap=True)
        return t

    t = table(
        f"verification: {v['bundles']} bundles, sequential, one thread",
        ("bundles/s", "SNARKs/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "cpu/wall"),
    )
    t.add_row(
        _f(v["bundles_per_s"]),
        _f(v["snarks_per_s"]),
        _f(v["p50_ms"], 2),
        _f(v["p90_ms"], 2),
        _f(v["p99_ms"], 2),
        _f(v["max_ms"], 2),
        f"{v['cpu_per_wall']:.2f}",
    )
    console.print(t)
    t = table("by verdict (every verdict as expected)", ("verdict", "n", "SNARKs", "p50 ms", "p99 ms", "max ms"))
    for reason, s in v["per_reason"].items():
        t.add_row(
            reason,
            str(s["n"]),
            f"{s['snarks_per_bundle']:.2f}",
            _f(s["p50_ms"], 2),
            _f(s["p99_ms"], 2),
            _f(s["max_ms"], 2),
        )
    console.print(t)
    t = table(
        f"store: {w['verdicts']} verdict transactions ({w['fs_type']}, WAL, synchronous=FULL)",
        ("writes/s", "p50 ms", "p90 ms", "p99 ms", "max ms"),
    )
    t.add_row(_f(w["writes_per_s"]), _f(w["p50_ms"], 2), _f(w["p90_ms"], 2), _f(w["p99_ms"], 2), _f(w["max_ms"], 2))
    console.print(t)
    t = table("store at size", ("rows", "operation", "p50 ms", "p99 ms"))
    for r in reads:
        t.add_row(f"{r['rows']:,}", r["query"], _f(r["p50_ms"], 3), _f(r["p99_ms"], 3))
    console.print(t)


def run(out: Path, quick: bool = False, bundles: int | None = None, seed: int = 0) -> dict:
    import warnings

    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress

    import strategies.ledger  # noqa: F401  (imported here so that a broken import fails before the set-up)
    import strategies.registry  # noqa: F401
    from zkapex_flwr.proof import ProofBundle

    warnings.filterwarnings("ignore", message="zkapex-flwr is using an INSECURE test SRS")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = bundles if bundles is not None else (QUICK_BUNDLES if quick else BUNDLES)
    if n < 1:
        raise ValueError(f"--bundles must be at least 1, got {n}")
    cheats = QUICK_CHEATS if quick else tuple(CHEATS)
    malformed = QUICK_MALFORMED if quick else MALFORMED
    n_clients = QUICK_CLIENTS if quick else CLIENTS
    console = Console(stderr=True)
    t_start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        fleet = build_fleet(n_clients, cheats, malformed, seed, quick, progress)
        fleet.timings["check_s"] = check_pool(fleet)
        seq = schedule(fleet.pool, n, np.random.default_rng(seed + 1))
        rows, verdicts, info = throughput(fleet, seq, progress)
        try:  # a scratch store on the disk of --out, removed afterwards
            writes, reads, store_info = store_bench(
                fleet,
                verdicts,
                out / ".store-bench",
                QUICK_NODES if quick else NODES,
                QUICK_READ_REPS if quick else READ_REPS,
                seed,
                progress,
            )
        finally:
            shutil.rmtree(out / ".store-bench", ignore_errors=True)
    pd.DataFrame(rows, columns=VERIFY_COLUMNS).to_csv(out / "verify.csv", index=False)
    pd.DataFrame(writes).to_csv(out / "writes.csv", index=False)
    pd.DataFrame(reads).to_csv(out / "reads.csv", index=False)
    honest = ProofBundle.from_bytes(fleet.pool[0].data)
    units = int(fleet.mask.dense().numpy().reshape(-1, GROUP * D).any(1).sum())
    summary = summarize(rows, info, writes, store_info)
    summary["config"] = {
        "quick": quick,
        "seed": seed,
        "circuit": fleet.circuit.spec.name(),
        "circuit_id": fleet.circuit.circuit_id,
        "logrows": fleet.circuit.logrows,
        "scope_blocks": fleet.layout.n_blocks,
        "mask_weights": len(fleet.mask),
        "mask_units": units,
        "proofs_per_honest_bundle": len(honest.proofs),
        "honest_bundle_bytes": len(fleet.pool[0].data),
        "clients": n_clients,
        "pool": len(fleet.pool),
        "pool_cheats": len(cheats),
        "pool_malformed": len(malformed),
        "cheats": {c: CHEATS[c] for c in cheats},
        "malformed": list(malformed),
        "honest_share_target": HONEST_SHARE,
        "nodes": QUICK_NODES if quick else NODES,
        "read_sizes": list(READ_SIZES),
    }
    summary["setup"] = {k: round(v, 3) for k, v in fleet.timings.items()}
    summary["reads"] = reads
    summary["machine"] = describe_machine()
    summary["command"] = (
        f"python -m benchmarks.verify_load --out {out}"
        + (" --quick" if quick else "")
        + (f" --bundles {bundles}" if bundles is not None else "")
        + (f" --seed {seed}" if seed else "")
    )
    summary["wall_s"] = time.perf_counter() - t_start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "machine.json").write_text(json.dumps(summary["machine"], indent=2))
    plot(rows, writes, out / "latency.png")
    write_report(out, summary, reads)
    print_tables(Console(), summary, reads)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/load"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CLIENTS} clients, fewer dishonest kinds, {QUICK_BUNDLES} bundles (smoke test)",
    )
    parser.add_argument(
        "--bundles", type=int, default=None, help=f"verifications to time (default {BUNDLES}; --quick: {QUICK_BUNDLES})"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.out, args.quick, args.bundles, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
