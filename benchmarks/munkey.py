"""MUNKEY against the plain ViT: utility, forgetting by key deletion, and the cost of proving the deletion.

    python -m benchmarks.munkey --out docs/results/munkey [--quick]
    zkapex bench munkey [--quick]

One process, one core (``torch.set_num_threads(1)``), per seed:

1. **Data**: the image pool is split into a test pool, the provider's *base pool* (never subject to deletion;
   part of it held out to tune the retrieval) and the *deletable pool* (the clients' instances).
2. **Models at equal training cost** (the same number of optimiser steps, batch size and schedule):
   MUNKEY — a ViT backbone trained on the base pool only, frozen, plus a key/value memory over every
   deletable instance, retrieval (k, τ, λ) tuned on the held-out base pool — and the plain ViT trained
   on base + deletable pool.
3. **Two deletion requests**: ``samples`` (10 % of all training instances, drawn from the deletable pool)
   and ``class`` (every deletable instance of one class; the base pool's instances of it stay). Methods:

   * ``munkey`` (before deletion), ``munkey-delete`` (delete the keys), ``munkey-rebuild`` (the
     memory built without them from the original data: MUNKEY's retrain-from-scratch) — checked equal to
     ``munkey-delete`` bit for bit (memory tensors and test logits);
   * ``plain`` (before), ``plain-retrain`` (the plain ViT retrained from scratch without them, same
     steps: the conventional reference), ``plain-<algorithm>`` (post-hoc unlearning of the plain ViT
     with :func:`zkapex_flwr.posthoc.unlearn`: ``ga``, ``graddiff``, ``npo``).

   Metrics: test accuracy, forget accuracy, the project's per-example RMIA
   (:class:`zkapex_flwr.membership.MembershipAudit`: AUROC and TPR at 1 % FPR, forget set against
   never-trained test samples; MUNKEY is scored with MUNKEY references — another backbone seed, memory
   without the forget set — and the plain ViT with plain references), and the time to forget.
4. **Proof of deletion**: the pre-deletion memory committed (:func:`zkapex_flwr.munkey.commitment.commit_memory`),
   the deletion proven and verified (:mod:`zkapex_flwr.munkey.deletion`): ms per deleted instance and
   proof bytes per deleted instance.

Outputs in ``--out``: ``munkey_runs.csv`` (seed × request × method), ``munkey.csv`` (mean ± std),
``proofs.csv``, ``tuning.csv``, ``summary.json``, ``report.md``, ``machine.json``, ``munkey.png``,
``forget_time.png``, ``tuning.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zkapex_flwr.figures import paper_style, save_figure
from zkapex_flwr.machine import describe_machine

REQUESTS = ("samples", "class")
METRICS = ("test_acc", "forget_acc", "mia_auc", "mia_tpr_at_1pct_fpr", "forget_s")
TARGETS = {"mia_gap": 0.01, "utility_gap": 0.01, "proof_ms_per_deleted": 10.0}


@dataclass(frozen=True)
class Plan:
    """What one benchmark run measures."""

    dataset: str
    seeds: tuple[int, ...]
    vit: dict
    steps: int  # optimiser steps of every trained model (equal training cost)
    lr: float = 1e-3
    batch_size: int = 64
    test_fraction: float = 0.15
    base_fraction: float = 0.425  # the provider's base pool (never deleted): 0.5 of the training data
    val_fraction: float = 0.3  # of the base pool, held out to tune the retrieval (leave-one-out)
    forget_fraction: float = 0.10  # of all training instances, drawn from the deletable pool
    forget_class: int = 3
    split_seed: int = 0
    posthoc: tuple[str, ...] = ("ga", "graddiff", "npo")
    posthoc_steps: int = 20
    posthoc_lr: float = 5e-4
    grid: dict = field(default_factory=dict)  # overrides of zkapex_flwr.munkey.model.DEFAULT_GRID
    keys: str = "tokens"  # memory keys: "tokens" (flattened patch tokens) or "pooled" (zkapex_flwr.munkey.model)


FULL = Plan(
    "mnist",
    seeds=(0, 1, 2),
    vit=dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, patch_size=7, global_pool="avg"),
    steps=600,
)
QUICK = Plan(
    "digits",
    seeds=(0,),
    vit=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=4, global_pool="avg"),
    steps=160,
    lr=3e-3,
    posthoc_steps=5,
)


@dataclass
class Pools:
    """Dataset row indices of each role (they are the instance ids, unique and ≥ 0)."""

    test: object
    base_fit: object
    base_val: object
    deletable: object

    @property
    def base(self):
        import torch

        return torch.cat([self.base_fit, self.base_val])

    @property
    def train(self):
        import torch

        return torch.cat([self.base, self.deletable])


def split_pools(n: int, plan: Plan, seed: int) -> Pools:
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * plan.test_fraction))
    n_base = int(round(n * plan.base_fraction))
    n_val = int(round(n_base * plan.val_fraction))
    test, base, deletable = order[:n_test], order[n_test : n_test + n_base], order[n_test + n_base :]
    return Pools(test, base[n_val:], base[:n_val], deletable)


def forget_ids(pools: Pools, labels, plan: Plan, seed: int) -> dict:
    """The two requests' instance ids (ascending): 10 % of the training instances, and one class."""
    import torch

    count = int(round(len(pools.train) * plan.forget_fraction))
    if count > len(pools.deletable):
        raise ValueError(f"cannot delete {count} instances from a deletable pool of {len(pools.deletable)}")
    g = torch.Generator().manual_seed(seed + 7)
    samples = pools.deletable[torch.randperm(len(pools.deletable), generator=g)[:count]]
    cls = pools.deletable[labels[pools.deletable] == plan.forget_class]
    return {"samples": samples.sort().values, "class": cls.sort().values}


