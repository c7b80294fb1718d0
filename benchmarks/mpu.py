"""MPU: what unlearning on perturbed copies costs against unlearning on θ itself, and what it hides.

    python -m benchmarks.mpu --out docs/results/mpu [--quick] [--attack]
    zkapex bench mpu [--quick] [--attack]

For every post-hoc algorithm of :mod:`zkapex_flwr.posthoc` in the plan, at κ ∈ {0, 0.01, 0.1}, three
modes of :func:`zkapex_flwr.mpu.mpu_unlearn` on the same θ, data and seed:

* ``clean`` — the algorithm on θ itself (the reference; the client would see θ);
* ``noised`` — one reparameterized copy θ + ε at the same κ per tensor, its update applied as is;
* ``mpu`` — m copies with zero-sum noise, the harmonic Post-Process.

Two settings, each with a pretrained θ (docs/mpu.md): ``vit-digits-class`` (a small timm ViT on the 8×8
digits; the request: every training sample of one class, held by the forgetting client) and
``opt-stdlib-code-package`` (a small OPT on the standard library's code; the request: a package). Metrics
(docs/protocol.md §6): forget accuracy on D_f, utility = accuracy on held-out data without the forget
class/package, the per-example RMIA (members D_f, non-members never-trained samples like D_f, reference
models retrained without D_f), and the score S = ½·(utility + 1 − forget accuracy). A mode's degradation
is 100·(S_clean − S_mode)/S_clean per algorithm, κ and seed (positive: worse than clean).

``--attack`` adds the privacy study: the client-side reconstruction of θ from the copies it receives
(:func:`zkapex_flwr.mpu.attack.reconstruct`) over κ × m, with and without the defences of
:class:`~zkapex_flwr.mpu.MPUConfig`, the utility of the reconstructed model and what each defence costs
MPU; and the consistency screen (:mod:`zkapex_flwr.mpu.screen`) on honest and dishonest replies.

Outputs in ``--out``: ``mpu_runs.csv`` (one row per setting × algorithm × mode × κ × seed), ``mpu.csv``
(mean ± std over seeds, with degradations), ``summary.json`` (``average_degradation_pct`` per κ: the mean
over algorithms and settings of MPU's degradation against clean), ``degradation.png``, ``report.md``,
``machine.json``; with ``--attack`` also ``attack.csv``, ``attack.png``, ``screen.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from zkapex_flwr.figures import paper_style, save_figure
from zkapex_flwr.machine import describe_machine

MODES = ("clean", "noised", "mpu")
KAPPAS = (0.0, 0.01, 0.1)
METRICS = ("utility_acc", "forget_acc", "mia_auc", "mia_tpr_at_1pct_fpr", "forget_loss", "score")
TARGET_PCT = 1.0  # MPU's degradation against clean at κ = 0.1, per algorithm (mean over seeds)


@dataclass(frozen=True)
class Setting:
    """One model × dataset × deletion request, with the pretraining and the MPU budget it is measured at."""

    name: str
    kind: str  # "vit" | "opt"
    model_kwargs: dict
    data: dict  # image: n (samples used), test_fraction, forget_class; code: code_splits arguments, test_fraction
    pretrain_epochs: int
    pretrain_lr: float
    mpu: dict  # MPUConfig fields other than kappa and algorithm
    mia_references: int = 1
    batch_size: int = 32
    utility_max: int = 400  # utility evaluated on at most this many held-out samples
    shared_theta: bool = False  # True: θ, the references and retrain are trained once (seed of the first run);
    #                            the seeds then vary the MPU noise, reparameterizations and batch order only


@dataclass(frozen=True)
class AttackPlan:
    kappas: tuple[float, ...] = (0.01, 0.1, 0.3)
    copies: tuple[int, ...] = (2, 3, 5)
    defences: tuple[tuple[str, float], ...] = (("none", 0.0), ("common-noise", 0.1), ("independent-noise", 0.1))
    settings: tuple[str, ...] = ("vit-digits-class", "opt-stdlib-code-package")
    cost_algorithms: tuple[str, ...] = ("graddiff",)  # MPU degradation with each defence (κ = 0.1)
    screen_kappas: tuple[float, ...] = (0.1,)
    screen_seeds: int = 3


@dataclass(frozen=True)
class Plan:
    settings: tuple[Setting, ...]
    algorithms: tuple[str, ...]
    seeds: tuple[int, ...]
    kappas: tuple[float, ...] = KAPPAS
    attack: AttackPlan = field(default_factory=AttackPlan)


ALGORITHMS = ("ga", "graddiff", "kl-ga", "npo", "simnpo", "rmu", "undial", "dpo")
# one local budget for every algorithm: Adam (as open-unlearning), m = 3 copies with α = 1, 2, 4, the
# reparameterization permutation-only (Adam is equivariant under permutations, not under rotated heads,
# so that MPU at κ = 0 is the clean run exactly)
MPU_VIT = dict(
    copies=3, alphas=(1.0, 2.0, 4.0), rounds=3, steps=5, lr=1e-3, batch_size=32, optimizer="adam", head_transform="none"
)
MPU_LM = dict(
    copies=3, alphas=(1.0, 2.0, 4.0), rounds=1, steps=5, lr=5e-4, batch_size=16, optimizer="adam", head_transform="none"
)
# the learning rate per algorithm (× the setting's lr); SimNPO's γ = 0.125 makes its steps 8× smaller
LR_SCALE = {"simnpo": 4.0}

FULL = Plan(
    settings=(
        Setting(
            "vit-digits-class",
            "vit",
            dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=4, global_pool="avg"),
            dict(n=1797, test_fraction=0.25, forget_class=3),
            pretrain_epochs=20,
            pretrain_lr=5e-3,
            mpu=MPU_VIT,
            mia_references=1,
        ),
        Setting(
            "opt-stdlib-code-package",
            "opt",
            dict(hidden=64, layers=2, ffn=256, heads=2),
            dict(forget_package_="json", max_provider_seqs=700, max_client_seqs=50, num_clients=2, test_fraction=0.15),
            pretrain_epochs=15,
            pretrain_lr=3e-3,
            batch_size=16,
            mpu=MPU_LM,
            mia_references=1,
            utility_max=100,
            shared_theta=True,
        ),
    ),
    algorithms=ALGORITHMS,
    seeds=(0, 1, 2),
)
QUICK = Plan(
    settings=(
        Setting(
            "vit-digits-class",
            "vit",
            dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=4, global_pool="avg"),
            dict(n=500, test_fraction=0.3, forget_class=3),
            pretrain_epochs=12,
            pretrain_lr=5e-3,
            mpu=dict(MPU_VIT, rounds=2, steps=4),
        ),
        Setting(
            "opt-stdlib-code-package",
            "opt",
            dict(hidden=32, layers=1, ffn=64, heads=2),
            dict(forget_package_="json", max_provider_seqs=150, max_client_seqs=20, num_clients=2, test_fraction=0.2),
            pretrain_epochs=1,
            pretrain_lr=3e-3,
            mpu=dict(MPU_LM, rounds=1, steps=3),
            utility_max=60,
        ),
    ),
    algorithms=("ga", "npo"),
    seeds=(0,),
    attack=AttackPlan(
        kappas=(0.01, 0.3),
        copies=(2, 3),
        defences=(("none", 0.0), ("common-noise", 0.1)),
        settings=("vit-digits-class",),
        screen_kappas=(0.1,),
        screen_seeds=1,
    ),
)


# ---------------------------------------------------------------------------------------------------
# data, θ and the membership audit of one setting and seed


@dataclass
class Prepared:
    """Everything one setting × seed measures on: θ (never modified), the data roles, the audit."""

    setting: Setting
    seed: int
    task: object
    theta: torch.nn.Module
    forget: object  # D_f (TensorData)
    retain: object  # training data minus D_f
    test: object  # held-out, forget class/package excluded (utility)
    unseen: object  # never-trained samples drawn like D_f (MIA non-members)
    audit: object
    retrain: dict  # metrics of a model retrained without D_f (the target for forgetting)
    pretrain_s: float


def _image_roles(setting: Setting, seed: int):
    from zkapex_flwr.data.images import load_images
    from zkapex_flwr.data.tensors import TensorData

    x, y = load_images("digits")
    n = min(setting.data["n"], len(y))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = x[order], y[order]
    n_test = int(n * setting.data["test_fraction"])
    xt, yt, xs, ys = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    c = setting.data["forget_class"]
    forget = TensorData((xs[ys == c], ys[ys == c]))
    retain = TensorData((xs[ys != c], ys[ys != c]))
    test = TensorData((xt[yt != c], yt[yt != c]))
    unseen = TensorData((xt[yt == c], yt[yt == c]))
    return forget, retain, test, unseen, {"image_shape": (1, 8, 8), "num_classes": 10}


def _code_roles(setting: Setting, seed: int):
    from zkapex_flwr.data.code import code_splits

    args = {k: v for k, v in setting.data.items() if k != "test_fraction"}
    splits, tok = code_splits(seed=seed, client_keeps_forget=True, **args)
    rest = splits.provider_retain
    perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))
    n_test = max(5, int(len(rest) * setting.data["test_fraction"]))
    test, retain = rest.subset(perm[:n_test]), rest.subset(perm[n_test:])
    return (
        splits.forget,
        retain,
        test,
        splits.client_unseen,
        {"vocab_size": len(tok), "seq_len": splits.meta["seq_len"]},
    )


def _build(setting: Setting, shape: dict, seed: int):
    from zkapex_flwr.models import build_vit, create_lm

    if setting.kind == "vit":
        return build_vit(shape["image_shape"], shape["num_classes"], seed=seed, **setting.model_kwargs)
    return create_lm("opt", vocab_size=shape["vocab_size"], seq_len=shape["seq_len"], seed=seed, **setting.model_kwargs)


def _concat(a, b):
    from zkapex_flwr.data.tensors import TensorData

    return TensorData(tuple(torch.cat([s, t]) for s, t in zip(a.tensors, b.tensors, strict=True)))


def prepare(setting: Setting, seed: int, progress=None) -> Prepared:
    from zkapex_flwr.membership import MembershipAudit
    from zkapex_flwr.tasks import task_for
    from zkapex_flwr.training import seed_everything, train

    seed_everything(seed)
    t = time.perf_counter()
    roles = _image_roles(setting, seed) if setting.kind == "vit" else _code_roles(setting, seed)
    forget, retain, test, unseen, shape = roles
    task = task_for("image" if setting.kind == "vit" else "lm")
    test = test.head(setting.utility_max)

    def fit(data, s, desc):
        return train(
            _build(setting, shape, s),
            task,
            data,
            epochs=setting.pretrain_epochs,
            lr=setting.pretrain_lr,
            batch_size=setting.batch_size,
            seed=s,
            progress=progress,
            desc=desc,
        )

    theta = fit(_concat(retain, forget), seed, f"{setting.name} θ (seed {seed})")
    pretrain_s = time.perf_counter() - t
    refs = [fit(retain, seed + 1000 * (r + 1), f"{setting.name} reference {r}") for r in range(setting.mia_references)]
    audit = MembershipAudit.calibrate(refs, task, forget, unseen)
    prep = Prepared(setting, seed, task, theta, forget, retain, test, unseen, audit, {}, pretrain_s)
    # the retrain target: a model of the same pipeline without D_f (another seed than the references)
    prep.retrain = evaluate(prep, fit(retain, seed + 77, f"{setting.name} retrain"))
    return prep


def evaluate(prep: Prepared, model) -> dict:
    from zkapex_flwr.training import accuracy, per_sample_stats

    rmia = prep.audit.score(model, prep.task)
    utility = accuracy(model, prep.task, prep.test)
    forget = accuracy(model, prep.task, prep.forget)
    return {
        "utility_acc": utility,
        "forget_acc": forget,
        "mia_auc": rmia["auc"],
        "mia_tpr_at_1pct_fpr": rmia["tpr_at_1pct_fpr"],
        "forget_loss": float(per_sample_stats(model, prep.task, prep.forget)["loss"].mean()),
        "score": 0.5 * (utility + 1.0 - forget),
    }


def mpu_config(setting: Setting, algorithm: str, kappa: float, **extra):
    from zkapex_flwr.mpu import MPUConfig

    lr = setting.mpu["lr"] * LR_SCALE.get(algorithm, 1.0)
    return MPUConfig(**{**setting.mpu, "algorithm": algorithm, "kappa": kappa, "lr": lr, **extra})


def unlearned(prep: Prepared, algorithm: str, kappa: float, mode: str, **extra):
    """θ after ``mode`` of MPU with ``algorithm`` at ``kappa`` (a fresh clone of θ; θ is left alone)."""
    from zkapex_flwr.models import clone_model
    from zkapex_flwr.mpu import mpu_unlearn

    cfg = mpu_config(prep.setting, algorithm, kappa, **extra)
    return mpu_unlearn(clone_model(prep.theta), prep.task, prep.forget, prep.retain, cfg, seed=prep.seed, mode=mode)


def _key(kappa: float) -> str:
    return f"{kappa:g}"


class Bench:
    """Runs the plan with a rich progress bar and one log line per finished cell."""

    def __init__(self, plan: Plan, console=None):
        from rich.console import Console

        self.plan = plan
        self.console = console or Console(stderr=True)
        self.t0 = time.perf_counter()
        self.prepared: dict[tuple[str, int], Prepared] = {}  # the first seed of each setting, for the attack
        self.clean: dict[tuple[str, str, int], dict] = {}

    def log(self, msg: str) -> None:
        self.console.log(f"{msg} ({time.perf_counter() - self.t0:.0f} s)")

    def _progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )

    def grid(self):
        """Every setting × seed × algorithm × κ × mode: the rows of ``mpu_runs.csv`` and the reference rows
        (θ before unlearning, the retrained model) of each setting × seed."""
        import pandas as pd

        plan = self.plan
        rows, refs = [], []
        cells = len(plan.settings) * len(plan.seeds) * len(plan.algorithms)
        with self._progress() as progress:
            bar = progress.add_task("MPU grid (setting × seed × algorithm)", total=cells)
            for setting in plan.settings:
                shared = None
                for seed in plan.seeds:
                    if setting.shared_theta and shared is not None:
                        prep = replace(shared, seed=seed)
                    else:
                        prep = shared = prepare(setting, seed, progress)
                    if seed == plan.seeds[0]:
                        self.prepared[(setting.name, seed)] = prep
                    common = {"setting": setting.name, "seed": seed}
                    before = evaluate(prep, prep.theta)
                    refs += [{**common, "model": "theta", **before}, {**common, "model": "retrain", **prep.retrain}]
                    self.log(
                        f"{setting.name} seed {seed}: θ utility {before['utility_acc']:.3f}, forget "
                        f"{before['forget_acc']:.3f}; retrain forget {prep.retrain['forget_acc']:.3f}, RMIA "
                        f"{prep.retrain['mia_auc']:.3f} (pretraining {prep.pretrain_s:.0f} s)"
                    )
                    for alg in plan.algorithms:
                        t = time.perf_counter()
                        clean = evaluate(prep, unlearned(prep, alg, 0.0, "clean"))
                        clean_s = time.perf_counter() - t
                        self.clean[(setting.name, alg, seed)] = clean
                        for kappa in plan.kappas:
                            rows.append(
                                {
                                    **common,
                                    "algorithm": alg,
                                    "mode": "clean",
                                    "kappa": kappa,
                                    **clean,
                                    "seconds": clean_s,
                                }
                            )
                            for mode in ("noised", "mpu"):
                                t = time.perf_counter()
                                got = evaluate(prep, unlearned(prep, alg, kappa, mode))
                                rows.append(
                                    {
                                        **common,
                                        "algorithm": alg,
                                        "mode": mode,
                                        "kappa": kappa,
                                        **got,
                                        "seconds": time.perf_counter() - t,
                                    }
                                )
                        last = {r["mode"]: r for r in rows[-2:]}
                        self.log(
                            f"  {alg}: clean S {clean['score']:.3f} (utility {clean['utility_acc']:.3f}, forget "
                            f"{clean['forget_acc']:.3f}); at κ={plan.kappas[-1]:g} MPU S {last['mpu']['score']:.3f}, "
                            f"noised S {last['noised']['score']:.3f}"
                        )
                        progress.advance(bar)
        return with_degradation(pd.DataFrame(rows)), pd.DataFrame(refs)

    def attack(self):
        """Reconstruction error and utility of the attacker's θ over κ × m × defence, and each defence's cost."""
        import pandas as pd

        from zkapex_flwr.models import clone_model
        from zkapex_flwr.mpu import MPUConfig, make_copies
        from zkapex_flwr.mpu.attack import reconstruct, reconstruction_error
        from zkapex_flwr.training import accuracy

        ap = self.plan.attack
        rows, cost = [], []
        seed = self.plan.seeds[0]
        for name in ap.settings:
            prep = self.prepared.get((name, seed))
            if prep is None:
                continue
            theta = {k: v.detach().clone() for k, v in prep.theta.state_dict().items()}
            theta_utility = accuracy(prep.theta, prep.task, prep.test)

            def utility(state):
                model = clone_model(prep.theta)
                model.load_state_dict(state)
                return accuracy(model, prep.task, prep.test)

            for kappa in ap.kappas:
                for m in ap.copies:
                    for defence, dk in ap.defences:
                        t = time.perf_counter()
                        cfg = MPUConfig(
                            copies=m,
                            alphas=tuple(2.0**i for i in range(m)),
                            kappa=kappa,
                            defence=defence,
                            defence_kappa=dk,
                        )
                        copies = make_copies(prep.theta, cfg, torch.Generator().manual_seed(seed))
                        sent = [c.state for c in copies]
                        rec = reconstruct(sent, cfg.alphas, prep.theta)
                        rows.append(
                            {
                                "setting": name,
                                "kappa": kappa,
                                "copies": m,
                                "defence": defence,
                                "defence_kappa": dk,
                                "reconstruction_error": reconstruction_error(rec, theta, prep.theta)["overall"],
                                "copy0_error": reconstruction_error(sent[0], theta, prep.theta)["overall"],
                                "reconstructed_utility": utility(rec),
                                "copy0_utility": utility(sent[0]),
                                "theta_utility": theta_utility,
                                "seconds": time.perf_counter() - t,
                            }
                        )
                self.log(f"attack {name} κ={kappa:g}: done")
            # what each defence costs MPU (κ = 0.1, the default m = 3), against the clean run of the grid
            for alg in ap.cost_algorithms:
                clean = self.clean.get((name, alg, seed)) or evaluate(prep, unlearned(prep, alg, 0.0, "clean"))
                for defence, dk in ap.defences:
                    got = evaluate(prep, unlearned(prep, alg, 0.1, "mpu", defence=defence, defence_kappa=dk))
                    cost.append(
                        {
                            "setting": name,
                            "algorithm": alg,
                            "defence": defence,
                            "defence_kappa": dk,
                            "kappa": 0.1,
                            "clean_score": clean["score"],
                            "mpu_score": got["score"],
                            "mpu_utility_acc": got["utility_acc"],
                            "mpu_forget_acc": got["forget_acc"],
                            "degradation_pct": degradation(clean["score"], got["score"]),
                        }
                    )
        return pd.DataFrame(rows), pd.DataFrame(cost)

    def screen(self):
        """The consistency screen on honest replies (every algorithm) and on three dishonest kinds."""
        import pandas as pd

        from zkapex_flwr.mpu import inverted_updates, make_copies
        from zkapex_flwr.mpu.run import client_round
        from zkapex_flwr.mpu.screen import DEFAULT_THRESHOLD, details

        ap = self.plan.attack
        rows = []
        seed0 = self.plan.seeds[0]
        for name in ap.settings:
            prep = self.prepared.get((name, seed0))
            if prep is None:
                continue
            theta = prep.theta
            n_f = len(prep.forget)
            for trial in range(ap.screen_seeds):
                gen = torch.Generator().manual_seed(10_000 + trial)
                other = prep.retain.subset(torch.randperm(len(prep.retain), generator=gen)[:n_f])
                for kappa in ap.screen_kappas:
                    for alg in self.plan.algorithms:
                        cfg = mpu_config(prep.setting, alg, kappa, rounds=1)
                        copies = make_copies(theta, cfg, gen)
                        sent = [c.state for c in copies]
                        honest = client_round(theta, sent, prep.task, prep.forget, prep.retain, cfg, seed=trial)
                        replies = {"honest": honest}
                        if alg == self.plan.algorithms[0]:
                            replies["garbage"] = [_garbage(s, h, gen) for s, h in zip(sent, honest, strict=True)]
                            replies["zero update"] = [{k: v.clone() for k, v in s.items()} for s in sent]
                            replies["other data"] = client_round(
                                theta, sent, prep.task, other, prep.retain, cfg, seed=trial
                            )
                        for kind, returned in replies.items():
                            d = details(inverted_updates(copies, returned), cfg.alphas)
                            rows.append(
                                {
                                    "setting": name,
                                    "trial": trial,
                                    "kappa": kappa,
                                    "algorithm": alg,
                                    "client": kind,
                                    "score": d["score"],
                                    "reason": d["reason"],
                                    "flagged": d["score"] < DEFAULT_THRESHOLD,
                                    "threshold": DEFAULT_THRESHOLD,
                                }
                            )
            self.log(f"screen {name}: done")
        return pd.DataFrame(rows)


def _garbage(sent: dict, honest: dict, gen: torch.Generator) -> dict:
    """A dishonest reply: each floating tensor moved by Gaussian noise of the honest change's RMS, independently
    per copy (as large as an honest update, pointing nowhere)."""
    out = {}
    for k, v in sent.items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        step = float((honest[k].double() - v.double()).pow(2).mean().sqrt())
        out[k] = v + (torch.randn(v.shape, generator=gen, dtype=torch.float64) * step).to(v.dtype)
    return out


def degradation(clean_score: float, score: float) -> float:
    """100·(S_clean − S)/S_clean: the percent of the clean run's score a mode loses (negative: it gains)."""
    return 100.0 * (clean_score - score) / clean_score if clean_score else float("nan")


