"""Unlearning quality: ZK-APEX beside its baselines over seeds and clients, the sweeps, and what checking costs.

    python -m benchmarks.unlearning_quality --out docs/results/quality [--quick]
    zkapex bench quality --out docs/results/quality [--quick]

Three parts, all measured in one process on the same data (PROTOCOL.md §6):

1. **Tuning** (seed ``TUNE_SEED``, never used in the headline table): the 1-D sweeps a researcher asks
   for — mask fraction, Fisher block size, number of per-sample gradients, damping — and a grid of mask
   fraction × damping. The "tuned" ZK-APEX is picked from that grid by a fixed rule: the smallest mean
   |forget accuracy − retrain's| among points whose mean recovery is at least ``RECOVERY_FLOOR``.
2. **Touched-block budget against proof cost**: recovery and forgetting per budget, and the real EZKL
   cost of proving one client's update under that budget (prove seconds and bundle bytes), verified by
   the real verifier. The same run times retraining (global without D_f, then re-personalization), the
   check the paper compares with, so the verify-vs-retrain ratio comes from one run.
3. **Headline** (seeds ``SEEDS`` × clients ``CLIENTS``) for the ViT (image data, per-client domain
   shift) and the OPT-style code model (standard-library code): ZK-APEX (paper defaults), ZK-APEX
   (tuned), mask-only, mask + fine-tune, retrain-then-re-personalize and no-op, mean ± std. An extra
   ViT setting (``vit-mnist-class-federation``) makes the class request cover the whole federation:
   clients drop their own samples of the class too, so the retrain baseline never sees it.
   ``--setting NAME`` runs only that headline, reusing the tuned point in ``--out``, into ``--out/NAME/``.

Outputs in ``--out``: ``quality_runs.csv`` (one row per setting × seed × client × method),
``quality.csv`` (mean ± std), ``quality.png``, ``sweeps.csv`` / ``sweeps.png``, ``tuning_grid.csv``,
``budget.csv`` / ``budget_tradeoff.png``, ``verify_vs_retrain.csv``, ``summary.json``, ``machine.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

METHOD_DEFAULT = "ZK-APEX"
METHOD_TUNED = "ZK-APEX (tuned)"
BASELINES = ("mask-only", "mask+finetune", "retrain", "no-op")
METHODS = (METHOD_DEFAULT, METHOD_TUNED) + BASELINES
METRICS = ("personalization_acc_before", "personalization_acc_after", "recovery", "forget_acc_before",
           "forget_acc_after", "mia_auc_after", "client_s")
RECOVERY_FLOOR = 0.99
TUNE_SEED = 100
# The paper's figures (arXiv 2512.09953, as PROTOCOL.md and the issue quote them), shown beside ours.
PAPER = {"vit": {"recovery": "≈ 0.99"}, "opt": {"recovery": "≈ 0.70"},
         "verify_vs_retrain": "> 10^7 × (ViT-B, ≈ 1.1 M masked weights)"}


@dataclass(frozen=True)
class Setting:
    """One model × dataset × deletion request, and the clients and seeds it is measured on."""

    name: str
    model: str
    dataset: str
    overrides: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    clients: tuple[int, ...] = (0, 1, 2)


@dataclass(frozen=True)
class Plan:
    """What one benchmark run measures."""

    vit: Setting
    opt: Setting | None
    sweeps: dict[str, list]          # LocalConfig field -> values (1-D slices through the defaults)
    grid: dict[str, list]            # mask_fraction × damping grid for tuning
    tune_clients: tuple[int, ...]
    budgets: list                    # max_blocks values at block size 16 (None: no budget)
    wide_unit: tuple[int, int] | None  # (G, K) structured-mask point on the budget curve
    proof_client: int = 0
    extra: tuple[Setting, ...] = ()  # more headline settings (variants of the request)


FULL = Plan(
    vit=Setting("vit-mnist-class", "vit", "mnist",
                dict(domain_shift="mild", num_clients=3, global_epochs=15, personal_epochs=20)),
    opt=Setting("opt-stdlib-code-package", "opt", "stdlib-code",
                dict(max_provider_seqs=3000, max_client_seqs=600, global_epochs=4, personal_epochs=4),
                clients=(0, 1)),
    sweeps={"mask_fraction": [0.01, 0.02, 0.04, 0.08, 0.16], "block_size": [16, 32, 64, 128],
            "num_grads": [32, 128, 512, 2048], "damping": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]},
    grid={"mask_fraction": [0.02, 0.04, 0.08, 0.16], "damping": [0.1, 1.0, 3.0, 10.0, 30.0, 100.0]},
    tune_clients=(0, 1, 2),
    budgets=[96, 128, 256, 512, None],
    wide_unit=(64, 2),
    # a class request that covers the whole federation: clients drop their own samples of the class too,
    # so retrain never sees it (the Fisher was still committed on all the client's data, before the request)
    extra=(Setting("vit-mnist-class-federation", "vit", "mnist",
                   dict(domain_shift="mild", num_clients=3, global_epochs=15, personal_epochs=20,
                        client_keeps_forget=False)),),
)
QUICK = Plan(
    vit=Setting("vit-digits-class", "vit", "digits",
                dict(domain_shift="mild", num_clients=2, global_epochs=4, personal_epochs=3,
                     model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)),
                seeds=(0,), clients=(0,)),
    opt=Setting("opt-stdlib-code-package", "opt", "stdlib-code",
                dict(max_provider_seqs=200, max_client_seqs=100, global_epochs=1, personal_epochs=1,
                     num_grads=32, model_kwargs=dict(hidden=32, layers=1, ffn=64, heads=2)),
                seeds=(0,), clients=(0,)),
    sweeps={"mask_fraction": [0.04, 0.16], "damping": [0.01, 1.0]},
    grid={"mask_fraction": [0.04, 0.16], "damping": [0.01, 1.0]},
    tune_clients=(0,),
    budgets=[16, None],
    wide_unit=None,
)


def _cfg(setting: Setting, seed: int, client: int, **extra):
    from zkapex_flwr.pipeline import preset

    return preset(setting.model, setting.dataset, seed=seed, client_id=client, **{**setting.overrides, **extra})


def _rows(result: dict, setting: Setting, method: str, include_baselines: bool) -> list[dict]:
    cfg = result["config"]
    common = {"setting": setting.name, "model": setting.model, "dataset": setting.dataset, "seed": cfg["seed"],
              "client": cfg["client_id"], "masked_weights": result["masked_weights"],
              "touched_blocks": result["touched_blocks"], "mask_fraction": cfg["mask_fraction"],
              "damping": cfg["damping"], "block_size": cfg["block_size"]}
    rows = [{**common, "method": method, **{k: result[k] for k in METRICS}}]
    if include_baselines:
        rows += [{**common, "method": name, **{k: row[k] for k in METRICS}} for name, row in result["baselines"].items()]
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
        extra = (f", proof {result['proof']['verdict']} in {result['proof']['prove_s']:.0f} s"
                 if "proof" in result else "")
        self.console.log(f"[{self.runs}] {cfg.model}/{cfg.dataset} seed {cfg.seed} client {cfg.client_id} "
                         f"f={cfg.mask_fraction} d={cfg.block_size} λ={cfg.damping} g={cfg.num_grads} "
                         f"B={cfg.max_blocks}: recovery {result['recovery']:.3f}, forget "
                         f"{result['forget_acc_before']:.3f}→{result['forget_acc_after']:.3f}{extra} "
                         f"({time.perf_counter() - t:.0f} s; {time.perf_counter() - self.t0:.0f} s total)")
        return result

    # --------------------------------------------------------------------------------------- tuning
    def tune(self) -> tuple[dict, "object", "object"]:
        """1-D sweeps and the fraction × damping grid on the tuning seed; returns the tuned overrides."""
        import itertools

        import pandas as pd

        plan, setting = self.plan, self.plan.vit
        retrain = {}
        rows = []
        for client in plan.tune_clients:
            base = _cfg(setting, TUNE_SEED, client)
            r = self.run(base)
            retrain[client] = r["baselines"]["retrain"]["forget_acc_after"]
            rows += [{"param": "default", "value": None, **row} for row in _rows(r, setting, METHOD_DEFAULT, True)]
            for param, values in plan.sweeps.items():
                for value in values:
                    r = self.run(replace(base, **{param: value}, baselines=()))
                    rows += [{"param": param, "value": value, **row} for row in _rows(r, setting, METHOD_DEFAULT, False)]
            for frac, damp in itertools.product(plan.grid["mask_fraction"], plan.grid["damping"]):
                r = self.run(replace(base, mask_fraction=frac, damping=damp, baselines=()))
                rows += [{"param": "grid", "value": f"{frac}|{damp}", **row}
                         for row in _rows(r, setting, METHOD_DEFAULT, False)]
        frame = pd.DataFrame(rows)
        frame["retrain_forget_acc"] = frame["client"].map(retrain)
        frame["forget_gap"] = frame["forget_acc_after"] - frame["retrain_forget_acc"]
        grid = (frame[frame["param"] == "grid"].groupby(["mask_fraction", "damping"])
                .agg(recovery=("recovery", "mean"), forget_acc=("forget_acc_after", "mean"),
                     abs_forget_gap=("forget_gap", lambda s: abs(s.mean())), mia_auc=("mia_auc_after", "mean"))
                .reset_index())
        ok = grid[grid["recovery"] >= RECOVERY_FLOOR]
        best = (ok if len(ok) else grid).sort_values(["abs_forget_gap", "mask_fraction"]).iloc[0]
        tuned = {"mask_fraction": float(best["mask_fraction"]), "damping": float(best["damping"])}
        self.console.log(f"tuned on seed {TUNE_SEED}: {tuned} (mean recovery {best['recovery']:.3f}, "
                         f"|forget gap to retrain| {best['abs_forget_gap']:.3f})")
        return tuned, frame, grid

    # --------------------------------------------------------------------------------------- budget
    def budget(self) -> tuple["object", dict]:
        """Touched-block budget at d=16 with the paper's 4 % mask: quality on the tuning clients, proof cost
        on one of them (the proof cost depends on the mask's shape, not on the client's data)."""
        import pandas as pd

        plan, setting = self.plan, self.plan.vit
        points = [(b, None) for b in plan.budgets] + ([(None, plan.wide_unit)] if plan.wide_unit else [])
        rows, ratio = [], {}
        for client in plan.tune_clients:
            base = _cfg(setting, TUNE_SEED, client, block_size=16, proof_slots=8)
            proves = client == plan.proof_client
            for budget, unit in points:
                # retraining-to-check is timed once, on the proof client's unbudgeted free mask
                retrain = proves and budget is None and unit is None
                cfg = replace(base, max_blocks=budget, prove=proves, baselines=("retrain",) if retrain else ())
                label = "none" if budget is None else str(budget)
                if unit is not None:
                    cfg = replace(cfg, mask_group=unit, proof_group=unit[0], proof_slots=unit[1])
                    label = f"wide units G={unit[0]}, K={unit[1]}"
                r = self.run(cfg)
                row = {"budget": label, "client": client, "touched_blocks": r["touched_blocks"],
                       "masked_weights": r["masked_weights"], "recovery": r["recovery"],
                       "forget_acc_after": r["forget_acc_after"], "mia_auc_after": r["mia_auc_after"]}
                if "proof" in r:
                    p = r["proof"]
                    row.update({k: p[k] for k in ("verdict", "proofs", "prove_s", "verify_ms", "bundle_bytes",
                                                  "register_s", "peak_rss_mb", "prove_ms_per_masked_weight")})
                if "retrain" in r["baselines"]:
                    p = r["proof"]
                    retrain_s = r["baselines"]["retrain"]["client_s"]
                    ratio = {"masked_weights": r["masked_weights"], "touched_blocks": r["touched_blocks"],
                             "verify_s": p["verify_ms"] / 1000, "retrain_s": retrain_s,
                             "retrain_global_s": r["timings_s"]["retrain global"],
                             "retrain_personalize_s": r["timings_s"]["retrain personalize"],
                             "prove_s": p["prove_s"], "register_s": p["register_s"],
                             "verify_vs_retrain": retrain_s / (p["verify_ms"] / 1000),
                             "prove_and_verify_vs_retrain": retrain_s / (p["prove_s"] + p["verify_ms"] / 1000)}
                rows.append(row)
        return pd.DataFrame(rows), ratio

    # --------------------------------------------------------------------------------------- headline
    def headline(self, tuned: dict, settings=None) -> "object":
        import pandas as pd

        rows = []
        for setting in settings or (self.plan.vit, self.plan.opt, *self.plan.extra):
            if setting is None:
                continue
            for seed in setting.seeds:
                for client in setting.clients:
                    cfg = _cfg(setting, seed, client)
                    rows += _rows(self.run(cfg), setting, METHOD_DEFAULT, True)
                    if setting.model == "vit":
                        rows += _rows(self.run(replace(cfg, **tuned, baselines=())), setting, METHOD_TUNED, False)
                self.cache.clear()  # one seed's models at a time
        frame = pd.DataFrame(rows)
        retrain = frame[frame["method"] == "retrain"].set_index(["setting", "seed", "client"])["forget_acc_after"]
        frame["forget_gap_to_retrain"] = (frame["forget_acc_after"]
                                          - frame.set_index(["setting", "seed", "client"]).index.map(retrain))
        return frame


def aggregate(runs):
    """Mean and std per setting × method (columns ``<metric>_mean``, ``<metric>_std``) and the run count."""
    cols = list(METRICS) + ["forget_gap_to_retrain"]
    agg = runs.groupby(["setting", "method"], sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["runs"] = runs.groupby(["setting", "method"], sort=False).size()
    return agg.reset_index()


def run(out: Path, quick: bool = False) -> dict:
    from rich.console import Console

    from benchmarks.proof_cost import machine

    out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if quick else FULL
    bench = Bench(plan)
    tuned, sweeps, grid = bench.tune()
    sweeps.to_csv(out / "sweeps.csv", index=False)
    grid.to_csv(out / "tuning_grid.csv", index=False)
    bench.cache.clear()
    budget, ratio = bench.budget()
    budget.to_csv(out / "budget.csv", index=False)
    bench.cache.clear()
    agg = save_headline(bench.headline(tuned), out)
    import pandas as pd

    pd.DataFrame([ratio]).to_csv(out / "verify_vs_retrain.csv", index=False)
    plot_sweeps(sweeps, out / "sweeps.png")
    plot_budget(budget, out / "budget_tradeoff.png")
    summary = {"quick": quick, "tuned": tuned, "tune_seed": TUNE_SEED, "recovery_floor": RECOVERY_FLOOR,
               "verify_vs_retrain": ratio, "targets": targets(agg, plan), "paper": PAPER,
               "wall_s": time.perf_counter() - bench.t0, "runs": bench.runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "machine.json").write_text(json.dumps(machine(), indent=2))
    write_report(out)
    print_tables(Console(), agg, ratio, summary["targets"])
    return summary


def save_headline(runs, folder: Path):
    """Write ``quality_runs.csv``, ``quality.csv`` (mean ± std) and ``quality.png`` into ``folder``; return the means."""
    runs.to_csv(folder / "quality_runs.csv", index=False)
    agg = aggregate(runs)
    agg.to_csv(folder / "quality.csv", index=False)
    plot_quality(agg, folder / "quality.png")
    return agg


def run_setting(out: Path, name: str) -> Path:
    """Only the headline of one extra setting, with the tuned point of the full run in ``out``.

    Writes ``out/<name>/`` (``quality_runs.csv``, ``quality.csv``, ``quality.png``); the full run makes
    the same rows inside its own tables.
    """
    settings = {s.name: s for s in FULL.extra}
    if name not in settings:
        raise ValueError(f"unknown setting '{name}'; choose one of {sorted(settings)}")
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise ValueError(f"{summary_path} is missing: run the full benchmark into {out} first (it picks the tuned point)")
    tuned = json.loads(summary_path.read_text())["tuned"]
    bench = Bench(FULL)
    runs = bench.headline(tuned, [settings[name]])
    sub = out / name
    sub.mkdir(parents=True, exist_ok=True)
    agg = save_headline(runs, sub)
    (sub / "run.json").write_text(json.dumps({"tuned": tuned, "wall_s": time.perf_counter() - bench.t0,
                                              "runs": bench.runs}, indent=2))
    from rich.console import Console

    print_tables(Console(), agg)
    return sub


def write_report(out: Path) -> Path:
    """``report.md``: the markdown tables README quotes, made from the CSVs in ``out`` (re-runnable)."""
    import pandas as pd

    agg = pd.read_csv(out / "quality.csv")
    budget = pd.read_csv(out / "budget.csv", dtype={"budget": str})
    ratio = pd.read_csv(out / "verify_vs_retrain.csv").iloc[0].to_dict()
    summary = json.loads((out / "summary.json").read_text())
    lines = [f"# Unlearning quality ({'quick' if summary['quick'] else 'full'} run, {summary['runs']} runs, "
             f"{summary['wall_s'] / 60:.1f} min)", "",
             f"Tuned on seed {summary['tune_seed']}: {summary['tuned']}. Mean ± std over seeds × clients.", ""]
    for setting, part in agg.groupby("setting", sort=False):
        model = "opt" if setting.startswith("opt") else "vit"
        lines += [f"## {setting} ({int(part['runs'].max())} runs per method)", "",
                  "| method | pers. acc before → after | recovery | forget acc after | gap to retrain | MIA AUC | "
                  "client s | paper |", "|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            paper = PAPER[model]["recovery"] if r["method"] == METHOD_DEFAULT else ""
            lines.append(f"| {r['method']} | {_pm(r['personalization_acc_before_mean'], r['personalization_acc_before_std'])}"
                         f" → {_pm(r['personalization_acc_after_mean'], r['personalization_acc_after_std'])} | "
                         f"{_pm(r['recovery_mean'], r['recovery_std'])} | "
                         f"{_pm(r['forget_acc_after_mean'], r['forget_acc_after_std'])} | "
                         f"{_pm(r['forget_gap_to_retrain_mean'], r['forget_gap_to_retrain_std'])} | "
                         f"{_pm(r['mia_auc_after_mean'], r['mia_auc_after_std'])} | {r['client_s_mean']:.1f} | {paper} |")
        lines.append("")
    quality = budget.groupby("budget", sort=False).agg(recovery=("recovery", "mean"), forget=("forget_acc_after", "mean"),
                                                        touched=("touched_blocks", "mean"))
    cost = budget.dropna(subset=["verdict"]).set_index("budget")
    lines += ["## Touched-block budget (d=16, 4 % mask) against proof cost", "",
              "| budget (blocks) | touched blocks | recovery | forget acc | proofs | prove s | verify s | bundle KB | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, q in quality.iterrows():
        c = cost.loc[name]
        lines.append(f"| {name} | {q['touched']:.0f} | {q['recovery']:.3f} | {q['forget']:.3f} | {c['proofs']:.0f} | "
                     f"{c['prove_s']:.0f} | {c['verify_ms'] / 1000:.1f} | {c['bundle_bytes'] / 1000:.0f} | {c['verdict']} |")
    lines += ["", "## Verification against retraining to check", "",
              f"- verify one client's bundle ({ratio['masked_weights']:.0f} masked weights, {ratio['touched_blocks']:.0f} "
              f"touched blocks): {ratio['verify_s']:.2f} s",
              f"- retrain to check: {ratio['retrain_s']:.1f} s (global without D_f {ratio['retrain_global_s']:.1f} s + "
              f"re-personalize {ratio['retrain_personalize_s']:.1f} s)",
              f"- ratio: {ratio['verify_vs_retrain']:.1f}× (prove + verify vs retrain: "
              f"{ratio['prove_and_verify_vs_retrain']:.2f}×); paper: {PAPER['verify_vs_retrain']}", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def targets(agg, plan: Plan) -> dict:
    """Where the issue's targets stand (means over seeds × clients)."""
    def get(setting, method, col):
        row = agg[(agg["setting"] == setting) & (agg["method"] == method)]
        return float(row[col].iloc[0]) if len(row) else None

    vit = plan.vit.name
    out = {}
    for method in (METHOD_DEFAULT, METHOD_TUNED):
        rec, gap, mia = (get(vit, method, c) for c in ("recovery_mean", "forget_gap_to_retrain_mean", "mia_auc_after_mean"))
        out[f"vit {method}"] = {"recovery": rec, "recovery_ok": rec is not None and rec >= 0.99,
                                "forget_gap_to_retrain": gap, "forget_gap_ok": gap is not None and abs(gap) <= 0.02,
                                "mia_auc": mia, "mia_ok": mia is not None and mia <= 0.55}
    if plan.opt is not None:
        rec = get(plan.opt.name, METHOD_DEFAULT, "recovery_mean")
        out[f"code {METHOD_DEFAULT}"] = {"recovery": rec, "recovery_ok": rec is not None and rec >= 0.85}
    return out


