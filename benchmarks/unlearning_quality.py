"""Unlearning quality: the verified update beside its baselines, in settings where retraining forgets.

    python -m benchmarks.unlearning_quality --out docs/results/quality [--quick]
    zkapex bench quality --out docs/results/quality [--quick]

Every method of a run is measured on the same data, with the same reference models (docs/protocol.md §6).
The proof-cost step runs first, alone on the machine; then the headline runs the image settings and the
LM setting side by side, in two processes on one torch thread each (``Plan.side``):

1. **Headline** (seeds × clients per setting): every method in every run — ``verified`` (the shipped
   default), ``zk-apex-paper`` (the paper's scope, 4 % mask, damping 0.01), ``mask-only``,
   ``mask-finetune``, ``retrain`` (from scratch without D_f, then re-personalized), ``no-op`` and, for
   class requests, ``head-row``. Settings where retrain forgets:
   ``vit-mnist-class-federation`` (a class request that covers the federation: clients drop their own
   samples of the class too), ``vit-mnist-samples`` (random samples of the provider's pool: membership
   is what must go) and ``opt-stdlib-code-package-federation``. ``vit-mnist-class`` (the client keeps
   its own samples of the class, so retrain does not forget) is the secondary row.
2. **Frontier**: on one seed and client per setting, the verified update over mask fraction × damping,
   with every baseline's point: forget metric against recovery.
3. **Proof cost of the same masks** (measured first): one client's verified mask and the paper's mask, both under the
   same block budget at d=16, proven with the real EZKL circuit and verified — prove ms per masked
   weight for each, and verification time against retraining to check.

Outputs in ``--out``: ``quality_runs.csv`` (one row per setting × seed × client × method),
``quality.csv`` (mean ± std), ``quality.png``, ``frontier.csv`` / ``frontier.png``, ``proof_cost.csv``,
``summary.json`` (``headline``: setting → method → metrics; ``targets``), ``report.md``, ``machine.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from zkapex_flwr.figures import DPI, paper_style
from zkapex_flwr.machine import describe_machine

VERIFIED = "verified"
METHODS = (VERIFIED, "zk-apex-paper", "mask-only", "mask-finetune", "retrain", "no-op", "head-row")
METRICS = (
    "personalization_acc_before",
    "personalization_acc_after",
    "recovery",
    "forget_acc_before",
    "forget_acc_after",
    "mia_auc_after",
    "mia_tpr_at_1pct_fpr_after",
    "loss_mia_auc_after",
    "client_s",
)
# The targets each headline setting is judged by (means over seeds × clients).
TARGETS = {
    "vit-mnist-class-federation": {"forget_gap": 0.05, "recovery": 0.98},
    "vit-mnist-samples": {"mia_gap": 0.03, "recovery": 0.98},
    "opt-stdlib-code-package-federation": {"forget_gap": 0.02, "recovery": 0.90},
}
# The paper's figures (arXiv 2512.09953), shown beside ours.
PAPER = {
    "vit": {"recovery": "≈ 0.99"},
    "opt": {"recovery": "≈ 0.70"},
    "verify_vs_retrain": "> 10^7 × (ViT-B, ≈ 1.1 M masked weights)",
}


@dataclass(frozen=True)
class Setting:
    """One model × dataset × deletion request, and the clients and seeds it is measured on."""

    name: str
    model: str
    dataset: str
    overrides: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    clients: tuple[int, ...] = (0, 1, 2)
    headline: bool = True  # False: a secondary, explained row


@dataclass(frozen=True)
class Plan:
    """What one benchmark run measures."""

    settings: tuple[Setting, ...]
    frontier: dict[str, list]  # LocalConfig field -> values, crossed (verified method only)
    proof: dict | None  # overrides of the proof-cost point (block budget and mask size at d=16)
    # extra overrides per setting whose proof cost is measured too (the first setting always is); a model
    # narrower than the headline's keeps registration (one commitment per scope weight at G = 1) in minutes
    proof_models: dict[str, dict] = field(default_factory=dict)
    # settings whose headline runs in a second process, beside the others (each process on one torch
    # thread: the small models gain little from a second thread, so two processes nearly halve the wall time)
    side: tuple[str, ...] = ()


MNIST = dict(num_clients=3, mia_references=1)
TUNING_SEED = 0  # the lab chose the verified default on seed 0 (docs/research/forgetting.md); summary["held_out"]
FULL = Plan(
    settings=(
        Setting("vit-mnist-class-federation", "vit", "mnist", dict(MNIST, client_keeps_forget=False)),
        # membership must be there to be removed: the provider trains longer and without augmentation, D_f is
        # 5 % of its pool; the client personalizes with augmentation (its own data, no D_f in it)
        Setting(
            "vit-mnist-samples",
            "vit",
            "mnist",
            dict(
                MNIST,
                forget_mode="samples",
                forget_count=100,
                augment=False,
                personal_augment=True,
                global_epochs=50,
            ),
        ),
        Setting(
            "opt-stdlib-code-package-federation",
            "opt",
            "stdlib-code",
            dict(client_keeps_forget=False, num_clients=3, max_client_seqs=500, mia_references=1),
        ),
        Setting("vit-mnist-class", "vit", "mnist", dict(MNIST, client_keeps_forget=True), seeds=(0,), headline=False),
    ),
    frontier={"mask_fraction": [0.04, 0.16, 0.24], "damping": [0.1, 1.0, 10.0]},
    proof=dict(block_size=16, max_blocks=48, slots=8, mask_fraction=0.02),
    proof_models={"opt-stdlib-code-package-federation": dict(model_kwargs=dict(hidden=32, layers=2, ffn=128, heads=2))},
    side=("opt-stdlib-code-package-federation",),
)
TINY_VIT = dict(
    backbone="none",  # a random init: pretraining a backbone would cost the quick run its 2-minute budget
    num_clients=2,
    global_epochs=4,
    personal_epochs=3,
    mia_references=1,
    model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=2),
)
QUICK = Plan(
    settings=(
        Setting(
            "vit-digits-class-federation",
            "vit",
            "digits",
            dict(TINY_VIT, client_keeps_forget=False),
            seeds=(0,),
            clients=(0,),
        ),
        Setting("vit-digits-samples", "vit", "digits", dict(TINY_VIT, forget_mode="samples"), seeds=(0,), clients=(0,)),
        Setting(
            "opt-stdlib-code-package-federation",
            "opt",
            "stdlib-code",
            dict(
                client_keeps_forget=False,
                max_provider_seqs=200,
                max_client_seqs=100,
                global_epochs=1,
                personal_epochs=1,
                batch_size=32,  # half the preset's steps: the quick run's 2-minute budget
                num_grads=32,
                mia_references=1,
                model_kwargs=dict(hidden=32, layers=1, ffn=64, heads=2),
            ),
            seeds=(0,),
            clients=(0,),
        ),
    ),
    frontier={"mask_fraction": [0.04, 0.16], "damping": [1.0]},
    proof=dict(block_size=16, max_blocks=8, slots=8, mask_fraction=0.02),
    proof_models={"opt-stdlib-code-package-federation": {}},  # the quick LM is already small
    side=("opt-stdlib-code-package-federation",),
)


def _cfg(setting: Setting, seed: int, client: int, **extra):
    from zkapex_flwr.pipeline import preset

    return preset(setting.model, setting.dataset, seed=seed, client_id=client, **{**setting.overrides, **extra})


def _rows(result: dict, setting: Setting, include_baselines: bool = True, **extra) -> list[dict]:
    cfg = result["config"]
    common = {
        "setting": setting.name,
        "model": setting.model,
        "dataset": setting.dataset,
        "seed": cfg["seed"],
        "client": cfg["client_id"],
        **extra,
    }
    own = {
        "masked_weights": result["masked_weights"],
        "touched_blocks": result["touched_blocks"],
        "mask_fraction": result.get("mask_fraction", cfg["mask_fraction"]),  # the sized fraction, where sized
        "damping": cfg["damping"],
    }
    rows = [{**common, "method": VERIFIED, **own, **{k: result[k] for k in METRICS}}]
    if include_baselines:
        rows += [
            {**common, "method": name, **{k: row[k] for k in METRICS}} for name, row in result["baselines"].items()
        ]
    return rows


class Bench:
    """Runs the plan, logging one line per finished run (long work shows progress)."""

    def __init__(self, plan: Plan):
        from rich.console import Console

        from zkapex_flwr.pipeline import RunCache

        self.plan = plan
        self.console = Console(stderr=True)
        self.quiet = Console(stderr=True, quiet=True)
        self.cache = RunCache()
        self.t0 = time.perf_counter()
        self.runs = 0

    def run(self, cfg) -> dict:
        from zkapex_flwr.pipeline import run_local

        t = time.perf_counter()
        result = run_local(cfg, console=self.quiet, cache=self.cache)
        self.runs += 1
        extra = (
            f", proof {result['proof']['verdict']} in {result['proof']['prove_s']:.0f} s" if "proof" in result else ""
        )
        base = result["baselines"].get("retrain")
        retrain = f" (retrain {base['forget_acc_after']:.3f}, RMIA {base['mia_auc_after']:.3f})" if base else ""
        self.console.log(
            f"[{self.runs}] {cfg.model}/{cfg.dataset} {cfg.forget_mode} seed {cfg.seed} client "
            f"{cfg.client_id} f={result['mask_fraction']:.2f}{' (sized)' if 'mask_sizing' in result else ''} "
            f"λ={cfg.damping}: recovery {result['recovery']:.3f}, "
            f"forget {result['forget_acc_before']:.3f}→{result['forget_acc_after']:.3f}, RMIA "
            f"{result['mia_auc_before']:.3f}→{result['mia_auc_after']:.3f}{retrain}{extra} "
            f"({time.perf_counter() - t:.0f} s; {time.perf_counter() - self.t0:.0f} s total)"
        )
        return result

    def headline(self, settings=None):
        """Every method on every seed × client of each setting, and the frontier on the first run of each.

        Seeds are the outer loop so that settings on the same provider data (the federation-wide and the
        client-keeps class requests) share θg, the retrained θg and the reference models of a seed.
        """
        import itertools

        import pandas as pd

        settings = settings or self.plan.settings
        rows, frontier = [], []
        for seed in sorted({s for setting in settings for s in setting.seeds}):
            for setting in (s for s in settings if seed in s.seeds):
                for client in setting.clients:
                    cfg = _cfg(setting, seed, client)
                    result = self.run(cfg)
                    rows += _rows(result, setting)
                    if seed == setting.seeds[0] and client == setting.clients[0]:
                        frontier += _rows(result, setting, point="default")
                        grid = self.plan.frontier
                        for values in itertools.product(*grid.values()):
                            point = dict(zip(grid, values))
                            frontier += _rows(
                                # a frontier point fixes the fraction: no per-request sizing there
                                self.run(replace(cfg, **point, baselines=(), mask_sizing="fixed")),
                                setting,
                                False,
                                point="|".join(f"{k}={v}" for k, v in point.items()),
                            )
            self.cache.clear()  # one seed's models at a time
        return with_gap(pd.DataFrame(rows)), with_gap(pd.DataFrame(frontier))

    def headline_split(self):
        """:meth:`headline` with the plan's ``side`` settings in a second process, both on one torch thread.

        The two halves see the same plan and the same seeds; their rows are put back in plan order.
        """
        import torch

        side = tuple(s for s in self.plan.settings if s.name in self.plan.side)
        main = tuple(s for s in self.plan.settings if s not in side)
        if not side or not main:
            return self.headline()
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import pandas as pd

        context = multiprocessing.get_context("spawn")  # a clean interpreter: no forked torch thread pool
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            future = pool.submit(_side_headline, self.plan, tuple(s.name for s in side))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                runs, frontier = self.headline(main)
            finally:
                torch.set_num_threads(threads)
            side_runs, side_frontier, side_count = future.result()
        self.runs += side_count
        order = {s.name: i for i, s in enumerate(self.plan.settings)}

        def merged(a, b):
            both = pd.concat([a, b], ignore_index=True)
            return both.sort_values("setting", key=lambda col: col.map(order), kind="stable").reset_index(drop=True)

        return merged(runs, side_runs), merged(frontier, side_frontier)

    def proof_cost(self):
        """The verified and the paper's masks of one client, under the same block budget, proven and verified.

        Run before the headline, alone on the machine (its timings are the ones quoted). The first
        setting is measured last and its models stay cached: the headline's first seed reuses its θg,
        θp, retrained model and reference models instead of training them again.
        """
        import pandas as pd

        rows = []
        first = self.plan.settings[0]
        measured = [
            (s, self.plan.proof_models[s.name])
            for s in self.plan.settings
            if s.name in self.plan.proof_models and s is not first
        ] + [(first, {})]
        for setting, model in measured:
            base = _cfg(
                setting,
                setting.seeds[0],
                setting.clients[0],
                **self.plan.proof,
                **model,
                prove=True,
                baselines=("retrain",),
            )
            part = self._proof_rows(setting, base, model_kwargs=model.get("model_kwargs"))
            if setting is first:
                rows = part + rows  # reported first; its models stay cached for the headline
            else:
                rows += part
                self.cache.clear()
        frame = pd.DataFrame(rows)
        frame["verify_vs_retrain"] = frame["retrain_s"] / (frame["verify_ms"] / 1000)
        return frame

    def _proof_rows(self, setting: Setting, base, model_kwargs) -> list[dict]:
        from zkapex_flwr.pipeline import PAPER as PAPER_METHOD

        rows = []
        # the same budget and mask size for both: they differ in scope, saliency target and damping only
        paper = {k: v for k, v in PAPER_METHOD.items() if k != "mask_fraction"}
        for method, over in ((VERIFIED, {}), ("zk-apex-paper", paper)):
            r = self.run(replace(base, **over))
            p = r["proof"]
            rows.append(
                {
                    "method": method,
                    "setting": setting.name,
                    "scope": r["config"]["scope"],
                    "model": json.dumps(model_kwargs) if model_kwargs else "headline",
                    "masked_weights": r["masked_weights"],
                    "touched_blocks": r["touched_blocks"],
                    "recovery": r["recovery"],
                    "forget_acc_after": r["forget_acc_after"],
                    "retrain_s": r["baselines"]["retrain"]["client_s"],
                    **{
                        k: p[k]
                        for k in (
                            "verdict",
                            "proofs",
                            "steps",
                            "prove_s",
                            "verify_ms",
                            "bundle_bytes",
                            "register_s",
                            "peak_rss_mb",
                            "prove_ms_per_masked_weight",
                            "proof_bytes_per_masked_weight",
                        )
                    },
                }
            )
        return rows


def _side_headline(plan: Plan, names: tuple[str, ...]):
    """The headline of the named settings, in a worker process on one torch thread (see Bench.headline_split)."""
    import torch

    torch.set_num_threads(1)
    bench = Bench(plan)
    runs, frontier = bench.headline(tuple(s for s in plan.settings if s.name in names))
    return runs, frontier, bench.runs


def with_gap(runs):
    """Add ``forget_gap_to_retrain`` and ``mia_gap_to_retrain`` (each run against its own retrain row)."""
    if runs.empty:
        return runs
    key = ["setting", "seed", "client"]
    retrain = runs[runs["method"] == "retrain"].set_index(key)
    idx = runs.set_index(key).index
    for col, gap in (
        ("forget_acc_after", "forget_gap_to_retrain"),
        ("mia_auc_after", "mia_gap_to_retrain"),
        ("mia_tpr_at_1pct_fpr_after", "tpr_gap_to_retrain"),
    ):
        runs[gap] = runs[col].to_numpy() - idx.map(retrain[col]).to_numpy()
    return runs


def aggregate(runs):
    """Mean and std per setting × method (columns ``<metric>_mean``, ``<metric>_std``) and the run count."""
    cols = list(METRICS) + ["forget_gap_to_retrain", "mia_gap_to_retrain", "tpr_gap_to_retrain"]
    agg = runs.groupby(["setting", "method"], sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["runs"] = runs.groupby(["setting", "method"], sort=False).size()
    return agg.reset_index()


def headline_json(agg) -> dict:
    """``{setting: {"methods": {method: {...}}}}``: the machine-readable headline of ``summary.json``."""
    out: dict = {}
    for _, r in agg.iterrows():
        m = out.setdefault(r["setting"], {"methods": {}})["methods"]
        m[r["method"]] = {
            "recovery": r["recovery_mean"],
            "recovery_std": r["recovery_std"],
            "personalization_acc_before": r["personalization_acc_before_mean"],
            "personalization_acc_after": r["personalization_acc_after_mean"],
            "forget_acc_before": r["forget_acc_before_mean"],
            "forget_acc_after": r["forget_acc_after_mean"],
            "forget_acc_after_std": r["forget_acc_after_std"],
            "forget_gap_to_retrain": r["forget_gap_to_retrain_mean"],
            "mia_auc": r["mia_auc_after_mean"],
            "mia_auc_std": r["mia_auc_after_std"],
            "mia_tpr_at_1pct_fpr": r["mia_tpr_at_1pct_fpr_after_mean"],
            "mia_gap_to_retrain": r["mia_gap_to_retrain_mean"],
            "tpr_gap_to_retrain": r["tpr_gap_to_retrain_mean"],
            "loss_mia_auc": r["loss_mia_auc_after_mean"],
            "client_s": r["client_s_mean"],
            "runs": int(r["runs"]),
        }
    return {
        setting: {"methods": {m: {k: _number(v) for k, v in row.items()} for m, row in part["methods"].items()}}
        for setting, part in out.items()
    }


def held_out(runs) -> dict:
    """The targets again on the runs of every seed but :data:`TUNING_SEED`, the seed the verified default
    was chosen on (docs/research/forgetting.md): numbers no tuning decision has seen."""
    held = runs[runs["seed"] != TUNING_SEED] if not runs.empty else runs
    if held.empty:
        return {"excluded_seed": TUNING_SEED, "runs": {}, "targets": {}}
    runs_per_setting = held.groupby("setting").apply(
        lambda g: g.groupby(["seed", "client"]).ngroups, include_groups=False
    )
    return {
        "excluded_seed": TUNING_SEED,
        "runs": {k: int(v) for k, v in runs_per_setting.items()},  # seed × client runs per setting
        "targets": targets(headline_json(aggregate(held))),
    }


def _number(value):
    """A JSON-ready number: a plain float or int, ``None`` for NaN (a std over a single run)."""
    if isinstance(value, int):
        return value
    value = float(value)
    return None if value != value else value


def targets(headline: dict) -> dict:
    """Where each headline setting's target stands for the verified method."""
    out = {}
    for setting, goal in TARGETS.items():
        methods = headline.get(setting, {}).get("methods", {})
        v, retrain, noop = methods.get(VERIFIED), methods.get("retrain"), methods.get("no-op")
        if v is None:
            continue
        row = {
            "recovery": v["recovery"],
            "recovery_target": goal["recovery"],
            "recovery_ok": v["recovery"] >= goal["recovery"],
        }
        if "forget_gap" in goal:
            row.update(
                forget_gap_to_retrain=v["forget_gap_to_retrain"],
                forget_gap_target=goal["forget_gap"],
                forget_ok=abs(v["forget_gap_to_retrain"]) <= goal["forget_gap"],
            )
        if "mia_gap" in goal:
            row.update(
                mia_gap_to_retrain=v["mia_gap_to_retrain"],
                tpr_gap_to_retrain=v["tpr_gap_to_retrain"],
                mia_gap_target=goal["mia_gap"],
                mia_ok=abs(v["mia_gap_to_retrain"]) <= goal["mia_gap"]
                and abs(v["tpr_gap_to_retrain"]) <= goal["mia_gap"],
            )
            if noop and retrain:  # the attack's sanity row: no-op must sit clearly above retrain
                row.update(
                    sanity_noop_mia_auc=noop["mia_auc"],
                    sanity_retrain_mia_auc=retrain["mia_auc"],
                    sanity_noop_tpr=noop["mia_tpr_at_1pct_fpr"],
                    sanity_retrain_tpr=retrain["mia_tpr_at_1pct_fpr"],
                )
        out[setting] = row
    return out


