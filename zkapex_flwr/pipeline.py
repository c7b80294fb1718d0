"""The one-client ZK-APEX pipeline and its baselines, measured in the same run.

train global θg (provider) → personalize θp (client) → client Fisher (phase 2, before any request)
→ provider saliency and mask on θg with D_f → client Group-OBS → θu, then the same metrics for the
baselines: no-op, mask-only, mask + fine-tune, retrain-from-scratch without D_f then re-personalize.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data.splits import UnlearningSplits
from .metrics import quality
from .models import build_opt, build_vit, clone_model
from .tasks import task_for
from .training import seed_everything, train
from .unlearning import (BlockFisher, BlockLayout, UnlearningMask, certificate_residual, compute_update, mask_only,
                         saliency_scores, select_mask, write_update)

METRIC_KEYS = ("personalization_acc_before", "personalization_acc_after", "recovery", "forget_acc_before",
               "forget_acc_after", "mia_auc_before", "mia_auc_after", "kkt_max_residual", "client_s")


@dataclass
class LocalConfig:
    """Everything one ``zkapex local`` run depends on. Presets per model/dataset in :func:`preset`."""

    model: str = "vit"
    dataset: str = "digits"
    seed: int = 0
    # unlearning
    mask_fraction: float = 0.04
    block_size: int = 64
    max_blocks: int | None = None
    mask_group: tuple[int, int] | None = None  # (G, K): column-structured mask, see select_mask
    damping: float = 0.01
    num_grads: int | None = 512
    fisher_data: str = "train"       # "train": all client data (committed before the request); "retain"
    saliency: str = "margin"
    saliency_gamma: float = 0.1
    scope: str = r"(^|\.)fc1\.weight$"
    # request
    forget_mode: str = "class"       # class | samples (images), package (code)
    forget_classes: tuple[int, ...] = (3,)
    forget_count: int = 60
    forget_package: str = "json"
    # data / federation
    num_clients: int = 2
    client_id: int = 0
    alpha: float = 1.0
    domain_shift: str = "style"      # images: DomainShift kind (style | mild | geometric | none)
    client_keeps_forget: bool = True  # class requests: False drops the client's own samples of the class too
    max_provider_seqs: int = 6000    # code data only
    max_client_seqs: int = 1500
    # model and training
    model_kwargs: dict = field(default_factory=dict)
    global_epochs: int = 40
    global_lr: float = 2e-3
    personal_epochs: int = 30
    personal_lr: float = 1e-3
    finetune_epochs: int = 3
    batch_size: int = 64
    baselines: tuple[str, ...] = ("no-op", "mask-only", "mask+finetune", "retrain")
    # proof (issue 3): register, prove and verify the client's update with EZKL
    prove: bool = False
    proof_slots: int = 2
    proof_steps_per_proof: int = 1
    proof_group: int = 1             # G blocks per proof unit (pair with mask_group=(G, K))


def preset(model: str, dataset: str, **overrides) -> LocalConfig:
    """Defaults tuned so each run takes a few minutes on a 2-core CPU."""
    combos = {
        ("vit", "digits"): dict(model_kwargs=dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
                                num_clients=2, global_epochs=40, personal_epochs=30),
        ("vit", "mnist"): dict(model_kwargs=dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
                               num_clients=3, global_epochs=15, personal_epochs=15),
        ("opt", "stdlib-code"): dict(model_kwargs=dict(hidden=128, layers=4, ffn=512, heads=4), num_clients=4,
                                     forget_mode="package", global_epochs=4, global_lr=2e-3, personal_epochs=4,
                                     personal_lr=1e-3, finetune_epochs=1, num_grads=512, batch_size=32),
    }
    if (model, dataset) not in combos:
        raise ValueError(f"no preset for model '{model}' on dataset '{dataset}'; "
                         f"choose one of {sorted(combos)}")
    cfg = LocalConfig(model=model, dataset=dataset, **combos[(model, dataset)])
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"unknown config option '{key}'")
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def build_splits(cfg: LocalConfig) -> tuple[UnlearningSplits, dict]:
    """The experiment's data and the model-building arguments it implies."""
    if cfg.dataset in ("digits", "mnist"):
        from .data.images import image_splits

        if cfg.forget_mode not in ("class", "samples"):
            raise ValueError(f"forget_mode '{cfg.forget_mode}' does not apply to images; use class or samples")
        splits = image_splits(cfg.dataset, client_id=cfg.client_id, num_clients=cfg.num_clients, alpha=cfg.alpha,
                              forget_mode=cfg.forget_mode, forget_classes_=cfg.forget_classes,
                              forget_count=cfg.forget_count, seed=cfg.seed, shift_kind=cfg.domain_shift,
                              client_keeps_forget=cfg.client_keeps_forget)
        return splits, {"image_shape": tuple(splits.meta["image_shape"]), "num_classes": 10}
    if cfg.dataset == "stdlib-code":
        from .data.code import code_splits

        if cfg.forget_mode != "package":
            raise ValueError(f"forget_mode '{cfg.forget_mode}' does not apply to code; use package")
        splits, tok = code_splits(client_id=cfg.client_id, num_clients=cfg.num_clients,
                                  forget_package_=cfg.forget_package, seed=cfg.seed,
                                  max_provider_seqs=cfg.max_provider_seqs, max_client_seqs=cfg.max_client_seqs)
        return splits, {"vocab_size": len(tok), "seq_len": splits.meta["seq_len"]}
    raise ValueError(f"unknown dataset '{cfg.dataset}'; choose digits, mnist or stdlib-code")