def print_tables(console, agg, ratio: dict | None = None, targets: dict | None = None) -> None:
    from rich.table import Table

    for setting, part in agg.groupby("setting", sort=False):
        table = Table(title=f"{setting} (mean ± std over {int(part['runs'].max())} seed × client runs)")
        table.add_column("method")
        for col in ("pers acc before", "pers acc after", "recovery", "forget acc after", "gap to retrain",
                    "MIA AUC", "client s"):
            table.add_column(col, justify="right")
        for _, r in part.iterrows():
            table.add_row(r["method"], *(_pm(r[c + "_mean"], r[c + "_std"]) for c in (
                "personalization_acc_before", "personalization_acc_after", "recovery", "forget_acc_after",
                "forget_gap_to_retrain", "mia_auc_after")), f"{r['client_s_mean']:.1f}")
        console.print(table)
    if ratio:
        console.print(f"verify {ratio['verify_s'] * 1000:.0f} ms vs retrain-to-check {ratio['retrain_s']:.0f} s: "
                      f"{ratio['verify_vs_retrain']:.0f}× ({ratio['masked_weights']} masked weights)")
    if targets:
        console.print(json.dumps(targets, indent=1))


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f}" if std != std else f"{mean:.3f}±{std:.3f}"  # std is NaN for a single run