def with_degradation(runs):
    """Add ``degradation_pct`` (each row against the clean row of its setting, seed, algorithm and κ) and the
    per-metric differences ``<metric>_diff`` (mode − clean)."""
    if runs.empty:
        return runs
    key = ["setting", "seed", "algorithm", "kappa"]
    clean = runs[runs["mode"] == "clean"].set_index(key)
    idx = runs.set_index(key).index
    c = idx.map(clean["score"]).to_numpy(dtype=float)
    runs["degradation_pct"] = 100.0 * (c - runs["score"].to_numpy(dtype=float)) / c
    for col in ("utility_acc", "forget_acc", "mia_auc"):
        runs[f"{col}_diff"] = runs[col].to_numpy(dtype=float) - idx.map(clean[col]).to_numpy(dtype=float)
    return runs


def aggregate(runs):
    """Mean and std over seeds per setting × algorithm × mode × κ."""
    cols = list(METRICS) + ["degradation_pct", "utility_acc_diff", "forget_acc_diff", "mia_auc_diff", "seconds"]
    key = ["setting", "algorithm", "mode", "kappa"]
    agg = runs.groupby(key, sort=False)[cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["seeds"] = runs.groupby(key, sort=False).size()
    return agg.reset_index()


def _number(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return None if math.isnan(value) else value


def summarise(runs, agg, refs, plan: Plan) -> dict:
    """The machine-readable results: average degradations, per-algorithm numbers and the target's status."""
    mpu, noised = agg[agg["mode"] == "mpu"], agg[agg["mode"] == "noised"]
    nonzero = [k for k in plan.kappas if k > 0]

    def average(frame) -> dict:
        return {_key(k): _number(frame[frame["kappa"] == k]["degradation_pct_mean"].mean()) for k in nonzero}

    per: dict = {}
    for _, r in agg[agg["mode"] != "clean"].iterrows():
        cell = per.setdefault(r["setting"], {}).setdefault(r["algorithm"], {}).setdefault(_key(r["kappa"]), {})
        cell[f"{r['mode']}_degradation_pct"] = _number(r["degradation_pct_mean"])
        cell[f"{r['mode']}_degradation_pct_std"] = _number(r["degradation_pct_std"])
        cell[f"{r['mode']}_utility_acc"] = _number(r["utility_acc_mean"])
        cell[f"{r['mode']}_forget_acc"] = _number(r["forget_acc_mean"])
        cell[f"{r['mode']}_mia_auc"] = _number(r["mia_auc_mean"])
    for _, r in agg[(agg["mode"] == "clean") & (agg["kappa"] == plan.kappas[0])].iterrows():
        cell = per[r["setting"]][r["algorithm"]]
        cell["clean"] = {m: _number(r[f"{m}_mean"]) for m in METRICS}
    top = max(nonzero)
    at_top = mpu[mpu["kappa"] == top]
    met = {
        f"{r['setting']}/{r['algorithm']}": bool(r["degradation_pct_mean"] <= TARGET_PCT) for _, r in at_top.iterrows()
    }
    zero = runs[runs["kappa"] == 0.0]
    key = ["setting", "seed", "algorithm"]
    z_clean = zero[zero["mode"] == "clean"].set_index(key)["score"]
    z_mpu = zero[zero["mode"] == "mpu"].set_index(key)["score"]
    return {
        "average_degradation_pct": average(mpu),
        "average_degradation_noised_pct": average(noised),
        "average_abs_degradation_pct": {
            _key(k): _number(mpu[mpu["kappa"] == k]["degradation_pct_mean"].abs().mean()) for k in nonzero
        },
        "by_setting": {
            s: {"mpu": average(mpu[mpu["setting"] == s]), "noised": average(noised[noised["setting"] == s])}
            for s in mpu["setting"].unique()
        },
        "per_algorithm": per,
        "target": {
            "degradation_pct": TARGET_PCT,
            "kappa": top,
            "met": met,
            "met_count": int(sum(met.values())),
            "cells": len(met),
            "all_met": bool(all(met.values())) if met else False,
        },
        "kappa0_max_abs_score_diff_mpu_vs_clean": _number((z_mpu - z_clean.reindex(z_mpu.index)).abs().max())
        if 0.0 in plan.kappas
        else None,
        "references": {
            s: {
                m: {k: _number(g[k].mean()) for k in METRICS}
                for m, g in refs[refs["setting"] == s].groupby("model", sort=False)
            }
            for s in refs["setting"].unique()
        },
        "algorithms": list(plan.algorithms),
        "kappas": list(plan.kappas),
        "seeds": list(plan.seeds),
        "settings": {s.name: {"model": s.model_kwargs, "data": s.data, "mpu": s.mpu} for s in plan.settings},
        "lr_scale": {a: LR_SCALE.get(a, 1.0) for a in plan.algorithms},
    }


def summarise_attack(attack, cost, screen) -> dict:
    out: dict = {}
    if attack is not None and not attack.empty:
        out["attack"] = {
            f"{r['setting']}|kappa={_key(r['kappa'])}|m={r['copies']}|{r['defence']}": {
                k: _number(r[k])
                for k in (
                    "reconstruction_error",
                    "copy0_error",
                    "reconstructed_utility",
                    "copy0_utility",
                    "theta_utility",
                )
            }
            for _, r in attack.iterrows()
        }
    if cost is not None and not cost.empty:
        out["defence_cost"] = {
            f"{r['setting']}|{r['algorithm']}|{r['defence']}": _number(r["degradation_pct"]) for _, r in cost.iterrows()
        }
    if screen is not None and not screen.empty:
        rates = screen.groupby(["setting", "client"], sort=False)["flagged"].agg(["mean", "size"])
        out["screen"] = {
            f"{s}|{c}": {"flag_rate": _number(r["mean"]), "trials": int(r["size"])} for (s, c), r in rates.iterrows()
        }
    return out


# ---------------------------------------------------------------------------------------------------
# figures and the report


def plot_degradation(agg, path: Path, plan: Plan) -> Path:
    """Per setting: MPU's and Noised's degradation against clean (percent of S) at each κ, per algorithm."""
    import matplotlib
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(agg["setting"]))
    colours = matplotlib.colormaps["tab10"]
    with paper_style():
        fig = Figure(figsize=(5 * len(settings), 3.8))
        axes = fig.subplots(1, len(settings), squeeze=False)[0]
        for ax, setting in zip(axes, settings, strict=True):
            part = agg[agg["setting"] == setting]
            n = len(plan.algorithms)
            for i, alg in enumerate(plan.algorithms):
                for mode, marker, fill in (("mpu", "o", True), ("noised", "s", False)):
                    rows = part[(part["algorithm"] == alg) & (part["mode"] == mode)].sort_values("kappa")
                    if rows.empty:
                        continue
                    x = np.arange(len(rows)) + (i - (n - 1) / 2) * 0.07 + (0.02 if mode == "noised" else 0)
                    ax.errorbar(
                        x,
                        rows["degradation_pct_mean"],
                        yerr=rows["degradation_pct_std"].fillna(0),
                        fmt=marker,
                        ms=4,
                        color=colours(i),
                        mfc=colours(i) if fill else "none",
                        capsize=2,
                        lw=0.8,
                        label=f"{alg} ({'MPU' if mode == 'mpu' else 'noised'})",
                    )
            ax.axhline(TARGET_PCT, color="black", ls="--", lw=0.8, label=f"target {TARGET_PCT:g} %")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_xticks(range(len(plan.kappas)), [f"κ = {k:g}" for k in plan.kappas])
            ax.set_xlabel("noise scale κ (noise RMS per tensor ÷ tensor RMS)")
            ax.set_ylabel("degradation vs clean (% of score S)")
            ax.set_title(f"{setting}\nfilled: MPU; hollow: one noised copy (mean ± std over seeds)")
            ax.grid(axis="y")
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=1)
        return save_figure(fig, path)


