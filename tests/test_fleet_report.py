"""Fleet report: summary counts against ground truth, NaN-safe medians, written files, input validation."""

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest

from simulations.report import HONEST_BEHAVIOURS, plot_report, summarize, write_report

NAN = math.nan

# partition_id -> (behaviour, profile); node_id = 100 + partition_id
CLIENTS = {
    0: ("honest", "phone"),
    1: ("honest", "laptop"),
    2: ("late", "phone"),
    3: ("honest", "phone"),
    4: ("garbage-proof", "phone"),
    5: ("stale-model", "laptop"),
    6: ("wrong-mask", "laptop"),
    7: ("hide-in-padding", "phone"),
    8: ("ignore", "phone"),
    9: ("replay", "laptop"),
    10: ("honest", "laptop"),
}

# (request, partition, reason, attempts, quarantined, prove_s, recovery, forget_after, bundle_bytes)
ROWS = [
    ("r1", 0, "compliant", 1, False, 10.0, 0.90, 0.1, 1000),
    ("r1", 1, "compliant", 1, False, 20.0, 0.80, 0.2, 2000),
    ("r1", 2, "compliant", 2, False, 30.0, NAN, NAN, 3000),  # late: answered on the retry
    ("r1", 3, "no-response", 3, False, NAN, NAN, NAN, 0),  # honest but silent
    ("r1", 4, "invalid-proof", 1, True, 5.0, 0.5, 0.5, 900),
    ("r1", 5, "stale-model", 1, False, 5.0, 0.5, 0.5, 900),
    ("r1", 6, "wrong-mask", 1, True, 5.0, 0.5, 0.5, 900),
    ("r1", 7, "compliant", 1, False, 5.0, 0.1, 0.9, 900),  # the missed cheater
    ("r1", 8, "no-response", 3, True, NAN, NAN, NAN, 0),
    ("r1", 10, "fisher-mismatch", 1, False, 40.0, 0.0, 0.9, 500),  # honest but rejected (false positive)
    ("r2", 0, "compliant", 1, False, 12.0, 0.95, 0.3, 1100),
    ("r2", 1, "compliant", 1, False, 22.0, 0.85, 0.4, 2100),
    ("r2", 5, "stale-model", 1, True, 5.0, 0.5, 0.5, 900),  # quarantined on its latest row
    ("r2", 6, "compliant", 1, False, 5.0, 0.5, 0.5, 900),  # released on its latest row
]


@pytest.fixture
def clients():
    return pd.DataFrame(
        [{"partition_id": p, "node_id": 100 + p, "behaviour": b, "profile": f} for p, (b, f) in CLIENTS.items()]
    )


@pytest.fixture
def ledger():
    records = []
    for req, pid, reason, attempts, quarantined, prove_s, recovery, forget_after, size in ROWS:
        silent = reason == "no-response"
        records.append(
            {
                "request_id": req,
                "node_id": 100 + pid,
                "partition_id": pid,
                "reason": reason,
                "detail": "",
                "compliant": reason == "compliant",
                "attempts": attempts,
                "verify_ms": NAN if silent else (100.0 if pid == 4 else 5.0),
                "proofs": 0 if silent else 3,
                "bundle_bytes": size,
                "circuit": "" if silent else "c1",
                "quarantined": quarantined,
                "client_prove_s": prove_s,
                "client_recovery": recovery,
                "client_personalization_acc_before": 0.9,
                "client_personalization_acc_after": 0.88,
                "client_forget_acc_before": NAN if silent else 0.9,
                "client_forget_acc_after": forget_after,
                "client_masked_weights": 42,
                "client_device_s": prove_s + 1.0,
                "client_upload_s": NAN,
            }
        )
    return pd.DataFrame(records)


def test_honest_behaviours():
    assert HONEST_BEHAVIOURS == ("honest", "late")