class Bench:
    def __init__(self, plan: Plan):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from zkapex_flwr.data.images import load_images
        from zkapex_flwr.tasks import ImageTask

        self.plan = plan
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = ImageTask()
        self.x, self.y = load_images(plan.dataset)
        self.image_shape = tuple(self.x.shape[1:])
        # one split for every seed (seeds vary initialisation and the forget draw), so the backbones of the
        # other seeds are OUT reference models for a seed's MUNKEY
        self.pools = split_pools(len(self.y), plan, plan.split_seed)
        self.backbones: dict = {}
        self.t0 = time.perf_counter()

    def data(self, ids):
        from zkapex_flwr.data.tensors import TensorData

        return TensorData((self.x[ids], self.y[ids]))

    def fit(self, model, ids, seed: int, desc: str) -> float:
        from zkapex_flwr.munkey.model import train_steps

        t = time.perf_counter()
        train_steps(
            model,
            self.task,
            self.data(ids),
            steps=self.plan.steps,
            lr=self.plan.lr,
            batch_size=self.plan.batch_size,
            seed=seed,
            progress=self.progress,
            desc=desc,
        )
        return time.perf_counter() - t

    def backbone(self, seed: int):
        """(MUNKEY with an empty memory, its tuned retrieval, the tuning table, training seconds) of ``seed``:
        the backbone trained on the base pool only and frozen; trained once, shared by the runs that need it."""
        from zkapex_flwr.munkey.model import MunkeyViT, tune_retrieval

        if seed not in self.backbones:
            model = MunkeyViT.build(self.image_shape, 10, seed=seed, keys=self.plan.keys, **self.plan.vit)
            seconds = self.fit(model.backbone, self.pools.base_fit, seed, f"backbone seed {seed} (base pool only)")
            model.freeze()
            retrieval, table = tune_retrieval(model, self.data(self.pools.base_val), grid=self.plan.grid)
            model.retrieval = retrieval
            self.backbones[seed] = (model, retrieval, table, seconds)
        model, retrieval, table, seconds = self.backbones[seed]
        empty = model.copy()
        empty.memory.delete(empty.memory.ids)
        return empty, retrieval, table, seconds

    def vit(self, seed: int):
        from zkapex_flwr.models import create_image_model

        return create_image_model("vit", self.image_shape, 10, seed=seed, **self.plan.vit)

    def seed_run(self, seed: int) -> tuple[list[dict], list[dict], list[dict], dict]:
        import torch

        from zkapex_flwr.membership import MembershipAudit
        from zkapex_flwr.munkey.model import build_munkey
        from zkapex_flwr.training import accuracy, seed_everything

        plan, log = self.plan, self.console.log
        seed_everything(seed)
        pools = self.pools
        requests = forget_ids(pools, self.y, plan, seed)
        test = self.data(pools.test)

        # MUNKEY: backbone on the base pool only, retrieval tuned on held-out base-pool data, memory = deletable pool
        munkey, retrieval, table, backbone_s = self.backbone(seed)
        t = time.perf_counter()
        munkey.add_instances(pools.deletable, self.x[pools.deletable], self.y[pools.deletable])
        memory_s = time.perf_counter() - t
        # the MUNKEY reference (an OUT model of the same pipeline): another seed's backbone, its own tuning
        others = [s for s in plan.seeds if s != seed]
        ref_seed = others[plan.seeds.index(seed) % len(others)] if others else seed + 1000
        ref_munkey, ref_retrieval, _, _ = self.backbone(ref_seed)

        # the plain ViT on everything, the same number of steps
        plain = self.vit(seed)
        plain_s = self.fit(plain, pools.train, seed, f"seed {seed}: plain ViT (all training data)")
        every = torch.cat(list(requests.values()))
        ref_plain = self.vit(seed + 1000)
        self.fit(
            ref_plain,
            pools.train[~torch.isin(pools.train, every)],
            seed + 1000,
            f"seed {seed}: plain reference (no forget set)",
        )
        acc = {"munkey": accuracy(munkey, self.task, test), "plain": accuracy(plain, self.task, test)}
        log(
            f"seed {seed}: backbone-only {accuracy(munkey.backbone, self.task, test):.4f}, MUNKEY {acc['munkey']:.4f} "
            f"(k={retrieval.k}, τ={retrieval.temperature}, λ={retrieval.lam}), plain {acc['plain']:.4f} "
            f"({time.perf_counter() - self.t0:.0f} s)"
        )
        tuning = [{"seed": seed, **r} for r in table]
        sizes = {
            "test": len(pools.test),
            "base_fit": len(pools.base_fit),
            "base_val": len(pools.base_val),
            "deletable": len(pools.deletable),
            **{f"forget_{k}": len(v) for k, v in requests.items()},
        }

        rows, proofs = [], []
        for request, ids in requests.items():
            forget = self.data(ids)
            non_members = (
                test if request == "samples" else self.data(pools.test[self.y[pools.test] == plan.forget_class])
            )
            kept = pools.deletable[~torch.isin(pools.deletable, ids)]
            retain_ids = pools.train[~torch.isin(pools.train, ids)]
            common = {"seed": seed, "request": request, "forgotten": len(ids)}

            def row(method, model, audit, forget_s, **extra):
                scores = audit.score(model, self.task)
                return {
                    **common,
                    "method": method,
                    "test_acc": accuracy(model, self.task, test),
                    "forget_acc": accuracy(model, self.task, forget),
                    "mia_auc": scores["auc"],
                    "mia_tpr_at_1pct_fpr": scores["tpr_at_1pct_fpr"],
                    "forget_s": forget_s,
                    **extra,
                }

            # MUNKEY: delete the keys; rebuild without them; compare bit for bit
            ref = build_munkey(ref_munkey.backbone, 10, ref_retrieval, kept, self.data(kept), keys=plan.keys)
            audit = MembershipAudit.calibrate([ref], self.task, forget, non_members)
            deleted = munkey.copy()
            if request == "class":
                t = time.perf_counter()
                gone = deleted.forget_class(plan.forget_class)
                delete_s = time.perf_counter() - t
                if not torch.equal(gone, ids):
                    raise AssertionError("forget_class deleted other ids than the class's deletable instances")
            else:
                delete_s = deleted.forget(ids)
            t = time.perf_counter()
            rebuilt = build_munkey(munkey.backbone, 10, retrieval, kept, self.data(kept), keys=plan.keys)
            rebuild_s = time.perf_counter() - t
            exact = all(
                torch.equal(a, b) for a, b in zip(deleted.memory.state().values(), rebuilt.memory.state().values())
            )
            with torch.no_grad():
                exact = exact and torch.equal(deleted(test.tensors[0]), rebuilt(test.tensors[0]))
            remaining = int(torch.isin(deleted.memory.ids, ids).sum())
            check = {"exact_rebuild": bool(exact), "deleted_ids_remaining": remaining}
            rows += [
                row("munkey", munkey, audit, 0.0, **check),
                row("munkey-delete", deleted, audit, delete_s, **check),
                row("munkey-rebuild", rebuilt, audit, rebuild_s, **check),
            ]
            proofs.append({**common, **prove(munkey, ids, f"{request}-{seed}")})

            # the plain ViT: retrain from scratch without the forget set, and post-hoc unlearning
            audit = MembershipAudit.calibrate([ref_plain], self.task, forget, non_members)
            retrained = self.vit(seed)
            retrain_s = self.fit(retrained, retain_ids, seed, f"seed {seed}: plain retrain without {request}")
            rows += [row("plain", plain, audit, 0.0), row("plain-retrain", retrained, audit, retrain_s)]
            for name in plan.posthoc:
                model, seconds = posthoc(plain, self.task, forget, self.data(retain_ids), name, plan, seed)
                if model is not None:
                    rows.append(row(f"plain-{name}", model, audit, seconds))
            by = {r["method"]: r for r in rows if r["request"] == request and r["seed"] == seed}
            log(
                f"seed {seed} {request} ({len(ids)} deleted): MUNKEY RMIA {by['munkey']['mia_auc']:.3f}→"
                f"{by['munkey-delete']['mia_auc']:.3f} (rebuild {by['munkey-rebuild']['mia_auc']:.3f}, exact={exact}), "
                f"plain {by['plain']['mia_auc']:.3f}, retrain {by['plain-retrain']['mia_auc']:.3f}; "
                f"delete {delete_s * 1e3:.2f} ms vs retrain {retrain_s:.0f} s; "
                f"prove {proofs[-1]['prove_ms_per_deleted']:.3f} + verify {proofs[-1]['verify_ms_per_deleted']:.3f} "
                f"ms/instance ({time.perf_counter() - self.t0:.0f} s)"
            )
        meta = {
            "seed": seed,
            "sizes": sizes,
            "retrieval": asdict(retrieval),
            "backbone_only_acc": accuracy(munkey.backbone, self.task, test),
            "munkey_acc": acc["munkey"],
            "plain_acc": acc["plain"],
            "train_s": {"munkey_backbone": backbone_s, "munkey_memory": memory_s, "plain": plain_s},
        }
        return rows, proofs, tuning, meta