def run(out: Path, quick: bool = False) -> dict:
    from rich.console import Console

    out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if quick else FULL
    bench = Bench(plan)
    proof = bench.proof_cost() if plan.proof else None  # first, alone on the machine
    runs, frontier = bench.headline_split()
    agg = save_headline(runs, out)
    frontier.to_csv(out / "frontier.csv", index=False)
    plot_frontier(frontier, out / "frontier.png")
    if proof is not None:
        proof.to_csv(out / "proof_cost.csv", index=False)
    headline = headline_json(agg)
    summary = {
        "quick": quick,
        "headline": headline,
        "targets": targets(headline),
        "held_out": held_out(runs),
        "paper": PAPER,
        "proof_cost": json.loads(proof.to_json(orient="records")) if proof is not None else None,
        "wall_s": time.perf_counter() - bench.t0,
        "runs": bench.runs,
        "settings": {
            s.name: {
                "seeds": list(s.seeds),
                "clients": list(s.clients),
                "headline": s.headline,
                "overrides": s.overrides,
            }
            for s in plan.settings
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "machine.json").write_text(json.dumps(describe_machine(), indent=2))
    write_report(out)
    print_tables(Console(), agg, summary["targets"])
    return summary


def save_headline(runs, folder: Path):
    """Write ``quality_runs.csv``, ``quality.csv`` (mean ± std) and ``quality.png`` into ``folder``; return the means."""
    runs.to_csv(folder / "quality_runs.csv", index=False)
    agg = aggregate(runs)
    agg.to_csv(folder / "quality.csv", index=False)
    plot_quality(agg, folder / "quality.png")
    return agg


def write_report(out: Path) -> Path:
    """``report.md``: the markdown tables the docs quote, made from the CSVs in ``out`` (re-runnable)."""
    import pandas as pd

    agg = pd.read_csv(out / "quality.csv")
    summary = json.loads((out / "summary.json").read_text())
    lines = [
        f"# Unlearning quality ({'quick' if summary['quick'] else 'full'} run, {summary['runs']} runs, "
        f"{summary['wall_s'] / 60:.1f} min)",
        "",
        "Mean ± std over seeds × clients. Forget accuracy and RMIA are on D_f (lower is more forgotten); "
        "the target is retrain's value, not 0 or 0.5.",
        "",
    ]
    for setting, part in agg.groupby("setting", sort=False):
        secondary = not summary["settings"].get(setting, {}).get("headline", True)
        lines += [
            f"## {setting}{' (secondary)' if secondary else ''} ({int(part['runs'].max())} runs per method)",
            "",
            "| method | pers. acc before → after | recovery | forget acc after | gap to retrain | RMIA AUC | "
            "TPR @ 1 % FPR | loss-MIA AUC | client s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in part.iterrows():
            lines.append(
                f"| {r['method']} | {_pm(r, 'personalization_acc_before')} → "
                f"{_pm(r, 'personalization_acc_after')} | {_pm(r, 'recovery')} | "
                f"{_pm(r, 'forget_acc_after')} | {_pm(r, 'forget_gap_to_retrain')} | {_pm(r, 'mia_auc_after')} | "
                f"{_pm(r, 'mia_tpr_at_1pct_fpr_after')} | {_pm(r, 'loss_mia_auc_after')} | "
                f"{r['client_s_mean']:.1f} |"
            )
        lines.append("")
    lines += ["## Targets (verified method)", "", "```json", json.dumps(summary["targets"], indent=1), "```", ""]
    held = summary.get("held_out", {})
    if held.get("targets"):
        lines += [
            f"## Targets on held-out seeds (every seed but {held['excluded_seed']}, the tuning seed)",
            "",
            "```json",
            json.dumps(held["targets"], indent=1),
            "```",
            "",
        ]
    if summary.get("proof_cost"):
        lines += [
            "## Proof cost of the same budget (d=16), real EZKL prover and verifier",
            "",
            "| setting (model) | method | masked weights | touched blocks | proofs | prove s | ms / masked weight | "
            "verify s | bundle KB | verdict | verify vs retrain |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in summary["proof_cost"]:
            model = p.get("model", "headline")
            lines.append(
                f"| {p['setting']} ({model}) | {p['method']} | {p['masked_weights']} | {p['touched_blocks']} | "
                f"{p['proofs']} | "
                f"{p['prove_s']:.0f} | {p['prove_ms_per_masked_weight']:.1f} | {p['verify_ms'] / 1000:.2f} | "
                f"{p['bundle_bytes'] / 1000:.0f} | {p['verdict']} | {p['verify_vs_retrain']:.0f}× |"
            )
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def print_tables(console, agg, targets: dict | None = None) -> None:
    from rich.table import Table

    for setting, part in agg.groupby("setting", sort=False):
        table = Table(title=f"{setting} (mean ± std over {int(part['runs'].max())} seed × client runs)")
        table.add_column("method")
        cols = (
            "personalization_acc_after",
            "recovery",
            "forget_acc_after",
            "forget_gap_to_retrain",
            "mia_auc_after",
            "mia_tpr_at_1pct_fpr_after",
        )
        for col in ("pers acc after", "recovery", "forget acc", "gap to retrain", "RMIA AUC", "TPR@1%"):
            table.add_column(col, justify="right")
        for _, r in part.iterrows():
            table.add_row(r["method"], *(_pm(r, c) for c in cols))
        console.print(table)
    if targets:
        console.print(json.dumps(targets, indent=1))


def _pm(row, col: str) -> str:
    mean, std = row[f"{col}_mean"], row[f"{col}_std"]
    if mean != mean:
        return "–"
    return f"{mean:.3f}" if std != std else f"{mean:.3f}±{std:.3f}"  # std is NaN for a single run


def plot_quality(agg, path: Path | None = None):
    """Mean ± std of recovery, forget accuracy and RMIA per method (categorical x: bars, no lines), one
    panel per setting in a two-column grid. Writes ``path`` when given; returns the Figure."""
    import matplotlib
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(agg["setting"]))
    keys = [
        ("recovery", "recovery (pers. acc after ÷ before, ratio)"),
        ("forget_acc_after", "forget accuracy on D_f"),
        ("mia_auc_after", "RMIA AUC on D_f"),
        ("mia_tpr_at_1pct_fpr_after", "RMIA TPR at 1 % FPR"),
    ]
    ncols = min(2, max(1, len(settings)))
    nrows = -(-max(1, len(settings)) // ncols)
    with paper_style():
        fig = Figure(figsize=(5.2 * ncols, 3.4 * nrows + 0.8))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        colours = matplotlib.colormaps["tab10"]
        for ax, setting in zip(axes, settings):
            part = agg[agg["setting"] == setting]
            width = 0.8 / len(keys)
            x = np.arange(len(part))
            for j, (key, label) in enumerate(keys):
                mean = part[f"{key}_mean"] if f"{key}_mean" in part else pd.Series(np.nan, index=part.index)
                std = part[f"{key}_std"] if f"{key}_std" in part else pd.Series(np.nan, index=part.index)
                ax.bar(
                    x + (j - 1.5) * width,
                    mean.astype(float),
                    width,
                    yerr=std.astype(float).fillna(0),
                    capsize=1.5,
                    error_kw={"elinewidth": 0.7},
                    color=colours(j),
                    label=label,
                )
            ax.set_xticks(x, part["method"], rotation=30, ha="right")
            ax.set_ylim(0, 1.15)
            ax.grid(axis="y")
            ax.set_xlabel("method")
            ax.set_ylabel("value (fraction; recovery: ratio)")
            ax.set_title(f"{setting} ({int(part['runs'].max())} runs, mean ± std)")
        for ax in axes[len(settings) :]:
            ax.set_axis_off()
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(keys), bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.6 / (3.4 * nrows + 0.8), 1, 1))
        if path is not None:
            fig.savefig(path, dpi=DPI)
    return fig


def plot_frontier(frontier, path: Path | None = None):
    """Forget metric against recovery, one panel per setting: the verified update's grid and every baseline
    as markers (no lines: the points are separate runs). Writes ``path`` when given; returns the Figure."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    settings = list(dict.fromkeys(frontier["setting"]))
    methods = list(dict.fromkeys(frontier.loc[frontier["method"] != VERIFIED, "method"]))
    colour = {m: matplotlib.colormaps["tab10"](i + 1) for i, m in enumerate(methods)}
    colour[VERIFIED] = matplotlib.colormaps["tab10"](0)
    ncols = min(2, max(1, len(settings)))
    nrows = -(-max(1, len(settings)) // ncols)
    with paper_style():
        fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows + 0.8))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, setting in zip(axes, settings):
            part = frontier[frontier["setting"] == setting]
            samples = "samples" in setting
            col, label = (
                ("mia_auc_after", "RMIA AUC on D_f (fraction)")
                if samples
                else ("forget_acc_after", "forget accuracy on D_f (fraction)")
            )
            grid = part[(part["method"] == VERIFIED) & (part["point"] != "default")]
            ax.scatter(grid[col], grid["recovery"], s=16, color=colour[VERIFIED], alpha=0.5, linewidths=0)
            for _, r in part[part["point"] == "default"].iterrows():
                ax.scatter(
                    r[col],
                    r["recovery"],
                    s=70 if r["method"] == VERIFIED else 40,
                    marker="*" if r["method"] == VERIFIED else "o",
                    color=colour[r["method"]],
                    edgecolors="black",
                    linewidths=0.4,
                    zorder=3,
                )
            ax.set_xlabel(f"{label}; retrain's value is the target")
            ax.set_ylabel("recovery (pers. acc after ÷ before, ratio)")
            ax.set_title(setting)
            ax.grid(True)
        for ax in axes[len(settings) :]:
            ax.set_axis_off()
        handles = [
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                markersize=4,
                color=colour[VERIFIED],
                alpha=0.5,
                label="verified: mask fraction × damping grid",
            ),
            Line2D(
                [],
                [],
                ls="",
                marker="*",
                markersize=9,
                color=colour[VERIFIED],
                markeredgecolor="black",
                markeredgewidth=0.4,
                label="verified (default)",
            ),
        ]
        handles += [
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                markersize=6,
                color=colour[m],
                markeredgecolor="black",
                markeredgewidth=0.4,
                label=m,
            )
            for m in methods
        ]
        fig.legend(handles=handles, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.75 / (3.6 * nrows + 0.8), 1, 1))
        if path is not None:
            fig.savefig(path, dpi=DPI)
    return fig


def replot(folder: Path) -> list[Path]:
    """Re-render ``quality.png`` and ``frontier.png`` from the ``quality.csv`` and ``frontier.csv`` in ``folder``."""
    import pandas as pd

    folder = Path(folder)
    plot_quality(pd.read_csv(folder / "quality.csv"), folder / "quality.png")
    plot_frontier(pd.read_csv(folder / "frontier.csv"), folder / "frontier.png")
    return [folder / "quality.png", folder / "frontier.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny models, one seed and client (CI smoke test)")
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from the CSVs in --out")
    args = parser.parse_args(argv)
    if args.report_only:
        print(write_report(Path(args.out)).read_text())
    else:
        run(Path(args.out), args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
