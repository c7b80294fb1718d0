"""Figures fit for a paper: labelled axes, a title, legends for several series, no line across categorical x,
rates in [0, 1], and NaN (not a drawn 0) where a ratio is undefined. No proofs, no Ray: tiny frames only."""

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle

from simulations.report import (
    _joined,
    _per_client,
    detection_rates,
    reason_counts,
    recovery_values,
    replot,
    report_figures,
)
from zkapex_flwr.figures import DPI

NAN = math.nan

# partition_id -> (behaviour, profile)
CLIENTS = {
    0: ("honest", "phone"),
    1: ("honest", "laptop"),
    2: ("honest", "phone"),
    3: ("late", "laptop"),
    4: ("garbage-proof", "phone"),
    5: ("garbage-proof", "laptop"),
    6: ("wrong-mask", "phone"),
    7: ("late", "phone"),
    8: ("late", "laptop"),
}  # late: honest, slow
# (partition, reason, personalization before/after, forget before/after, client recovery)
ROWS = [
    (0, "compliant", 0.9, 0.9, 0.8, 0.0, 1.0),
    (1, "compliant", 0.8, 0.88, 0.5, 0.1, 1.1),
    (2, "no-response", NAN, NAN, NAN, NAN, NAN),
    (3, "compliant", 0.5, 0.45, 0.4, 0.2, 0.9),
    (4, "invalid-proof", 0.9, 0.9, 0.8, 0.8, 1.0),
    (5, "invalid-proof", 0.9, 0.9, 0.8, 0.8, 1.0),
    (6, "compliant", 0.9, 0.9, 0.8, 0.8, 1.0),  # a cheater the verifier missed
    (7, "compliant", 0.0, 0.0, 0.0, 0.0, 0.0),  # accuracy 0 before and after: ratios undefined
    (8, "compliant", 0.0, 0.0, 0.0, 0.0, 0.0),
]


@pytest.fixture
def clients():
    return pd.DataFrame(
        [{"partition_id": p, "node_id": 100 + p, "behaviour": b, "profile": f} for p, (b, f) in CLIENTS.items()]
    )


@pytest.fixture
def ledger():
    return pd.DataFrame(
        [
            {
                "request_id": "r1",
                "node_id": 100 + p,
                "partition_id": p,
                "reason": reason,
                "compliant": reason == "compliant",
                "verify_ms": NAN if reason == "no-response" else 10.0 + p,
                "bundle_bytes": 0 if reason == "no-response" else 30_000 + p,
                "quarantined": False,
                "client_prove_s": NAN if reason == "no-response" else 2.0 + p / 10,
                "client_recovery": rec,
                "client_personalization_acc_before": pb,
                "client_personalization_acc_after": pa,
                "client_forget_acc_before": fb,
                "client_forget_acc_after": fa,
            }
            for p, reason, pb, pa, fb, fa, rec in ROWS
        ]
    )


@pytest.fixture
def reference():
    return pd.DataFrame(
        {
            "partition_id": [0, 1],
            "profile": ["phone", "laptop"],
            "retrain_forget_acc": [0.0, 0.05],
            "retrain_personalization_acc": [0.85, 0.8],
        }
    )