def posthoc(plain, task, forget, retain, name: str, plan: Plan, seed: int):
    """``plain`` unlearned by the post-hoc algorithm ``name`` (a copy); (None, nan) when it is unavailable."""
    try:
        from zkapex_flwr import posthoc as ph
    except ImportError:
        return None, math.nan
    from zkapex_flwr.models import clone_model

    model = clone_model(plain)
    t = time.perf_counter()
    ph.unlearn(
        model,
        task,
        forget,
        retain,
        name,
        steps=plan.posthoc_steps,
        lr=plan.posthoc_lr,
        batch_size=plan.batch_size,
        seed=seed,
    )
    model.eval()
    return model, time.perf_counter() - t


def prove(munkey, ids, request_id: str) -> dict:
    """Commit the pre-deletion memory, prove deleting ``ids``, verify: costs per deleted instance."""
    from zkapex_flwr.munkey.commitment import commit_memory
    from zkapex_flwr.munkey.deletion import DeletionBinding, prove_deletion, verify_deletion

    memory = munkey.memory
    t = time.perf_counter()
    state = commit_memory(memory)
    commit_s = time.perf_counter() - t
    binding = DeletionBinding.for_node(request_id, "bench-nonce", 1)
    t = time.perf_counter()
    proof, new_state = prove_deletion(state, ids.tolist(), binding)
    blob = proof.to_bytes()
    prove_s = time.perf_counter() - t
    t = time.perf_counter()
    verdict = verify_deletion(state.commitment, proof.new, blob, ids.tolist(), binding)
    verify_s = time.perf_counter() - t
    after = munkey.copy()
    after.memory.delete(ids)
    k = len(ids)
    return {
        "memory_rows": len(memory),
        "verdict": verdict.reason,
        "new_state_matches_memory": new_state.mismatches(after.memory) == [],
        "commit_ms": commit_s * 1e3,
        "prove_ms": prove_s * 1e3,
        "verify_ms": verify_s * 1e3,
        "proof_bytes": len(blob),
        "prove_ms_per_deleted": prove_s * 1e3 / k,
        "verify_ms_per_deleted": verify_s * 1e3 / k,
        "proof_bytes_per_deleted": len(blob) / k,
    }