def test_summary_counts_against_ground_truth(ledger, clients):
    s = summarize(ledger, clients, wall_s=12.5, extra={"seed": np.int64(3), "scenario": "mixed"})
    assert {
        k: s[k]
        for k in (
            "clients",
            "honest",
            "dishonest",
            "honest_accepted",
            "honest_rejected",
            "honest_no_response",
            "cheaters_caught",
            "cheaters_missed",
            "cheaters_unprobed",
            "requests",
            "quarantined",
        )
    } == {
        "clients": 11,
        "honest": 5,
        "dishonest": 6,
        "honest_accepted": 3,
        "honest_rejected": 1,
        "honest_no_response": 1,
        "cheaters_caught": 4,
        "cheaters_missed": 1,
        "cheaters_unprobed": 1,
        "requests": 2,
        "quarantined": 3,
    }
    assert s["by_behaviour"] == {
        "honest": {"n": 4, "caught": 2, "reasons": {"compliant": 4, "fisher-mismatch": 1, "no-response": 1}},
        "late": {"n": 1, "caught": 0, "reasons": {"compliant": 1}},
        "garbage-proof": {"n": 1, "caught": 1, "reasons": {"invalid-proof": 1}},
        "stale-model": {"n": 1, "caught": 1, "reasons": {"stale-model": 2}},
        "wrong-mask": {"n": 1, "caught": 1, "reasons": {"compliant": 1, "wrong-mask": 1}},
        "hide-in-padding": {"n": 1, "caught": 0, "reasons": {"compliant": 1}},
        "ignore": {"n": 1, "caught": 1, "reasons": {"no-response": 1}},
        "replay": {"n": 1, "caught": 0, "reasons": {}},
    }
    assert s["wall_s"] == 12.5 and s["seed"] == 3 and type(s["seed"]) is int and s["scenario"] == "mixed"
    json.dumps(s, allow_nan=False)


def test_medians_ignore_nan_and_the_wrong_population(ledger, clients):
    s = summarize(ledger, clients, wall_s=1.0)
    assert s["recovery_median"] == pytest.approx(0.875)  # honest compliant only; the NaN of `late` dropped
    assert s["forget_acc_before_median"] == pytest.approx(0.9)
    assert s["forget_acc_after_median"] == pytest.approx(0.25)
    assert s["prove_s_median"] == pytest.approx(21.0)  # every honest row, rejected one included
    assert s["proof_bytes_median"] == pytest.approx(2000.0)
    assert s["verify_ms_median"] == pytest.approx(5.0)
    assert s["by_profile"] == {
        "laptop": {
            "n": 2,
            "prove_s_median": 22.0,
            "proof_bytes_median": 2050.0,
            "device_s_median": 23.0,
            "upload_s_median": None,
        },
        "phone": {
            "n": 3,
            "prove_s_median": 12.0,
            "proof_bytes_median": 1100.0,
            "device_s_median": 13.0,
            "upload_s_median": None,
        },
    }
    assert all(type(v) is float for v in (s["recovery_median"], s["proof_bytes_median"], s["wall_s"]))


def test_empty_ledger_gives_none_medians_and_all_unprobed(ledger, clients):
    s = summarize(ledger.iloc[0:0], clients, wall_s=0.0)
    assert s["cheaters_unprobed"] == 6 and s["cheaters_caught"] == 0 and s["honest_accepted"] == 0
    assert s["requests"] == 0 and s["quarantined"] == 0
    for key in (
        "recovery_median",
        "forget_acc_before_median",
        "forget_acc_after_median",
        "prove_s_median",
        "proof_bytes_median",
        "verify_ms_median",
    ):
        assert s[key] is None, key
    assert s["by_profile"]["phone"]["prove_s_median"] is None
    json.dumps(s, allow_nan=False)


def test_research_columns_are_optional(ledger, clients):
    s = summarize(ledger.drop(columns=[c for c in ledger.columns if c.startswith("client_")]), clients, 1.0)
    assert s["recovery_median"] is None and s["cheaters_caught"] == 4


