"""Report of a fleet run: the provider's ledger judged against the scenario's ground truth.

The LEDGER holds one final verdict per (deletion request, client); the CLIENTS table says what each
client really did (its ``behaviour``) and on which device ``profile`` it ran. :func:`summarize` turns
both into a JSON-ready dict, :func:`plot_report` draws it, :func:`write_report` writes everything
(``ledger.csv``, ``clients.csv``, ``summary.json``, the plots and ``report.md``) to one folder.
Client-reported ``client_*`` columns are research data only: they never decide a verdict.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # a bare Figure renders through Agg: no pyplot, no global backend

from zkapex_flwr.figures import paper_style, save_figure
from zkapex_flwr.files import atomic_write

from .scenario import HONEST_BEHAVIOURS  # late = honest but slow, not a cheat

NO_RESPONSE = "no-response"
LEDGER_COLUMNS = (
    "request_id",
    "node_id",
    "partition_id",
    "reason",
    "compliant",
    "verify_ms",
    "bundle_bytes",
    "quarantined",
)
RESEARCH_COLUMNS = (
    "client_prove_s",
    "client_recovery",
    "client_forget_acc_before",
    "client_forget_acc_after",
    "client_personalization_acc_before",
    "client_personalization_acc_after",
    "client_device_s",
    "client_upload_s",
)  # optional: filled with NaN when absent
CLIENT_COLUMNS = ("partition_id", "node_id", "behaviour", "profile")
PLOTS = ("detection.png", "recovery.png", "proof_cost.png", "forgetting.png")
REFERENCE_REQUIRED = ("partition_id", "retrain_forget_acc", "retrain_personalization_acc")


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Raise ValueError naming every column of ``columns`` that ``frame`` lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} is missing required column(s) {missing}; it has {list(frame.columns)}")


def _joined(ledger: pd.DataFrame, clients: pd.DataFrame) -> pd.DataFrame:
    """Validate both tables; return the ledger with each row's ``behaviour``, ``profile`` and ``honest``."""
    _require(ledger, LEDGER_COLUMNS, "ledger")
    _require(clients, CLIENT_COLUMNS, "clients table")
    if clients["partition_id"].duplicated().any():
        raise ValueError("clients table lists a partition_id more than once")
    unknown = sorted(set(ledger["partition_id"]) - set(clients["partition_id"]))
    if unknown:
        raise ValueError(f"ledger names partition_id(s) {unknown} absent from the clients table")
    rows = ledger.assign(**{c: np.nan for c in RESEARCH_COLUMNS if c not in ledger.columns})
    rows = rows.assign(compliant=rows["compliant"].astype(bool), quarantined=rows["quarantined"].astype(bool))
    rows = rows.merge(clients[["partition_id", "behaviour", "profile"]], on="partition_id", how="left")
    return rows.assign(honest=rows["behaviour"].isin(HONEST_BEHAVIOURS))


def _per_client(rows: pd.DataFrame, clients: pd.DataFrame) -> pd.DataFrame:
    """One row per client: its ground truth and the flags its ledger rows earn (no rows: all False)."""
    flags = rows.assign(
        caught=~rows["compliant"],
        rejected=~rows["compliant"] & (rows["reason"] != NO_RESPONSE),
        no_response=rows["reason"] == NO_RESPONSE,
    )
    per = flags.groupby("partition_id").agg(
        rows=("reason", "size"),
        caught=("caught", "any"),
        rejected=("rejected", "any"),
        no_response=("no_response", "any"),
    )
    out = clients.set_index("partition_id").join(per, how="left")
    out["rows"] = out["rows"].fillna(0).astype(int)
    for flag in ("caught", "rejected", "no_response"):
        out[flag] = out[flag].astype("boolean").fillna(False).astype(bool)
    return out.assign(honest=out["behaviour"].isin(HONEST_BEHAVIOURS), all_ok=(out["rows"] > 0) & ~out["caught"])