def aggregate(runs):
    """Mean and std per request × method (``<metric>_mean``, ``<metric>_std``) and the run count."""
    agg = runs.groupby(["request", "method"], sort=False)[list(METRICS)].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["runs"] = runs.groupby(["request", "method"], sort=False).size()
    return agg.reset_index()


def _number(value):
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def summarize(runs, proofs, metas: list[dict], plan: Plan, quick: bool, wall_s: float) -> dict:
    import numpy as np

    agg = aggregate(runs)

    def get(request, method, metric, stat="mean"):
        part = agg[(agg["request"] == request) & (agg["method"] == method)]
        return _number(part[f"{metric}_{stat}"].iloc[0]) if len(part) else None

    munkey_acc = np.array([m["munkey_acc"] for m in metas])
    plain_acc = np.array([m["plain_acc"] for m in metas])
    sd = lambda a: float(a.std(ddof=1)) if len(a) > 1 else None  # noqa: E731
    per_instance = {
        key: float(proofs[key].mean())
        for key in ("prove_ms_per_deleted", "verify_ms_per_deleted", "proof_bytes_per_deleted")
    }
    mia, mia_rebuild = get("samples", "munkey-delete", "mia_auc"), get("samples", "munkey-rebuild", "mia_auc")
    exact = bool(runs["exact_rebuild"].dropna().astype(bool).all())
    remaining = int(runs["deleted_ids_remaining"].dropna().sum())
    summary = {
        "quick": quick,
        "dataset": plan.dataset,
        "seeds": list(plan.seeds),
        # the headline numbers (means over seeds; *_std their spread)
        "mia_auc_forget": mia,
        "mia_auc_forget_std": get("samples", "munkey-delete", "mia_auc", "std"),
        "retrain_mia_auc_forget": mia_rebuild,
        "plain_retrain_mia_auc_forget": get("samples", "plain-retrain", "mia_auc"),
        "munkey_before_mia_auc_forget": get("samples", "munkey", "mia_auc"),
        "accuracy": float(munkey_acc.mean()),
        "accuracy_std": sd(munkey_acc),
        "plain_vit_accuracy": float(plain_acc.mean()),
        "plain_vit_accuracy_std": sd(plain_acc),
        "accuracy_after_delete": get("samples", "munkey-delete", "test_acc"),
        "backbone_only_accuracy": float(np.mean([m["backbone_only_acc"] for m in metas])),
        **per_instance,
        "proof_verdicts": sorted(set(proofs["verdict"])),
        "exact_rebuild": exact,
        "deleted_ids_remaining": remaining,
        "delete_ms": get("samples", "munkey-delete", "forget_s") * 1e3,
        "plain_retrain_s": get("samples", "plain-retrain", "forget_s"),
        "requests": {
            request: {
                method: {
                    **{m: get(request, method, m) for m in METRICS},
                    **{f"{m}_std": get(request, method, m, "std") for m in METRICS},
                    "runs": int(agg[(agg["request"] == request) & (agg["method"] == method)]["runs"].iloc[0]),
                }
                for method in dict.fromkeys(agg[agg["request"] == request]["method"])
            }
            for request in REQUESTS
        },
        "targets": {
            "mia_gap_to_rebuild": abs(mia - mia_rebuild),
            "mia_gap_to_plain_retrain": abs(mia - get("samples", "plain-retrain", "mia_auc")),
            "mia_ok": abs(mia - mia_rebuild) <= TARGETS["mia_gap"],
            "utility_gap": float(plain_acc.mean() - munkey_acc.mean()),
            "utility_ok": float(plain_acc.mean() - munkey_acc.mean()) <= TARGETS["utility_gap"],
            "proof_ms_per_deleted": per_instance["prove_ms_per_deleted"] + per_instance["verify_ms_per_deleted"],
            "proof_ok": per_instance["prove_ms_per_deleted"] + per_instance["verify_ms_per_deleted"]
            <= TARGETS["proof_ms_per_deleted"],
            "goals": TARGETS,
        },
        "plan": asdict(plan),
        "seeds_detail": metas,
        "wall_s": wall_s,
        "cpu_s": time.process_time(),  # this process's CPU seconds (the machine may be shared: wall_s ≥ cpu_s)
    }
    return summary