def _visible(fig):
    """The figure's drawn data axes (no colour bars, no blank 'no data' panels)."""
    return [ax for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>"]


def _check_labels(fig, name):
    axes = _visible(fig)
    assert axes, f"{name}: nothing drawn"
    for ax in axes:
        assert ax.get_xlabel().strip(), f"{name}: an axes without x label"
        assert ax.get_ylabel().strip(), f"{name}: an axes without y label"
        assert ax.get_title().strip() or fig.get_suptitle().strip(), f"{name}: an axes without title"


def _series(ax):
    """Labelled artists of one axes (bars, lines, collections), as a legend would count them."""
    return [label for label in ax.get_legend_handles_labels()[1] if not label.startswith("_")]


def _has_legend(fig, ax):
    return ax.get_legend() is not None or bool(fig.legends)


def _no_line_across_categories(ax):
    """A line on a categorical (bar) axis is marker-only or a constant reference level, never a join."""
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        joined = line.get_linestyle() not in ("None", "none", "", " ") and len(y) > 1
        assert not joined or np.allclose(y, y[0]), f"line {line.get_label()!r} joins categorical x values"


def test_recovery_is_nan_where_accuracy_was_zero_before(ledger, clients):
    values = recovery_values(_joined(ledger, clients))
    zero = values["partition_id"].isin([7, 8])
    assert values.loc[zero, "recovery"].isna().all()  # not the client's after / 1e-12 = 0
    assert values.loc[zero, "forget_retained"].isna().all()
    assert values.loc[~zero, "recovery"].notna().all()
    assert values.loc[values["partition_id"] == 1, "forget_retained"].iloc[0] == pytest.approx(0.2)


def test_recovery_plot_draws_no_zero_bar_for_undefined_rows(ledger, clients):
    fig = report_figures(ledger, clients)["recovery.png"]
    recovery_ax, forget_ax = _visible(fig)
    defined = recovery_values(_joined(ledger, clients))
    for ax, column in ((recovery_ax, "recovery"), (forget_ax, "forget_retained")):
        bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert sum(p.get_height() for p in bars) == defined[column].notna().sum() == 3  # 0, 1, 3
        assert "n/a" in ax.get_title() and "2 row" in ax.get_title()
    assert min(p.get_x() for p in recovery_ax.patches if p.get_height() > 0) > 0.5  # no bar at 0.0


def test_detection_rates_are_fractions_with_counts(ledger, clients):
    rows = _joined(ledger, clients)
    rates = detection_rates(_per_client(rows, clients))
    assert rates["rate"].between(0, 1).all()
    assert rates.loc["honest", ["k", "n"]].tolist() == [2, 3]  # one honest client silent
    assert rates.loc["late", ["k", "n"]].tolist() == [3, 3]
    assert rates.loc["garbage-proof", ["k", "n"]].tolist() == [2, 2]  # caught
    assert rates.loc["wrong-mask", ["k", "n"]].tolist() == [0, 1]  # missed
    assert list(rates.index[rates["honest"]]) == ["honest", "late"]  # honest behaviours first
    counts = reason_counts(rows, rates.index)
    assert counts.loc["garbage-proof", "invalid-proof"] == 2 and counts.loc["honest", "no-response"] == 1
    assert counts.columns[0] == "compliant" and counts.columns[-1] == "no-response"

    fig = report_figures(ledger, clients)["detection.png"]
    bars_ax, heat_ax = _visible(fig)
    widths = [p.get_width() for p in bars_ax.patches]
    assert widths == pytest.approx(rates["rate"].tolist())
    assert all(0 <= w <= 1 for w in widths) and bars_ax.get_xlim() == (0, 1)
    texts = {t.get_text() for t in bars_ax.texts}
    assert {"2/3", "3/3", "2/2", "0/1"} <= texts
    assert heat_ax.images and heat_ax.images[0].get_array().max() <= 1
    assert {t.get_text() for t in heat_ax.texts} >= {"2", "1"}


def test_every_report_figure_is_labelled(ledger, clients, reference):
    figures = report_figures(ledger, clients, reference)
    for name, fig in figures.items():
        _check_labels(fig, name)
        for ax in _visible(fig):
            if len(_series(ax)) > 1:
                assert _has_legend(fig, ax), f"{name}: several series and no legend"
    _no_line_across_categories(_visible(figures["forgetting.png"])[0])
    for ax in _visible(figures["proof_cost.png"]):  # profile boxes: medians and whiskers only, no joins
        assert ax.get_xlabel() == "device profile" and "(" in ax.get_ylabel()


def test_replot_rerenders_from_saved_tables(ledger, clients, reference, tmp_path):
    ledger.to_csv(tmp_path / "ledger.csv", index=False)
    clients.to_csv(tmp_path / "clients.csv", index=False)
    reference.to_csv(tmp_path / "reference.csv", index=False)
    paths = replot(tmp_path)
    assert [p.name for p in paths] == ["detection.png", "recovery.png", "proof_cost.png", "forgetting.png"]
    from PIL import Image

    for p in paths:
        with Image.open(p) as image:
            assert image.info["dpi"][0] == pytest.approx(DPI, abs=1)


def _quality_frames():
    rng = np.random.default_rng(0)
    methods = ["verified", "no-op", "retrain"]
    agg = pd.DataFrame(
        [
            {
                "setting": s,
                "method": m,
                "runs": 3,
                **{
                    f"{k}_{stat}": rng.uniform(0, 0.1 if stat == "std" else 1)
                    for k in ("recovery", "forget_acc_after", "mia_auc_after", "mia_tpr_at_1pct_fpr_after")
                    for stat in ("mean", "std")
                },
            }
            for s in ("vit-mnist-class", "vit-mnist-samples", "opt-code")
            for m in methods
        ]
    )
    frontier = pd.DataFrame(
        [
            {
                "setting": s,
                "method": m,
                "point": point,
                "recovery": rng.uniform(0.9, 1.0),
                "forget_acc_after": rng.uniform(),
                "mia_auc_after": rng.uniform(0.4, 0.6),
            }
            for s in ("vit-mnist-class", "vit-mnist-samples")
            for m in methods
            for point in (["default", "mask_fraction=0.1|damping=1"] if m == "verified" else ["default"])
        ]
    )
    return agg, frontier


def test_quality_figures():
    from benchmarks.unlearning_quality import plot_frontier, plot_quality

    agg, frontier = _quality_frames()
    fig = plot_quality(agg)
    _check_labels(fig, "quality.png")
    assert fig.legends and len(fig.legends[0].get_texts()) == 4
    for ax in _visible(fig):
        _no_line_across_categories(ax)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["verified", "no-op", "retrain"]
    fig = plot_frontier(frontier)
    _check_labels(fig, "frontier.png")
    assert fig.legends
    for ax in _visible(fig):
        assert not ax.get_lines()  # markers only: separate runs are never joined


def test_proof_cost_figure():
    from benchmarks.proof_cost import plot

    rows = [
        {
            "d": 16,
            "slots": 2,
            "blocks_per_proof": b,
            "unit_blocks": u,
            "prove_ms_per_masked_weight": 100 / b,
            "proof_bytes_per_masked_weight": 2000 / b,
        }
        for b, u in ((1, 1), (2, 1), (4, 4), (16, 16))
    ]
    fig = plot(rows)
    _check_labels(fig, "proof_cost.png")
    assert fig.legends
    for ax in _visible(fig):
        assert "(ms)" in ax.get_ylabel() or "(bytes)" in ax.get_ylabel()
        assert ax.get_xscale() == "log"  # blocks per proof is numeric: lines between its values are fine


def test_latency_figure():
    from benchmarks.verify_load import plot

    rows = [
        {"reason": r, "latency_ms": v}
        for r, v in (("compliant", 20.0), ("compliant", 25.0), ("incomplete", 0.3), ("malformed", 0.1))
    ]
    writes = [{"registry_write": True, "latency_ms": 1.0}, {"registry_write": False, "latency_ms": 0.2}]
    fig = plot(rows, writes)
    _check_labels(fig, "latency.png")
    for ax in _visible(fig):
        assert "(ms" in ax.get_xlabel() and ax.get_legend() is not None


def test_local_metrics_figure(tmp_path):
    from zkapex_flwr.pipeline import plot_local

    base = {
        "personalization_acc_before": 0.9,
        "personalization_acc_after": 0.88,
        "forget_acc_after": 0.1,
        "mia_auc_after": 0.5,
    }  # no TPR recorded: left out, not drawn as 0
    result = {
        **base,
        "baselines": {"no-op": {**base, "forget_acc_after": 0.9}, "retrain": dict(base)},
        "config": {"model": "vit", "dataset": "digits"},
        "masked_weights": 10,
        "touched_blocks": 2,
    }
    fig = plot_local(result, tmp_path / "metrics.png")
    _check_labels(fig, "metrics.png")
    (ax,) = _visible(fig)
    assert ax.get_legend() is not None
    assert not any("TPR" in t.get_text() for t in ax.get_legend().get_texts())
    _no_line_across_categories(ax)
