"""The MPU benchmark's quick mode end to end: its files, its keys, and MPU at κ = 0 being the clean run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import mpu as bench  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpu")
    summary = bench.run(out, quick=True, attack=True)
    return out, summary


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_quick_writes_every_output(quick):
    out, summary = quick
    for name in (
        "mpu.csv",
        "mpu_runs.csv",
        "summary.json",
        "report.md",
        "degradation.png",
        "machine.json",
        "attack.csv",
        "attack.png",
        "screen.csv",
        "defence_cost.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["average_degradation_pct"] == summary["average_degradation_pct"]
    assert set(on_disk["average_degradation_pct"]) == {"0.01", "0.1"}
    assert all(_finite(v) for v in on_disk["average_degradation_pct"].values())
    assert all(_finite(v) for v in on_disk["average_degradation_noised_pct"].values())
    report = (out / "report.md").read_text()
    assert "Average degradation" in report and "reconstruct" in report and "Consistency screen" in report


def test_runs_cover_the_grid_with_finite_metrics(quick):
    out, _ = quick
    runs = pd.read_csv(out / "mpu_runs.csv")
    plan = bench.QUICK
    assert len(runs) == len(plan.settings) * len(plan.seeds) * len(plan.algorithms) * len(plan.kappas) * 3
    assert set(runs["mode"]) == set(bench.MODES)
    for col in bench.METRICS + ("degradation_pct",):
        assert runs[col].map(_finite).all(), col
    assert (runs[runs["mode"] == "clean"]["degradation_pct"] == 0).all()
    # the clean runs did something: the forget accuracy of θ went down on the ViT
    refs = pd.read_csv(out / "references.csv")
    theta = refs[(refs["model"] == "theta") & (refs["setting"] == "vit-digits-class")]["forget_acc"].iloc[0]
    clean = runs[(runs["mode"] == "clean") & (runs["setting"] == "vit-digits-class")]["forget_acc"]
    assert (clean < theta - 0.2).all()


def test_mpu_at_kappa_zero_is_the_clean_run(quick):
    out, summary = quick
    runs = pd.read_csv(out / "mpu_runs.csv")
    zero = runs[runs["kappa"] == 0.0].set_index(["setting", "seed", "algorithm", "mode"])
    for col in ("utility_acc", "forget_acc", "mia_auc", "forget_loss"):
        diff = (zero.xs("mpu", level="mode")[col] - zero.xs("clean", level="mode")[col]).abs()
        assert (diff <= 1e-3 * (1 + zero.xs("clean", level="mode")[col].abs())).all(), col
    assert summary["kappa0_max_abs_score_diff_mpu_vs_clean"] <= 1e-3
    # at κ > 0 the noise does change the result (the comparison is not vacuous)
    noisy = runs[runs["kappa"] == 0.1].set_index(["setting", "seed", "algorithm", "mode"])["forget_loss"]
    assert (noisy.xs("mpu", level="mode") != noisy.xs("clean", level="mode")).any()


def test_attack_and_screen_tables(quick):
    out, summary = quick
    attack = pd.read_csv(out / "attack.csv")
    ap = bench.QUICK.attack
    assert len(attack) == len(ap.settings) * len(ap.kappas) * len(ap.copies) * len(ap.defences)
    for col in ("reconstruction_error", "copy0_error", "reconstructed_utility", "copy0_utility"):
        assert attack[col].map(_finite).all(), col
    none = attack[attack["defence"] == "none"]
    # the attack beats holding one copy: it cancels the zero-sum noise
    assert (none["reconstruction_error"] < none["copy0_error"]).all()
    screen = pd.read_csv(out / "screen.csv")
    assert {"honest", "garbage", "zero update", "other data"} <= set(screen["client"])
    assert screen[screen["client"] == "zero update"]["flagged"].all()
    assert set(summary["screen"]) >= {"vit-digits-class|honest", "vit-digits-class|garbage"}


def test_degradation_definition():
    assert bench.degradation(0.8, 0.792) == pytest.approx(1.0)
    assert bench.degradation(0.8, 0.88) == pytest.approx(-10.0)
    runs = pd.DataFrame(
        [
            dict(
                setting="s",
                seed=0,
                algorithm="ga",
                kappa=0.1,
                mode=m,
                score=v,
                utility_acc=v,
                forget_acc=0,
                mia_auc=0.5,
            )
            for m, v in (("clean", 0.5), ("mpu", 0.45), ("noised", 0.55))
        ]
    )
    got = bench.with_degradation(runs).set_index("mode")["degradation_pct"]
    assert got["clean"] == 0 and got["mpu"] == pytest.approx(10.0) and got["noised"] == pytest.approx(-10.0)