def plot_attack(attack, path: Path) -> Path:
    """Reconstruction error of θ against κ, one line per m × defence (κ is numeric: lines join its values)."""
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(attack["setting"]))
    with paper_style():
        fig = Figure(figsize=(5 * len(settings), 3.6))
        axes = fig.subplots(1, len(settings), squeeze=False)[0]
        styles = {"none": "-", "common-noise": "--", "independent-noise": ":"}
        for ax, setting in zip(axes, settings, strict=True):
            part = attack[attack["setting"] == setting]
            for (m, defence), g in part.groupby(["copies", "defence"], sort=False):
                g = g.sort_values("kappa")
                ax.plot(g["kappa"], g["reconstruction_error"], styles.get(defence, "-"), marker="o", ms=3,
                        label=f"m = {m}, defence {defence}")  # fmt: skip
            copy0 = part[part["defence"] == "none"].groupby("kappa")["copy0_error"].mean()
            ax.plot(
                copy0.index, copy0.values, color="black", lw=0.8, marker="x", label="one copy as received, no defence"
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("noise scale κ (noise RMS per tensor ÷ tensor RMS)")
            ax.set_ylabel("relative L2 error ‖θ̂ − θ‖ / ‖θ‖")
            ax.set_title(f"{setting}\nclient-side reconstruction of θ from its copies")
            ax.grid(which="both")
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
        return save_figure(fig, path)


def _pm(mean, std, digits=2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    s = f"{mean:+.{digits}f}"
    return s if std is None or (isinstance(std, float) and math.isnan(std)) else f"{s} ± {std:.{digits}f}"


def write_report(out: Path) -> Path:
    """report.md from the files in ``out``."""
    import pandas as pd

    summary = json.loads((out / "summary.json").read_text())
    agg = pd.read_csv(out / "mpu.csv")
    lines = [
        "# MPU: unlearning on perturbed copies against unlearning on θ",
        "",
        "Generated by `benchmarks/mpu.py` (definitions in docs/mpu.md). Score S = ½·(utility + 1 − forget accuracy);",
        "a mode's degradation = 100·(S_clean − S_mode)/S_clean, per algorithm, κ and seed (positive: worse than clean),",
        f"then mean ± std over seeds {summary['seeds']}.",
        "",
        "## Average degradation of MPU against clean (mean over algorithms)",
        "",
        "| setting | "
        + " | ".join(f"MPU κ={k}" for k in summary["average_degradation_pct"])
        + " | "
        + " | ".join(f"noised κ={k}" for k in summary["average_degradation_noised_pct"])
        + " |",
        "|---|" + "---|" * (2 * len(summary["average_degradation_pct"])),
    ]
    for s, d in summary["by_setting"].items():
        lines.append(
            f"| {s} | "
            + " | ".join(_pm(v, None) + " %" for v in d["mpu"].values())
            + " | "
            + " | ".join(_pm(v, None) + " %" for v in d["noised"].values())
            + " |"
        )
    lines.append(
        "| **all** | "
        + " | ".join(_pm(v, None) + " %" for v in summary["average_degradation_pct"].values())
        + " | "
        + " | ".join(_pm(v, None) + " %" for v in summary["average_degradation_noised_pct"].values())
        + " |"
    )
    t = summary["target"]
    lines += [
        "",
        f"Target: MPU within {t['degradation_pct']:g} % of clean at κ = {t['kappa']:g}, per algorithm — met in "
        f"**{t['met_count']} of {t['cells']}** setting × algorithm cells"
        + (" (all)." if t["all_met"] else ": " + ", ".join(k for k, v in t["met"].items() if not v) + " miss it."),
        f"MPU at κ = 0 against clean: largest |ΔS| over all runs = {summary['kappa0_max_abs_score_diff_mpu_vs_clean']:.2e}.",
        "",
    ]
    for s, refs in summary["references"].items():
        th, re = refs.get("theta", {}), refs.get("retrain", {})
        lines += [
            f"## {s}",
            "",
            f"θ before unlearning: utility {th.get('utility_acc', float('nan')):.3f}, forget accuracy "
            f"{th.get('forget_acc', float('nan')):.3f}, RMIA AUC {th.get('mia_auc', float('nan')):.3f}; retrained "
            f"without D_f: utility {re.get('utility_acc', float('nan')):.3f}, forget accuracy "
            f"{re.get('forget_acc', float('nan')):.3f}, RMIA AUC {re.get('mia_auc', float('nan')):.3f}.",
            "",
            "| algorithm | clean utility | clean forget acc | clean RMIA AUC | κ | MPU degradation % | noised degradation % "
            "| MPU utility | MPU forget acc | MPU RMIA AUC |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        part = agg[agg["setting"] == s]
        for alg in dict.fromkeys(part["algorithm"]):
            a = part[part["algorithm"] == alg]
            c = a[a["mode"] == "clean"].iloc[0]
            for k in sorted(a["kappa"].unique()):
                mp = a[(a["mode"] == "mpu") & (a["kappa"] == k)].iloc[0]
                no = a[(a["mode"] == "noised") & (a["kappa"] == k)].iloc[0]
                first = k == sorted(a["kappa"].unique())[0]
                lines.append(
                    f"| {alg if first else ''} | "
                    + (
                        f"{c['utility_acc_mean']:.3f} | {c['forget_acc_mean']:.3f} | {c['mia_auc_mean']:.3f}"
                        if first
                        else " | | "
                    )
                    + f" | {k:g} | {_pm(mp['degradation_pct_mean'], mp['degradation_pct_std'])} | "
                    f"{_pm(no['degradation_pct_mean'], no['degradation_pct_std'])} | {mp['utility_acc_mean']:.3f} | "
                    f"{mp['forget_acc_mean']:.3f} | {mp['mia_auc_mean']:.3f} |"
                )
        lines.append("")
    lines += ["![degradation](degradation.png)", ""]
    if (out / "attack.csv").exists():
        lines += _attack_report(out)
    machine = json.loads((out / "machine.json").read_text()) if (out / "machine.json").exists() else {}
    lines += [
        "## Machine and time",
        "",
        f"{machine.get('cpu', machine.get('processor', '?'))}, torch threads {machine.get('torch_threads')}, "
        f"torch {machine.get('torch')}; wall time {summary.get('wall_s', float('nan')):.0f} s "
        f"({'quick' if summary.get('quick') else 'full'} plan{', with --attack' if summary.get('attack') else ''}).",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _attack_report(out: Path) -> list[str]:
    import pandas as pd

    attack = pd.read_csv(out / "attack.csv")
    lines = [
        "## Privacy: the client reconstructs θ from its copies",
        "",
        "The client knows m, the α's (1, 2, 4, …) and the scheme; it aligns the copies' hidden units and heads and",
        "takes the harmonic combination (`zkapex_flwr.mpu.attack.reconstruct`). Error: ‖θ̂ − θ‖/‖θ‖ after aligning θ̂",
        "to θ (up to function-preserving reparameterization). Utility: the reconstructed model's held-out accuracy",
        "(θ's own in the last column); `copy 0` is what the client holds without any attack.",
        "",
        "| setting | κ | m | defence | reconstruction error | copy 0 error | reconstructed utility | copy 0 utility "
        "| θ utility |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in attack.iterrows():
        d = r["defence"] if r["defence"] == "none" else f"{r['defence']} ({r['defence_kappa']:g})"
        lines.append(
            f"| {r['setting']} | {r['kappa']:g} | {r['copies']} | {d} | {r['reconstruction_error']:.2e} | "
            f"{r['copy0_error']:.2e} | {r['reconstructed_utility']:.3f} | {r['copy0_utility']:.3f} | "
            f"{r['theta_utility']:.3f} |"
        )
    none = attack[attack["defence"] == "none"]
    lines += [
        "",
        f"Without a defence the largest reconstruction error is {none['reconstruction_error'].max():.2e} "
        f"(smallest single-copy error {none['copy0_error'].min():.2e}): the client recovers the server's model.",
        "",
        "![attack](attack.png)",
        "",
    ]
    if (out / "defence_cost.csv").exists():
        cost = pd.read_csv(out / "defence_cost.csv")
        lines += [
            "What each defence costs MPU (κ = 0.1, m = 3, one seed): degradation against clean, percent of S.",
            "",
            "| setting | algorithm | defence | MPU degradation % | MPU utility | MPU forget acc |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in cost.iterrows():
            d = r["defence"] if r["defence"] == "none" else f"{r['defence']} ({r['defence_kappa']:g})"
            lines.append(
                f"| {r['setting']} | {r['algorithm']} | {d} | {r['degradation_pct']:+.2f} | {r['mpu_utility_acc']:.3f} "
                f"| {r['mpu_forget_acc']:.3f} |"
            )
        lines.append("")
    if (out / "screen.csv").exists():
        screen = pd.read_csv(out / "screen.csv")
        lines += [
            f"## Consistency screen (`zkapex_flwr.mpu.screen`, threshold {screen['threshold'].iloc[0]:g})",
            "",
            "| setting | client | flag rate | replies | mean score |",
            "|---|---|---|---|---|",
        ]
        for (s, c), g in screen.groupby(["setting", "client"], sort=False):
            label = "honest (false-positive rate)" if c == "honest" else c
            lines.append(f"| {s} | {label} | {g['flagged'].mean():.2f} | {len(g)} | {g['score'].mean():.3f} |")
        lines += [
            "",
            "`other data`: the algorithm run honestly on every copy, but on a retain-set sample instead of the forget set —",
            "its updates agree with each other like an honest client's, which is all the screen checks.",
            "",
        ]
    return lines


# ---------------------------------------------------------------------------------------------------


def run(out: Path, quick: bool = False, attack: bool = False) -> dict:
    """Run the plan (``quick``: tiny models, one seed, two algorithms) and write every output into ``out``."""
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = QUICK if quick else FULL
    bench = Bench(plan)
    t0 = time.perf_counter()
    runs, refs = bench.grid()
    agg = aggregate(runs)
    runs.to_csv(out / "mpu_runs.csv", index=False)
    agg.to_csv(out / "mpu.csv", index=False)
    refs.to_csv(out / "references.csv", index=False)
    summary = summarise(runs, agg, refs, plan)
    if attack:
        attack_rows, cost = bench.attack()
        screen = bench.screen()
        attack_rows.to_csv(out / "attack.csv", index=False)
        cost.to_csv(out / "defence_cost.csv", index=False)
        screen.to_csv(out / "screen.csv", index=False)
        summary.update(summarise_attack(attack_rows, cost, screen))
        if not attack_rows.empty:
            plot_attack(attack_rows, out / "attack.png")
    summary.update(quick=quick, attack=attack, wall_s=time.perf_counter() - t0)
    machine = describe_machine()
    summary["machine"] = machine
    (out / "machine.json").write_text(json.dumps(machine, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_degradation(agg, out / "degradation.png", plan)
    write_report(out)
    bench.log(f"wrote {out}: average MPU degradation {summary['average_degradation_pct']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/results/mpu")
    parser.add_argument("--quick", action="store_true", help="tiny models, one seed, two algorithms (CI smoke test)")
    parser.add_argument("--attack", action="store_true", help="also the reconstruction attack and the screen")
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from the files in --out")
    args = parser.parse_args(argv)
    if args.report_only:
        print(write_report(Path(args.out)).read_text())
    else:
        run(Path(args.out), args.quick, args.attack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