class RunCache:
    """Reuse the expensive pieces of a run (data, θg, θp, Fisher, saliency, prover) across runs of one process.

    A benchmark that runs many configurations on the same seed and client trains θg and the retrained
    global model once per seed and θp once per client. Each entry keeps the seconds it took when it was
    made, so a method's reported client seconds stay what that method costs. Keys hold every config
    field the entry depends on; cached models are never modified (every use clones them).
    """

    def __init__(self) -> None:
        self._store: dict[tuple, object] = {}
        self.hits = 0

    def get(self, key: tuple, make):
        if key in self._store:
            self.hits += 1
        else:
            self._store[key] = make()
        return self._store[key]

    def clear(self) -> None:
        self._store.clear()


def _keys(cfg: LocalConfig) -> dict[str, tuple]:
    data = ("data", cfg.model, cfg.dataset, cfg.seed, cfg.client_id, cfg.num_clients, cfg.alpha,
            (cfg.domain_shift, cfg.client_keeps_forget), cfg.forget_mode, tuple(cfg.forget_classes), cfg.forget_count,
            cfg.forget_package, cfg.max_provider_seqs, cfg.max_client_seqs)
    model = (tuple(sorted(cfg.model_kwargs.items())), cfg.global_epochs, cfg.global_lr, cfg.batch_size)
    glob = ("global",) + data[1:4] + data[5:6] + data[8:] + model  # provider data does not depend on the client
    personal = ("personal", data, model, cfg.personal_epochs, cfg.personal_lr)
    fisher = ("fisher", personal, cfg.block_size, cfg.scope, cfg.num_grads, cfg.fisher_data)
    return {"data": data, "global": glob, "retrain-global": ("retrain",) + glob, "personal": personal,
            "retrain-personal": ("retrain",) + personal, "quality": ("quality",) + personal, "fisher": fisher,
            "scores": ("scores", glob, cfg.block_size, cfg.scope, cfg.saliency, cfg.saliency_gamma),
            "prover": ("prover", fisher, cfg.damping, cfg.proof_slots, cfg.proof_steps_per_proof, cfg.proof_group)}


def build_model(cfg: LocalConfig, model_args: dict, seed: int) -> nn.Module:
    if cfg.model == "vit":
        if "image_shape" not in model_args:
            raise ValueError(f"model 'vit' needs an image dataset, got '{cfg.dataset}'")
        return build_vit(model_args["image_shape"], model_args["num_classes"], seed=seed, **cfg.model_kwargs)
    if cfg.model == "opt":
        if "vocab_size" not in model_args:
            raise ValueError(f"model 'opt' needs a code dataset, got '{cfg.dataset}'")
        return build_opt(model_args["vocab_size"], model_args["seq_len"], seed=seed, **cfg.model_kwargs)
    raise ValueError(f"unknown model '{cfg.model}'; choose vit or opt")


def _row(before: dict, after: dict, residual: float, seconds: float) -> dict:
    return {"personalization_acc_before": before["personalization_acc"],
            "personalization_acc_after": after["personalization_acc"],
            "recovery": after["personalization_acc"] / max(before["personalization_acc"], 1e-12),
            "forget_acc_before": before["forget_acc"], "forget_acc_after": after["forget_acc"],
            "mia_auc_before": before["mia_auc"], "mia_auc_after": after["mia_auc"],
            "kkt_max_residual": residual, "client_s": seconds}