def test_write_report_writes_every_file(ledger, clients, tmp_path):
    out = tmp_path / "run"
    s = write_report(ledger, clients, out, wall_s=12.5, extra={"seed": 3}, scenario_name="mixed-fleet")
    names = {
        "ledger.csv",
        "clients.csv",
        "summary.json",
        "report.md",
        "detection.png",
        "recovery.png",
        "proof_cost.png",
    }
    if importlib.util.find_spec("pyarrow") is not None:
        names.add("ledger.parquet")
    assert names <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((out / "summary.json").read_text()) == s
    assert len(pd.read_csv(out / "ledger.csv")) == len(ledger)
    md = (out / "report.md").read_text()
    assert "mixed-fleet" in md and "4 of 6 cheaters caught" in md and "1 of 5 honest clients" in md
    for behaviour, _ in CLIENTS.values():
        assert f"| {behaviour}" in md, behaviour
    for png in ("detection.png", "recovery.png", "proof_cost.png"):
        assert f"]({png})" in md
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_survive_empty_data(ledger, clients, tmp_path):
    paths = plot_report(ledger.iloc[0:0], clients.iloc[0:0], tmp_path)
    assert [p.name for p in paths] == ["detection.png", "recovery.png", "proof_cost.png", "forgetting.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_missing_column_is_named(ledger, clients):
    with pytest.raises(ValueError, match=r"ledger is missing required column\(s\) \['compliant'\]"):
        summarize(ledger.drop(columns="compliant"), clients, 1.0)
    with pytest.raises(ValueError, match=r"clients table is missing required column\(s\) \['behaviour'\]"):
        summarize(ledger, clients.drop(columns="behaviour"), 1.0)


def test_unknown_partition_is_named(ledger, clients, tmp_path):
    bad = pd.concat([ledger, ledger.iloc[[0]].assign(partition_id=99)], ignore_index=True)
    with pytest.raises(ValueError, match=r"partition_id\(s\) \[99\] absent from the clients table"):
        write_report(bad, clients, tmp_path / "bad", wall_s=1.0)
    assert not (tmp_path / "bad" / "ledger.csv").exists()


REFERENCE = pd.DataFrame(
    {
        "partition_id": [0, 1],
        "profile": ["phone", "laptop"],
        "retrain_forget_acc": [0.0, 0.05],
        "retrain_personalization_acc": [0.91, 0.89],
    }
)


def test_retrain_reference_sits_beside_the_clients_own_metrics(ledger, clients, tmp_path):
    out = tmp_path / "ref"
    s = write_report(ledger, clients, out, wall_s=1.0, scenario_name="ref", reference=REFERENCE)
    ref = s["retrain_reference"]
    assert ref["clients"] == 2
    # the first request's rows of partitions 0 and 1: forget after 0.1 and 0.2, retrain 0.0 and 0.05
    assert ref["forget_acc_after_median"] == pytest.approx(0.15)
    assert ref["retrain_forget_acc_median"] == pytest.approx(0.025)
    assert ref["forget_gap_to_retrain_median"] == pytest.approx(0.125)
    assert ref["forget_acc_before_median"] == pytest.approx(0.9)
    assert [r["partition_id"] for r in ref["rows"]] == [0, 1]
    md = (out / "report.md").read_text()
    assert "## Forgetting against retrain-from-scratch" in md and "| 1 | laptop | 0.9 | 0.2 | 0.05 |" in md
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(out / "reference.csv")) == 2


def test_reference_client_without_measurements_is_named(ledger, clients, tmp_path):
    bad = pd.concat([REFERENCE, REFERENCE.iloc[[0]].assign(partition_id=2)], ignore_index=True)  # late: a resend
    with pytest.raises(ValueError, match=r"partition\(s\) \[2\] without a compliant honest ledger row"):
        write_report(ledger, clients, tmp_path / "bad", wall_s=1.0, reference=bad)
    assert not (tmp_path / "bad" / "ledger.csv").exists()
    with pytest.raises(ValueError, match="missing required column"):
        summarize(ledger, clients, 1.0, reference=REFERENCE.drop(columns="retrain_forget_acc"))


def test_a_client_at_zero_accuracy_before_has_no_recovery_not_a_zero(ledger, clients):
    honest_ok = ledger.index[
        ledger["compliant"]
        & ledger["partition_id"].isin([p for p, (b, _) in CLIENTS.items() if b in HONEST_BEHAVIOURS])
    ]
    changed = ledger.copy()
    changed.loc[honest_ok, "client_personalization_acc_before"] = 0.0  # every honest client at 0 before ...
    changed.loc[honest_ok, "client_recovery"] = 0.0  # ... reports after / 1e-12 = 0
    assert summarize(changed, clients, wall_s=1.0)["recovery_median"] is None