def _median(values: pd.Series) -> float | None:
    """Median of the numeric, non-NaN values; None when nothing is left."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.median()) if len(values) else None


def _plain(value):
    """Recursively turn numpy/pandas scalars (and NaN) into plain JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def summarize(
    ledger: pd.DataFrame,
    clients: pd.DataFrame,
    wall_s: float,
    extra: dict | None = None,
    reference: pd.DataFrame | None = None,
) -> dict:
    """Counts of caught/missed cheaters and accepted/rejected honest clients, plus cost and quality medians.

    Honest means ``behaviour`` in :data:`HONEST_BEHAVIOURS`. A client "accepted" or "missed" has at least
    one ledger row and all are compliant; "caught" has a non-compliant row (no-response included); an
    honest client is "rejected" only for a non-compliant row whose reason is not no-response.
    Ledger rows are taken to be in chronological order (``quarantined`` reads each node's last row).
    ``reference`` (:func:`simulations.reference.retrain_reference`) adds ``retrain_reference``: its
    clients' forget accuracy before, after the verified update and after retrain-from-scratch.
    """
    rows = _joined(ledger, clients)
    per = _per_client(rows, clients)
    honest, cheat = per[per["honest"]], per[~per["honest"]]
    good = rows[rows["honest"] & rows["compliant"]]
    by_behaviour = {}
    for behaviour, group in per.groupby("behaviour", sort=True):
        reasons = rows.loc[rows["behaviour"] == behaviour, "reason"].value_counts().sort_index()
        by_behaviour[behaviour] = {"n": len(group), "caught": int(group["caught"].sum()), "reasons": reasons.to_dict()}
    by_profile = {}
    for profile, group in honest.groupby("profile", sort=True):
        sel = rows[rows["honest"] & (rows["profile"] == profile)]
        by_profile[profile] = {
            "n": len(group),
            "prove_s_median": _median(sel["client_prove_s"]),
            "proof_bytes_median": _median(sel.loc[sel["compliant"], "bundle_bytes"]),
            "device_s_median": _median(sel["client_device_s"]),
            "upload_s_median": _median(sel["client_upload_s"]),
        }
    summary = {
        "clients": len(per),
        "honest": len(honest),
        "dishonest": len(cheat),
        "honest_accepted": int(honest["all_ok"].sum()),
        "honest_rejected": int(honest["rejected"].sum()),
        "honest_no_response": int(honest["no_response"].sum()),
        "cheaters_caught": int(cheat["caught"].sum()),
        "cheaters_missed": int(cheat["all_ok"].sum()),
        "cheaters_unprobed": int((cheat["rows"] == 0).sum()),
        "by_behaviour": by_behaviour,
        # a client at accuracy 0 before has no recovery ratio: NaN, not the 0 it reports
        "recovery_median": _median(
            good["client_recovery"].where(
                ~(pd.to_numeric(good["client_personalization_acc_before"], errors="coerce") <= 0)
            )
        ),
        "forget_acc_before_median": _median(good["client_forget_acc_before"]),
        "forget_acc_after_median": _median(good["client_forget_acc_after"]),
        "prove_s_median": _median(rows.loc[rows["honest"], "client_prove_s"]),
        "proof_bytes_median": _median(good["bundle_bytes"]),
        "verify_ms_median": _median(rows["verify_ms"]),
        "requests": int(rows["request_id"].nunique()),
        "quarantined": int(rows.groupby("node_id")["quarantined"].last().sum()) if len(rows) else 0,
        "by_profile": by_profile,
        "wall_s": float(wall_s),
    }
    if reference is not None:
        summary["retrain_reference"] = _reference_summary(rows, reference)
    return _plain({**summary, **(extra or {})})