def plot_quality(agg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(agg["setting"]))
    keys = [("personalization_acc_after", "personalization acc"), ("forget_acc_after", "forget acc"),
            ("mia_auc_after", "MIA AUC")]
    fig, axes = plt.subplots(1, len(settings), figsize=(7 * len(settings), 3.8), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        part = agg[agg["setting"] == setting]
        width = 0.8 / len(keys)
        for j, (key, label) in enumerate(keys):
            ax.bar([i + j * width for i in range(len(part))], part[f"{key}_mean"], width,
                   yerr=part[f"{key}_std"].fillna(0), capsize=2, label=label)
        ax.set_xticks([i + width for i in range(len(part))], part["method"], rotation=20, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{setting} ({int(part['runs'].max())} runs, mean ± std)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweeps(sweeps, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in dict.fromkeys(sweeps["param"]) if p not in ("default", "grid")]
    zk = sweeps[sweeps["method"] == METHOD_DEFAULT]
    retrain = sweeps[sweeps["method"] == "retrain"]["forget_acc_after"].mean()
    fig, axes = plt.subplots(1, len(params), figsize=(3.6 * len(params), 3.2), squeeze=False)
    for ax, param in zip(axes[0], params):
        part = zk[zk["param"] == param].groupby("value").agg(
            recovery=("recovery", "mean"), forget=("forget_acc_after", "mean"), mia=("mia_auc_after", "mean"))
        x = [str(v) for v in part.index]
        ax.plot(x, part["recovery"], "o-", label="recovery")
        ax.plot(x, part["forget"], "s-", label="forget acc")
        ax.plot(x, part["mia"], "^-", label="MIA AUC")
        ax.axhline(retrain, color="k", ls="--", lw=0.8, label="retrain forget acc")
        ax.set_xlabel(param)
        ax.set_ylim(0, 1.05)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_budget(budget, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = budget.groupby("budget", sort=False).agg(recovery=("recovery", "mean"),
                                                        forget=("forget_acc_after", "mean"))
    cost = budget.dropna(subset=["prove_s"]).set_index("budget")
    quality = quality.join(cost[["prove_s", "bundle_bytes"]], how="inner")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, col, label in ((axes[0], "prove_s", "prove s per client"), (axes[1], "bundle_bytes", "bundle bytes per client")):
        ax.plot(quality[col], quality["recovery"], "o-", label="recovery")
        ax.plot(quality[col], quality["forget"], "s-", label="forget acc")
        for name, r in quality.iterrows():
            ax.annotate(name if len(name) < 8 else "wide", (r[col], r["forget"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.05)
    axes[0].set_title("touched-block budget: quality vs proof cost", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny models, one seed and client (CI smoke test)")
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from the CSVs in --out")
    parser.add_argument("--setting", default=None,
                        help="only the headline of one extra setting (e.g. vit-mnist-class-federation), "
                             "with the tuned point of the full run already in --out; writes --out/SETTING/")
    args = parser.parse_args(argv)
    if args.setting:
        run_setting(Path(args.out), args.setting)
    elif args.report_only:
        print(write_report(Path(args.out)).read_text())
    else:
        run(Path(args.out), args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