def plot_quality(agg, path: Path | None = None):
    """Test accuracy, forget accuracy and RMIA per method, one panel per request (bars, mean ± std)."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    keys = [
        ("test_acc", "test accuracy"),
        ("forget_acc", "forget-set accuracy"),
        ("mia_auc", "RMIA AUROC on the forget set"),
        ("mia_tpr_at_1pct_fpr", "RMIA TPR at 1 % FPR"),
    ]
    requests = [r for r in REQUESTS if r in set(agg["request"])]
    with paper_style():
        fig = Figure(figsize=(5.6 * len(requests), 3.8))
        axes = np.atleast_1d(fig.subplots(1, len(requests)))
        colours = matplotlib.colormaps["tab10"]
        for ax, request in zip(axes, requests):
            part = agg[agg["request"] == request]
            x = np.arange(len(part))
            width = 0.8 / len(keys)
            for j, (key, label) in enumerate(keys):
                ax.bar(
                    x + (j - 1.5) * width,
                    part[f"{key}_mean"].astype(float),
                    width,
                    yerr=part[f"{key}_std"].astype(float).fillna(0),
                    capsize=1.5,
                    error_kw={"elinewidth": 0.7},
                    color=colours(j),
                    label=label,
                )
            ax.set_xticks(x, part["method"], rotation=30, ha="right")
            ax.set_ylim(0, 1.15)
            ax.grid(axis="y")
            ax.set_xlabel("method")
            ax.set_ylabel("value (fraction)")
            ax.set_title(f"request '{request}' ({int(part['runs'].max())} seeds, mean ± std)")
        axes[0].legend(loc="upper left", ncol=2)
        if path is not None:
            save_figure(fig, path)
    return fig


def plot_forget_time(agg, path: Path | None = None):
    """Seconds to forget per method and request (log scale; bars)."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    part = agg[~agg["method"].isin(["munkey", "plain"])]
    methods = list(dict.fromkeys(part["method"]))
    requests = [r for r in REQUESTS if r in set(part["request"])]
    with paper_style():
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.subplots()
        width = 0.8 / max(1, len(requests))
        for j, request in enumerate(requests):
            sub = part[part["request"] == request].set_index("method").reindex(methods)
            ax.bar(
                np.arange(len(methods)) + (j - (len(requests) - 1) / 2) * width,
                sub["forget_s_mean"].astype(float).clip(lower=1e-6),
                width,
                color=matplotlib.colormaps["tab10"](j),
                label=f"request '{request}'",
            )
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right")
        ax.set_xlabel("method")
        ax.set_ylabel("time to forget (s, log scale)")
        ax.set_title("Time to forget (one CPU core; key deletion vs retraining vs post-hoc)")
        ax.grid(axis="y")
        ax.legend()
        if path is not None:
            save_figure(fig, path)
    return fig