def _reference_rows(rows: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The reference clients beside their own before/after metrics on the first request (compliant rows)."""
    _require(reference, REFERENCE_REQUIRED, "retrain reference")
    if reference["partition_id"].duplicated().any():
        raise ValueError("retrain reference lists a partition_id more than once")
    good = rows[rows["honest"] & rows["compliant"]]
    if len(good):
        good = good[good["request_id"] == good["request_id"].iloc[0]]
    mine = good[
        [
            "partition_id",
            "profile",
            "client_forget_acc_before",
            "client_forget_acc_after",
            "client_personalization_acc_before",
            "client_personalization_acc_after",
        ]
    ]
    joined = reference[list(REFERENCE_REQUIRED)].merge(
        mine.drop_duplicates("partition_id"), on="partition_id", how="left"
    )
    missing = joined.loc[
        joined["client_forget_acc_before"].isna() | joined["client_forget_acc_after"].isna(), "partition_id"
    ].tolist()
    if missing:
        raise ValueError(
            f"retrain reference names partition(s) {missing} without a compliant honest ledger row "
            "carrying its forget accuracy before and after"
        )
    return joined


def _reference_summary(rows: pd.DataFrame, reference: pd.DataFrame) -> dict:
    j = _reference_rows(rows, reference)
    return {
        "clients": len(j),
        "forget_acc_before_median": _median(j["client_forget_acc_before"]),
        "forget_acc_after_median": _median(j["client_forget_acc_after"]),
        "retrain_forget_acc_median": _median(j["retrain_forget_acc"]),
        "forget_gap_to_retrain_median": _median(j["client_forget_acc_after"] - j["retrain_forget_acc"]),
        "personalization_acc_after_median": _median(j["client_personalization_acc_after"]),
        "retrain_personalization_acc_median": _median(j["retrain_personalization_acc"]),
        "rows": j.to_dict(orient="records"),
    }


# Figures: the project's one style (zkapex_flwr.figures)
HONEST_COLOUR, CHEAT_COLOUR = "#1a9850", "#d73027"


def _behaviour_label(behaviour: str) -> str:
    return f"{behaviour} (honest)" if behaviour in HONEST_BEHAVIOURS and behaviour != "honest" else behaviour


def _no_data(ax, title: str, note: str = "no data") -> None:
    """Blank panel that says there is nothing to draw."""
    ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_title(title)
    ax.set_axis_off()


def detection_rates(per: pd.DataFrame) -> pd.DataFrame:
    """Per behaviour (honest behaviours first): ``n`` clients and ``k`` of them with the right outcome.

    For an honest behaviour ``k`` counts clients accepted (every ledger row compliant), for a cheating one
    clients caught (a non-compliant row, no-response included); ``rate`` = k / n lies in [0, 1].
    """
    if per.empty:
        return pd.DataFrame(columns=["n", "caught", "accepted", "honest", "k", "rate"])
    g = per.groupby("behaviour", sort=True)
    frame = pd.DataFrame(
        {"n": g.size(), "caught": g["caught"].sum().astype(int), "accepted": g["all_ok"].sum().astype(int)}
    )
    frame["honest"] = frame.index.isin(HONEST_BEHAVIOURS)
    frame["k"] = np.where(frame["honest"], frame["accepted"], frame["caught"]).astype(int)
    frame["rate"] = frame["k"] / frame["n"]
    return pd.concat([frame[frame["honest"]], frame[~frame["honest"]]])  # each part alphabetical


def reason_counts(rows: pd.DataFrame, behaviours) -> pd.DataFrame:
    """Ledger rows per behaviour (index, in ``behaviours`` order) × reason code (compliant first, no-response last)."""
    table = pd.crosstab(rows["behaviour"], rows["reason"]) if len(rows) else pd.DataFrame()
    reasons = sorted(table.columns, key=lambda r: (r != "compliant", r == NO_RESPONSE, r))
    return table.reindex(index=list(behaviours), columns=reasons, fill_value=0).fillna(0).astype(int)


def detection_figure(rows: pd.DataFrame, clients: pd.DataFrame) -> Figure:
    """Left: k/n per behaviour as a bar in [0, 1]; right: behaviour × verdict reason heatmap of ledger rows."""
    per = _per_client(rows, clients)
    rates = detection_rates(per)
    with paper_style():
        fig = Figure(figsize=(9.5, 0.32 * max(6, len(rates)) + 1.8))
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.35]})
        if rates.empty:
            _no_data(left, "Detection rate per behaviour")
            _no_data(right, "Ledger verdicts per behaviour")
            return fig
        y = np.arange(len(rates))
        colours = np.where(rates["honest"], HONEST_COLOUR, CHEAT_COLOUR)
        left.barh(y, rates["rate"], height=0.7, color=colours)
        for yi, (rate, k, n) in enumerate(zip(rates["rate"], rates["k"], rates["n"])):
            inside = rate > 0.55
            left.text(
                rate - 0.02 if inside else rate + 0.02,
                yi,
                f"{k}/{n}",
                va="center",
                ha="right" if inside else "left",
                fontsize=7,
                color="white" if inside else "black",
            )
        left.set_yticks(y, [_behaviour_label(b) for b in rates.index])
        left.invert_yaxis()
        left.set_xlim(0, 1)
        left.grid(axis="x")
        left.set_xlabel("fraction of clients (k / n)")
        left.set_ylabel("client behaviour")
        left.set_title("Detection rate per behaviour")
        from matplotlib.patches import Patch

        left.legend(
            handles=[
                Patch(color=HONEST_COLOUR, label="honest behaviour: accepted / n"),
                Patch(color=CHEAT_COLOUR, label="cheating behaviour: caught / n"),
            ],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1),
            ncol=1,
        )
        counts = reason_counts(rows, rates.index)
        totals = counts.sum(axis=1).replace(0, np.nan)
        share = counts.div(totals, axis=0).fillna(0.0)
        image = right.imshow(share.to_numpy(dtype=float), aspect="auto", vmin=0, vmax=1, cmap="Blues")
        for (i, j), c in np.ndenumerate(counts.to_numpy()):
            if c:
                right.text(
                    j,
                    i,
                    str(c),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share.iat[i, j] > 0.6 else "black",
                )
        right.set_xticks(np.arange(counts.shape[1]), counts.columns, rotation=40, ha="right")
        right.set_yticks(np.arange(counts.shape[0]), [_behaviour_label(b) for b in counts.index])
        right.set_xlabel("verdict reason code")
        right.set_ylabel("client behaviour")
        right.set_title("Ledger verdicts per behaviour (count of rows)")
        bar = fig.colorbar(image, ax=right, fraction=0.05, pad=0.02)
        bar.set_label("fraction of the behaviour's rows")
    return fig


def recovery_values(rows: pd.DataFrame) -> pd.DataFrame:
    """Honest compliant rows: ``recovery`` (personalization accuracy after ÷ before) and ``forget_retained``
    (forget accuracy after ÷ before), NaN where the ratio is undefined (accuracy 0 before: a client reports
    after / 1e-12, which is 0 when both are 0, not a measured recovery)."""
    sel = rows[rows["honest"] & rows["compliant"]]

    def num(column):
        return pd.to_numeric(sel[column], errors="coerce").astype(float)

    p_before, p_after = num("client_personalization_acc_before"), num("client_personalization_acc_after")
    recovery = num("client_recovery").fillna(p_after / p_before.where(p_before > 0))
    recovery = recovery.where(~(p_before <= 0))  # NaN before (not reported) keeps the client's value
    f_before, f_after = num("client_forget_acc_before"), num("client_forget_acc_after")
    return pd.DataFrame(
        {
            "partition_id": sel["partition_id"],
            "profile": sel["profile"],
            "recovery": recovery,
            "recovery_undefined": (p_before <= 0),
            "forget_retained": f_after / f_before.where(f_before > 0),
            "forget_undefined": (f_before <= 0),
        },
        index=sel.index,
    )


def _histogram(ax, values: pd.Series, undefined: int, colour: str, xlabel: str, title: str) -> None:
    """Histogram of the defined values with the median; the title says how many rows are n/a."""
    note = f"\n({undefined} row(s) n/a: accuracy 0 before, not drawn)" if undefined else ""
    values = values.dropna()
    if values.empty:
        return _no_data(ax, title + note, "n/a for every row" if undefined else "no data")
    edges = np.histogram_bin_edges(values, bins=min(30, max(5, len(values) // 3)))
    ax.hist(values, bins=edges, color=colour, alpha=0.85, label=f"ledger rows (n = {len(values)})")
    ax.axvline(values.median(), color="black", linestyle="--", label=f"median {values.median():.3f}")
    ax.grid(axis="y")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ledger rows (count)")
    ax.set_title(title + note)
    ax.legend()


def recovery_figure(rows: pd.DataFrame) -> Figure:
    """Histograms over honest compliant rows of recovery and of the forget accuracy retained (NaN: n/a)."""
    values = recovery_values(rows)
    with paper_style():
        fig = Figure(figsize=(9.5, 3.8))
        left, right = fig.subplots(1, 2)
        _histogram(
            left,
            values["recovery"],
            int(values["recovery_undefined"].sum()),
            "tab:blue",
            "recovery = personalization accuracy after ÷ before (ratio)",
            "Personalization recovery (honest, compliant)",
        )
        _histogram(
            right,
            values["forget_retained"],
            int(values["forget_undefined"].sum()),
            "tab:orange",
            "forget accuracy after ÷ before (fraction retained)",
            "Forget accuracy retained (honest, compliant)",
        )
    return fig


def _plot_box(rows: pd.DataFrame, column: str, ax, title: str, ylabel: str, scale: float = 1.0) -> None:
    """Box plot of ``column`` × ``scale`` per device profile with every row as a dot (NaN dropped)."""
    groups = {
        p: pd.to_numeric(g[column], errors="coerce").dropna() * scale for p, g in rows.groupby("profile", sort=True)
    }
    groups = {p: v.to_numpy() for p, v in groups.items() if len(v)}
    if not groups:
        return _no_data(ax, title)
    ax.boxplot(
        list(groups.values()),
        tick_labels=list(groups.keys()),
        widths=0.5,
        showfliers=False,
        medianprops={"color": "black"},
    )
    rng = np.random.default_rng(0)  # jitter only, deterministic
    for i, v in enumerate(groups.values(), start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=6, alpha=0.4, color="tab:blue", linewidths=0)
    ax.set_ylim(bottom=0)
    ax.grid(axis="y")
    ax.set_xlabel("device profile")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def proof_cost_figure(rows: pd.DataFrame) -> Figure:
    """Prove time and proof bundle size per device profile over honest rows (bundle: compliant rows only)."""
    honest = rows[rows["honest"]]
    with paper_style():
        fig = Figure(figsize=(9.5, 3.8))
        left, right = fig.subplots(1, 2)
        _plot_box(honest, "client_prove_s", left, "Client prove time per profile (honest)", "prove time (s)")
        _plot_box(
            honest[honest["compliant"]],
            "bundle_bytes",
            right,
            "Proof bundle per profile (honest, compliant)",
            "proof bundle size (kB)",
            scale=1e-3,
        )
    return fig


def forgetting_figure(rows: pd.DataFrame, reference: pd.DataFrame | None) -> Figure:
    """Forget accuracy per reference client: before, after the verified update, retrain-from-scratch."""
    title = "Forget accuracy against retrain (sampled honest clients)"
    with paper_style():
        fig = Figure(figsize=(max(6.5, 0.8 * len(reference if reference is not None else ()) + 2.5), 4.2))
        ax = fig.subplots()
        if reference is None or reference.empty:
            _no_data(ax, title)
            return fig
        j = _reference_rows(rows, reference).sort_values("partition_id")
        x = np.arange(len(j))
        for off, col, label, colour in (
            (-0.27, "client_forget_acc_before", "before (θp)", "lightgrey"),
            (0.0, "client_forget_acc_after", "after verified update (θu)", "tab:blue"),
            (0.27, "retrain_forget_acc", "retrain from scratch", "tab:orange"),
        ):
            bars = ax.bar(
                x + off, j[col].astype(float), width=0.27, color=colour, label=label, edgecolor="black", linewidth=0.3
            )
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks(x, [f"{int(p)}\n{prof}" for p, prof in zip(j["partition_id"], j["profile"])])
        ax.grid(axis="y")
        ax.set_xlabel("client (partition id, device profile)")
        ax.set_ylabel("forget accuracy on D_f (fraction)")
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
    return fig


def report_figures(
    ledger: pd.DataFrame, clients: pd.DataFrame, reference: pd.DataFrame | None = None
) -> dict[str, Figure]:
    """The report's figures by file name (:data:`PLOTS`), not yet saved."""
    rows = _joined(ledger, clients)
    figures = (
        detection_figure(rows, clients),
        recovery_figure(rows),
        proof_cost_figure(rows),
        forgetting_figure(rows, reference),
    )
    return dict(zip(PLOTS, figures))


def plot_report(
    ledger: pd.DataFrame, clients: pd.DataFrame, out_dir: Path, reference: pd.DataFrame | None = None
) -> list[Path]:
    """Write :data:`PLOTS` to ``out_dir``; return their paths.

    Proof bytes are drawn over honest compliant rows only (a no-response row carries 0 bytes, not a proof).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_figure(fig, out_dir / name) for name, fig in report_figures(ledger, clients, reference).items()]


def replot(folder: Path) -> list[Path]:
    """Re-render a written report's figures from its ``ledger.csv``, ``clients.csv`` (and ``reference.csv``)."""
    folder = Path(folder)
    ledger, clients = pd.read_csv(folder / "ledger.csv"), pd.read_csv(folder / "clients.csv")
    reference = pd.read_csv(folder / "reference.csv") if (folder / "reference.csv").exists() else None
    return plot_report(ledger, clients, folder, reference)


def _fmt(value) -> str:
    """Table cell: '—' for missing, whole numbers from 1000 up, else three significant digits."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _markdown(summary: dict, scenario_name: str) -> str:
    """The human report: headline, per-behaviour and per-profile tables, quality medians, plots."""
    s = summary
    lines = [
        f"# Fleet report: {scenario_name or 'unnamed scenario'}",
        "",
        f"**{s['cheaters_caught']} of {s['dishonest']} cheaters caught** ({s['cheaters_missed']} missed, "
        f"{s['cheaters_unprobed']} unprobed); **{s['honest_rejected']} of {s['honest']} honest clients "
        f"rejected** ({s['honest_no_response']} without response); {s['requests']} request(s), "
        f"{s['quarantined']} node(s) quarantined; wall time {s['wall_s']:.1f} s.",
        "",
        "## Per behaviour",
        "",
        "| behaviour | n | caught | reasons (rows) |",
        "|---|---:|---:|---|",
    ]
    for behaviour, b in s["by_behaviour"].items():
        tag = " (honest)" if behaviour in HONEST_BEHAVIOURS and behaviour != "honest" else ""
        reasons = ", ".join(f"{r}: {c}" for r, c in b["reasons"].items()) or "—"
        lines.append(f"| {behaviour}{tag} | {b['n']} | {b['caught']} | {reasons} |")
    lines += [
        "",
        "## Per device profile (honest clients)",
        "",
        "| profile | n | median prove s | median proof bytes | median device s | median upload s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for profile, p in s["by_profile"].items():
        lines.append(
            f"| {profile} | {p['n']} | {_fmt(p['prove_s_median'])} | {_fmt(p['proof_bytes_median'])} "
            f"| {_fmt(p['device_s_median'])} | {_fmt(p['upload_s_median'])} |"
        )
    lines += [
        "",
        "## Unlearning quality (honest, compliant)",
        "",
        f"- median recovery: {_fmt(s['recovery_median'])}",
        f"- median forget accuracy: {_fmt(s['forget_acc_before_median'])} before, "
        f"{_fmt(s['forget_acc_after_median'])} after",
        f"- median verify time: {_fmt(s['verify_ms_median'])} ms",
        "",
    ]
    ref = s.get("retrain_reference")
    if ref:
        lines += [
            "## Forgetting against retrain-from-scratch",
            "",
            f"{ref['clients']} honest clients, sampled evenly by partition id, re-run without the forgotten data "
            "(θg pretrained without D_f, the FedAvg rounds before the request replayed with the same nodes "
            "on the data they keep, then re-personalized). Medians: forget accuracy "
            f"{_fmt(ref['forget_acc_before_median'])} before, {_fmt(ref['forget_acc_after_median'])} after the "
            f"verified update, {_fmt(ref['retrain_forget_acc_median'])} after retrain; personalization accuracy "
            f"{_fmt(ref['personalization_acc_after_median'])} after the update, "
            f"{_fmt(ref['retrain_personalization_acc_median'])} after retrain.",
            "",
            "| client | profile | forget acc before | after (verified) | retrain | pers. acc after | retrain |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in ref["rows"]:
            lines.append(
                f"| {r['partition_id']} | {r['profile']} | {_fmt(r['client_forget_acc_before'])} "
                f"| {_fmt(r['client_forget_acc_after'])} | {_fmt(r['retrain_forget_acc'])} "
                f"| {_fmt(r['client_personalization_acc_after'])} | {_fmt(r['retrain_personalization_acc'])} |"
            )
        lines.append("")
    lines += _mpu_markdown(s.get("mpu"))
    lines += ["## Plots", ""]
    lines += [f"![{name[:-4]}]({name})" for name in PLOTS]
    return "\n".join(lines) + "\n"


def _mpu_markdown(mpu: dict | None) -> list[str]:
    """The client-held (MPU) requests: outcome, screen score and θg on the requester's forget set."""
    if not mpu:
        return []
    c = mpu["config"]
    lines = [
        "## Client-held requests (MPU)",
        "",
        f"**{mpu['cheaters_caught']} of {mpu['cheaters']} dishonest MPU replies caught; {mpu['honest_accepted']} of "
        f"{mpu['honest']} honest requests accepted.** m = {c['copies']} copies, α = {c['alphas']}, κ = {c['kappa']}, "
        f"R = {c['rounds']} rounds of {c['algorithm']} ({c['steps']} steps, lr {c['lr']}), defence {c['defence']}. "
        "θg's accuracy on the requester's own forget set, on the shared test pool and on the test pool without "
        "the forgotten classes, right before and after its request (the screen only checks that the m updates agree: an update computed consistently on "
        "other data passes; docs/mpu.md):",
        "",
        "| client | behaviour | outcome | min consistency | forget acc before | after | test acc before | after "
        "| other classes before | after |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in mpu["rows"]:
        lines.append(
            f"| {r['partition_id']} | {r['behaviour']} | {r['outcome']} | {_fmt(r['consistency_min'])} "
            f"| {_fmt(r['forget_acc_before'])} | {_fmt(r['forget_acc_after'])} | {_fmt(r['test_acc_before'])} "
            f"| {_fmt(r['test_acc_after'])} | {_fmt(r.get('kept_acc_before'))} | {_fmt(r.get('kept_acc_after'))} |"
        )
    return [*lines, ""]


def write_report(
    ledger: pd.DataFrame,
    clients: pd.DataFrame,
    out_dir: Path,
    wall_s: float,
    extra: dict | None = None,
    scenario_name: str = "",
    reference: pd.DataFrame | None = None,
) -> dict:
    """Write ledger/clients tables, ``summary.json``, the plots and ``report.md`` to ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(ledger, clients, wall_s, extra, reference)  # validates before anything is written
    ledger.to_csv(out_dir / "ledger.csv", index=False)
    if importlib.util.find_spec("pyarrow") is not None:
        ledger.to_parquet(out_dir / "ledger.parquet", index=False)
    clients.to_csv(out_dir / "clients.csv", index=False)
    if reference is not None:
        reference.to_csv(out_dir / "reference.csv", index=False)
    atomic_write(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    plot_report(ledger, clients, out_dir, reference)
    (out_dir / "report.md").write_text(_markdown(summary, scenario_name), encoding="utf-8")
    return summary