def run_local(cfg: LocalConfig, out_dir: str | Path | None = None, console=None, cache: RunCache | None = None) -> dict:
    """Run the whole one-client pipeline; return (and optionally write) ``metrics.json``.

    ``cache`` (a :class:`RunCache`) lets a benchmark reuse θg, θp, the Fisher and the rest across runs.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    cache = cache or RunCache()
    keys = _keys(cfg)
    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    splits, model_args = cache.get(keys["data"], lambda: build_splits(cfg))
    task = task_for(splits.task)
    timings: dict[str, float] = {}

    def log(msg: str) -> None:
        console.log(msg)

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        def timed(key: str, desc: str, make):
            """``make()`` once per cache key; ``timings[desc]`` is the seconds it took when it was made."""
            def run():
                t = time.perf_counter()
                value = make()
                return value, time.perf_counter() - t
            value, seconds = cache.get(keys[key], run)
            timings[desc] = seconds
            return value

        def fit(model, data, epochs, lr, desc, **kw):
            return train(model, task, data, epochs=epochs, lr=lr, batch_size=cfg.batch_size, seed=cfg.seed,
                         progress=progress, desc=desc, **kw)

        log(f"data: {splits.sizes()}")
        theta_g = timed("global", "global training", lambda: fit(build_model(cfg, model_args, cfg.seed),
                                                                  splits.provider_train, cfg.global_epochs,
                                                                  cfg.global_lr, "global training"))
        theta_p = timed("personal", "personalize", lambda: fit(clone_model(theta_g), splits.client_train,
                                                               cfg.personal_epochs, cfg.personal_lr, "personalize"))
        layout = BlockLayout.from_model(theta_p, cfg.block_size, cfg.scope)

        # phase 2: the client's Fisher, fixed before any request
        fisher_src = {"train": splits.client_train, "retain": splits.client_retain}.get(cfg.fisher_data)
        if fisher_src is None:
            raise ValueError(f"fisher_data must be 'train' or 'retain', got '{cfg.fisher_data}'")
        fisher = timed("fisher", "client fisher",
                       lambda: BlockFisher.estimate(theta_p, task, fisher_src, layout, num_grads=cfg.num_grads))

        # phase 3: the provider's mask, on θg
        scores = timed("scores", "provider saliency",
                       lambda: saliency_scores(theta_g, task, splits.forget, splits.provider_retain, layout,
                                               method=cfg.saliency, gamma=cfg.saliency_gamma))
        t = time.perf_counter()
        mask = select_mask(scores, layout, cfg.mask_fraction, cfg.max_blocks, cfg.mask_group)
        timings["provider mask"] = timings["provider saliency"] + time.perf_counter() - t
        log(f"mask: {len(mask)} of {layout.size} scope weights in {len(mask.touched_blocks())} of "
            f"{layout.n_blocks} blocks (d={layout.block_size})")

        # phase 4: the client's Group-OBS
        t = time.perf_counter()
        update = compute_update(theta_p, mask, fisher, cfg.damping)
        theta_u = clone_model(theta_p)
        write_update(theta_u, update, layout)
        timings["client group-obs"] = time.perf_counter() - t
        kkt = update.max_residual()

        blocks = update.blocks

        def cert(model: nn.Module) -> float:
            th = layout.flatten(model).reshape(-1, layout.block_size)[blocks]
            res = certificate_residual(update.theta_p, th, update.fisher, update.local_mask)
            return float(max(res["feasibility"].max(), res["stationarity"].max()))

        proof = (_prove_and_verify(cfg, theta_p, layout, fisher, mask, update, progress, log,
                                   lambda make: (timed("prover", "client register", make), timings["client register"]))
                 if cfg.prove else None)

        q_before = cache.get(keys["quality"], lambda: quality(theta_p, task, splits, cfg.seed))
        metrics = _row(q_before, quality(theta_u, task, splits, cfg.seed), kkt,
                       timings["client fisher"] + timings["client group-obs"])
        baselines: dict[str, dict] = {}
        for name in cfg.baselines:
            t = time.perf_counter()
            if name == "no-op":
                model = theta_p
            elif name == "mask-only":
                model = clone_model(theta_p)
                mask_only(model, mask)
            elif name == "mask+finetune":
                model = clone_model(theta_p)
                mask_only(model, mask)
                fit(model, splits.client_retain, cfg.finetune_epochs, cfg.personal_lr, "mask+finetune",
                    frozen_zero=_frozen(layout, mask))
            elif name == "retrain":
                retrained = timed("retrain-global", "retrain global",
                                  lambda: fit(build_model(cfg, model_args, cfg.seed), splits.provider_retain,
                                              cfg.global_epochs, cfg.global_lr, "retrain global"))
                model = timed("retrain-personal", "retrain personalize",
                              lambda: fit(clone_model(retrained), splits.client_retain, cfg.personal_epochs,
                                          cfg.personal_lr, "retrain personalize"))
            else:
                raise ValueError(f"unknown baseline '{name}'")
            seconds = time.perf_counter() - t
            if name == "retrain":  # what retraining costs, even when this process reused a cached model
                seconds = timings["retrain global"] + timings["retrain personalize"]
            baselines[name] = _row(q_before, quality(model, task, splits, cfg.seed), cert(model), seconds)
            timings[name] = seconds

    result = {**metrics, "baselines": baselines, **({"proof": proof} if proof else {}),
              "masked_weights": len(mask), "scope_weights": layout.size, "touched_blocks": int(len(blocks)),
              "fisher_blocks": layout.n_blocks, "block_size": layout.block_size, "fisher_samples": fisher.num_samples,
              "data": splits.sizes(), "data_meta": splits.meta, "timings_s": timings,
              "wall_s": time.perf_counter() - t_start, "config": asdict(cfg),
              "machine": _machine()}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "metrics.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out / "metrics.json")
        plot_local(result, out / "metrics.png")
    return result


def _prove_and_verify(cfg: LocalConfig, theta_p: nn.Module, layout: BlockLayout, fisher: BlockFisher,
                      mask: UnlearningMask, update, progress, log, timed_register) -> dict:
    """Phase 2 registration, phase 4 proving and phase 5 verification of this client's update.

    ``timed_register(make)`` returns the registered prover (cached across runs) and the seconds registering took.
    """
    import copy
    import warnings

    from .proof import ClientProver, Verifier

    warnings.filterwarnings("ignore", message="zkapex-flwr is using an INSECURE test SRS")
    registered, register_s = timed_register(lambda: ClientProver.register(
        theta_p, layout, fisher, cfg.damping, slots=cfg.proof_slots, steps_per_proof=cfg.proof_steps_per_proof,
        group_size=cfg.proof_group, progress=progress))
    prover = copy.copy(registered)  # unlearn() moves the copy's θ to θu; the registered prover stays at θp
    proven = clone_model(theta_p)
    bundle, report = prover.unlearn(proven, mask, request_id="local", progress=progress)
    data = bundle.to_bytes()
    verdict = Verifier(prover.circuit).verify(data, prover.registry, mask)
    gap = (layout.flatten(proven).reshape(-1, layout.block_size)[update.blocks] - update.result.theta_u).abs().max()
    log(f"proof: {verdict.reason}; {report.steps} steps in {report.proofs} proofs, prove {report.prove_s:.1f} s, "
        f"verify {verdict.verify_ms:.0f} ms, {len(data)} bytes")
    return {"verdict": verdict.reason, "detail": verdict.detail, "circuit": prover.circuit.spec.name(),
            "proof_units": report.blocks,
            "logrows": prover.circuit.logrows, "register_s": register_s, "setup_s": prover.circuit.setup_s,
            "prove_s": report.prove_s + report.witness_s, "verify_ms": verdict.verify_ms, "steps": report.steps,
            "proofs": report.proofs, "proof_bytes": report.proof_bytes, "bundle_bytes": len(data),
            "registry_bytes": len(prover.registry.to_bytes()), "peak_rss_mb": report.peak_rss_mb,
            "prove_ms_per_masked_weight": report.prove_ms_per_masked_weight,
            "proof_bytes_per_masked_weight": report.proof_bytes_per_masked_weight,
            "max_abs_gap_to_float64_update": float(gap)}


def _frozen(layout: BlockLayout, mask: UnlearningMask) -> dict[str, torch.Tensor]:
    dense = mask.dense()
    return {t.name: dense[t.offset:t.offset + t.numel].reshape(t.shape) for t in layout.tensors}


def _machine() -> dict:
    import os
    import platform

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__}


def plot_local(result: dict, path: Path) -> None:
    """Bar chart: personalization accuracy after, forget accuracy after and MIA AUC per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"ZK-APEX": result, **result["baselines"]}
    keys = [("personalization_acc_after", "personalization acc"), ("forget_acc_after", "forget acc"),
            ("mia_auc_after", "MIA AUC")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(keys)
    for j, (key, label) in enumerate(keys):
        ax.bar([i + j * width for i in range(len(rows))], [r[key] for r in rows.values()], width, label=label)
    ax.axhline(result["personalization_acc_before"], color="k", ls="--", lw=0.8, label="personalization acc before")
    ax.set_xticks([i + width for i in range(len(rows))], list(rows))
    ax.set_ylim(0, 1.05)
    cfg = result["config"]
    ax.set_title(f"{cfg['model']} on {cfg['dataset']}: {result['masked_weights']} masked weights, "
                 f"{result['touched_blocks']} blocks")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
