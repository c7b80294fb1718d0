"""The quality benchmark's quick mode end to end, and the run cache it relies on."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import unlearning_quality as uq  # noqa: E402
from zkapex_flwr.pipeline import RunCache, preset, run_local  # noqa: E402
from zkapex_flwr.unlearning import SIZING_FRACTIONS  # noqa: E402
from zkapex_flwr.unlearning.scope import DEFAULT_SCOPE, VERIFIED_LM_SCOPE  # noqa: E402

TINY = dict(
    backbone="none",
    num_clients=2,
    global_epochs=2,
    personal_epochs=2,
    domain_shift="mild",
    model_kwargs=dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
)


def test_run_cache_reuses_models_and_keeps_their_cost():
    from rich.console import Console

    quiet = Console(quiet=True)
    cache = RunCache()
    cfg = preset("vit", "digits", **TINY)
    first = run_local(cfg, console=quiet, cache=cache)
    assert cache.hits == 0
    again = run_local(cfg, console=quiet, cache=cache)
    assert cache.hits >= 5  # data, θg, θp, Fisher, saliency, ... all reused
    for key in uq.METRICS[:-1]:
        assert again[key] == pytest.approx(first[key])
    assert (
        again["baselines"]["zk-apex-paper"]["forget_acc_after"]
        == first["baselines"]["zk-apex-paper"]["forget_acc_after"]
    )
    # the retrain baseline still reports what retraining cost, not the cache lookup
    assert again["baselines"]["retrain"]["client_s"] == pytest.approx(first["baselines"]["retrain"]["client_s"])
    assert again["baselines"]["retrain"]["client_s"] == pytest.approx(
        first["timings_s"]["retrain global"] + first["timings_s"]["retrain personalize"]
    )
    assert first["timings_s"]["retrain global"] > 0 and again["wall_s"] < first["wall_s"]
    # another client shares θg but not θp: its personalization is new work
    other = run_local(replace(cfg, client_id=1, baselines=()), console=quiet, cache=cache)
    assert other["timings_s"]["global training"] == pytest.approx(first["timings_s"]["global training"])
    assert other["data"]["client_train"] != first["data"]["client_train"]
    # a different damping reuses the Fisher but gives another update
    damped = run_local(replace(cfg, damping=10.0, baselines=()), console=quiet, cache=cache)
    assert damped["timings_s"]["client fisher"] == pytest.approx(first["timings_s"]["client fisher"])
    assert damped["kkt_max_residual"] < 1e-8


def test_domain_shift_kinds_and_bad_kind():
    from zkapex_flwr.data.images import DomainShift

    assert DomainShift.for_client(0, 0, "style").invert
    assert not DomainShift.for_client(0, 0, "mild").invert
    assert DomainShift.for_client(0, 0, "none") == DomainShift()
    with pytest.raises(ValueError, match="unknown domain shift 'sepia'"):
        DomainShift.for_client(0, 0, "sepia")


def test_federation_wide_class_request_drops_the_clients_own_samples():
    import torch

    from zkapex_flwr.data.images import image_splits

    kept = image_splits("digits", client_id=0, num_clients=2, forget_classes_=(3,), seed=0)
    dropped = image_splits(
        "digits", client_id=0, num_clients=2, forget_classes_=(3,), seed=0, client_keeps_forget=False
    )
    assert (kept.client_retain.tensors[1] == 3).any()
    assert not (dropped.client_retain.tensors[1] == 3).any()
    assert torch.equal(dropped.client_train.tensors[1], kept.client_train.tensors[1])  # the Fisher's data is unchanged
    assert len(dropped.client_retain) == int((kept.client_train.tensors[1] != 3).sum())


@pytest.mark.slow
def test_quality_benchmark_quick(tmp_path):
    summary = uq.run(tmp_path, quick=True)
    for name in (
        "quality_runs.csv",
        "quality.csv",
        "quality.png",
        "frontier.csv",
        "frontier.png",
        "proof_cost.csv",
        "report.md",
        "summary.json",
        "machine.json",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    runs = pd.read_csv(tmp_path / "quality_runs.csv")
    for setting in uq.QUICK.settings:
        methods = set(runs[runs["setting"] == setting.name]["method"])
        expected = set(uq.METHODS) - (set() if setting.model == "vit" and "class" in setting.name else {"head-row"})
        assert methods == expected, setting.name
    assert runs[list(uq.METRICS)].notna().all().all()
    # the LM setting ran in the second process (Plan.side); its rows come back in plan order
    assert uq.QUICK.side and list(dict.fromkeys(runs["setting"])) == [s.name for s in uq.QUICK.settings]
    # the sample request's mask was sized by the provider; the class request's is the fixed fraction
    verified = runs[runs["method"] == "verified"].set_index("setting")
    assert verified.loc["vit-digits-samples", "mask_fraction"] in SIZING_FRACTIONS
    fixed = uq._cfg(uq.QUICK.settings[0], 0, 0)
    assert fixed.mask_sizing == "fixed" and verified.loc[uq.QUICK.settings[0].name, "mask_fraction"] == (
        fixed.mask_fraction
    )
    # the retrain row is the reference of the gap columns
    retrain = runs[runs["method"] == "retrain"]
    assert (retrain["forget_gap_to_retrain"] == 0).all() and (retrain["mia_gap_to_retrain"] == 0).all()
    # summary.json: the machine-readable headline, keyed by setting then method
    saved = json.loads((tmp_path / "summary.json").read_text())
    for setting in uq.QUICK.settings:
        methods = saved["headline"][setting.name]["methods"]
        for key in ("recovery", "forget_acc_after", "forget_gap_to_retrain", "mia_auc", "mia_tpr_at_1pct_fpr", "runs"):
            assert key in methods["verified"] and key in methods["retrain"], key
        assert methods["retrain"]["forget_gap_to_retrain"] == 0 and methods["no-op"]["recovery"] == 1
    # the frontier holds the verified grid and every baseline's point
    frontier = pd.read_csv(tmp_path / "frontier.csv")
    assert len(frontier[(frontier["method"] == "verified") & (frontier["point"] != "default")]) == len(
        uq.QUICK.settings
    ) * len(uq.QUICK.frontier["mask_fraction"]) * len(uq.QUICK.frontier["damping"])
    # both masks were proven and verified by the real verifier under the same budget
    proof = pd.read_csv(tmp_path / "proof_cost.csv")
    assert set(proof["method"]) == {"verified", "zk-apex-paper"} and (proof["verdict"] == "compliant").all()
    # ... for the image classifier and for the language model, whose verified scope is both MLP projections
    assert set(proof["setting"]) == {uq.QUICK.settings[0].name, "opt-stdlib-code-package-federation"}
    lm = proof[proof["setting"] == "opt-stdlib-code-package-federation"].set_index("method")
    assert lm.loc["verified", "scope"] == VERIFIED_LM_SCOPE and lm.loc["zk-apex-paper", "scope"] == DEFAULT_SCOPE
    assert (proof["touched_blocks"] <= uq.QUICK.proof["max_blocks"]).all()
    assert summary["proof_cost"][0]["verify_vs_retrain"] == pytest.approx(
        proof["retrain_s"][0] / (proof["verify_ms"][0] / 1000)
    )


def test_held_out_targets_leave_the_tuning_seed_out():
    rows = []
    for seed, recovery in ((uq.TUNING_SEED, 1.0), (uq.TUNING_SEED + 1, 0.5)):
        for method, forget in (("verified", 0.1), ("retrain", 0.0), ("no-op", 0.9)):
            row = {m: 0.5 for m in uq.METRICS}
            row.update(setting="vit-mnist-class-federation", method=method, seed=seed, client=0)
            row.update(recovery=recovery if method == "verified" else 1.0, forget_acc_after=forget)
            rows.append(row)
    runs = uq.with_gap(pd.DataFrame(rows))
    held = uq.held_out(runs)
    assert held["excluded_seed"] == uq.TUNING_SEED and held["runs"] == {"vit-mnist-class-federation": 1}
    row = held["targets"]["vit-mnist-class-federation"]
    assert row["recovery"] == 0.5 and not row["recovery_ok"]  # the tuning seed's 1.0 is not averaged in
    assert row["forget_gap_to_retrain"] == pytest.approx(0.1)
    assert uq.held_out(runs[runs["seed"] == uq.TUNING_SEED])["targets"] == {}