def plot_tuning(tuning, path: Path | None = None):
    """Held-out base-pool accuracy against λ at the best (k, τ) of each seed: how the retrieval was chosen."""
    import matplotlib
    from matplotlib.figure import Figure

    with paper_style():
        fig = Figure(figsize=(5.2, 3.4))
        ax = fig.subplots()
        for j, (seed, part) in enumerate(tuning.groupby("seed")):
            best = part.sort_values(["accuracy", "loss"], ascending=[False, True]).iloc[0]
            line = part[(part["k"] == best["k"]) & (part["temperature"] == best["temperature"])].sort_values("lam")
            ax.plot(
                line["lam"],
                line["accuracy"],
                marker="o",
                color=matplotlib.colormaps["tab10"](j),
                label=f"seed {seed}: k={int(best['k'])}, τ={best['temperature']}",
            )
        ax.set_xlabel("memory weight λ (logit units)")
        ax.set_ylabel("held-out base-pool accuracy (fraction)")
        ax.set_title("Retrieval tuned on base-pool data only (λ = 0: backbone alone)")
        ax.grid(True)
        ax.legend()
        if path is not None:
            save_figure(fig, path)
    return fig


def _pm(mean, std, digits=3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_report(out: Path, summary: dict) -> Path:
    t = summary["targets"]
    lines = [
        "# MUNKEY: forgetting by key deletion",
        "",
        f"Dataset `{summary['dataset']}`, seeds {summary['seeds']} (mean ± std over seeds), one CPU core; "
        f"wall time {summary['wall_s']:.0f} s ({summary.get('cpu_s', float('nan')):.0f} s of CPU). Produced by `benchmarks/munkey.py`"
        + (" in `--quick` mode (a smoke test: tiny models, one seed)." if summary["quick"] else "."),
        "",
        "## Headline",
        "",
        "| quantity | value | goal | met |",
        "|---|---|---|---|",
        f"| RMIA AUROC on the forget set after key deletion | {_pm(summary['mia_auc_forget'], summary['mia_auc_forget_std'])} | "
        f"within {TARGETS['mia_gap']} of retrain's | {'yes' if t['mia_ok'] else 'no'} |",
        f"| … MUNKEY retrain (memory rebuilt without them) | {summary['retrain_mia_auc_forget']:.3f} | | |",
        f"| … plain ViT retrained without them (conventional reference) | {summary['plain_retrain_mia_auc_forget']:.3f} | "
        f"| gap {t['mia_gap_to_plain_retrain']:.3f} |",
        f"| … MUNKEY before deletion | {summary['munkey_before_mia_auc_forget']:.3f} | | |",
        f"| test accuracy, MUNKEY | {_pm(summary['accuracy'], summary['accuracy_std'], 4)} | within 1 point of the plain ViT | "
        f"{'yes' if t['utility_ok'] else 'no'} (gap {100 * t['utility_gap']:+.2f} points) |",
        f"| test accuracy, plain ViT (equal training steps) | {_pm(summary['plain_vit_accuracy'], summary['plain_vit_accuracy_std'], 4)} | | |",
        f"| test accuracy, MUNKEY backbone alone (λ = 0) | {summary['backbone_only_accuracy']:.4f} | | |",
        f"| prove + verify per deleted instance | {summary['prove_ms_per_deleted']:.4f} + {summary['verify_ms_per_deleted']:.4f} ms | "
        f"≤ {TARGETS['proof_ms_per_deleted']:.0f} ms | {'yes' if t['proof_ok'] else 'no'} |",
        f"| proof bytes per deleted instance | {summary['proof_bytes_per_deleted']:.0f} B | | |",
        f"| key deletion vs plain retrain (samples request) | {summary['delete_ms']:.3f} ms vs {summary['plain_retrain_s']:.1f} s | | |",
        f"| deletion == rebuild without them, bit for bit (every seed and request) | {summary['exact_rebuild']} | | |",
        f"| deleted ids left in the memory | {summary['deleted_ids_remaining']} | 0 | |",
        "",
    ]
    for request, methods in summary["requests"].items():
        lines += [
            f"## Request `{request}`",
            "",
            "| method | test acc | forget acc | RMIA AUROC | TPR @ 1 % FPR | time to forget (s) |",
            "|---|---|---|---|---|---|",
        ]
        for method, r in methods.items():
            lines.append(
                f"| {method} | {_pm(r['test_acc'], r['test_acc_std'])} | {_pm(r['forget_acc'], r['forget_acc_std'])} | "
                f"{_pm(r['mia_auc'], r['mia_auc_std'])} | {_pm(r['mia_tpr_at_1pct_fpr'], r['mia_tpr_at_1pct_fpr_std'])} | "
                f"{_pm(r['forget_s'], r['forget_s_std'], 4)} |"
            )
        lines.append("")
    lines += [
        "Methods: `munkey` before deletion; `munkey-delete` its keys deleted; `munkey-rebuild` the memory built "
        "without them from the original data (MUNKEY's retrain; its time is the re-encoding); `plain` the ViT trained "
        "on all training data with the same number of steps; `plain-retrain` retrained from scratch without them "
        "(same steps); `plain-<algorithm>` post-hoc unlearning (`zkapex_flwr.posthoc`, "
        f"{summary['plan']['posthoc_steps']} steps, lr {summary['plan']['posthoc_lr']}). MUNKEY rows are scored "
        "with a MUNKEY reference (another backbone seed, memory without the forget set), plain rows with a plain one.",
        "",
        "Plots: `munkey.png` (accuracy and RMIA per method), `forget_time.png`, `tuning.png`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run(out: Path, quick: bool = False, plan: Plan | None = None) -> dict:
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan or (QUICK if quick else FULL)
    bench = Bench(plan)
    rows, proofs, tuning, metas = [], [], [], []
    with bench.progress:
        for seed in plan.seeds:
            r, p, tu, meta = bench.seed_run(seed)
            rows += r
            proofs += p
            tuning += tu
            metas.append(meta)
    runs, proofs, tuning = pd.DataFrame(rows), pd.DataFrame(proofs), pd.DataFrame(tuning)
    runs.to_csv(out / "munkey_runs.csv", index=False)
    agg = aggregate(runs)
    agg.to_csv(out / "munkey.csv", index=False)
    proofs.to_csv(out / "proofs.csv", index=False)
    tuning.to_csv(out / "tuning.csv", index=False)
    plot_quality(agg, out / "munkey.png")
    plot_forget_time(agg, out / "forget_time.png")
    plot_tuning(tuning, out / "tuning.png")
    summary = summarize(runs, proofs, metas, plan, quick, time.perf_counter() - bench.t0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "machine.json").write_text(json.dumps(describe_machine(), indent=2))
    write_report(out, summary)
    bench.console.print((out / "report.md").read_text())
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/results/munkey")
    parser.add_argument("--quick", action="store_true", help="tiny models on 8×8 digits, one seed (CI smoke test)")
    args = parser.parse_args(argv)
    run(Path(args.out), args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
