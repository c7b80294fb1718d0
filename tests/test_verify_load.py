"""The verification-throughput benchmark's quick mode end to end, and its CLI wiring."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import verify_load as vl  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("load")
    return out, vl.run(out, quick=True)


def test_outputs_exist(quick):
    out, _ = quick
    for name in ("verify.csv", "writes.csv", "reads.csv", "summary.json", "machine.json", "report.md", "latency.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / ".store-bench").exists()  # the scratch store is removed
    report = (out / "report.md").read_text()
    assert "bundles/s" in report and "writes/s" in report and "--quick" in report


def test_every_verdict_is_the_expected_one(quick):
    out, summary = quick
    df = pd.read_csv(out / "verify.csv")
    assert len(df) == vl.QUICK_BUNDLES == summary["verify"]["bundles"]
    assert df["ok"].all() and (df["reason"] == df["expected"]).all()
    assert summary["verify"]["mismatches"] == 0
    # every kind of the pool is verified at least once, and each gets its reason
    kinds = set(df["item"].str.split("/").str[0] + "/" + df["behaviour"])
    assert {f"cheat/{c}" for c in vl.QUICK_CHEATS} | {f"malformed/{m}" for m in vl.QUICK_MALFORMED} <= kinds
    for cheat in vl.QUICK_CHEATS:
        assert set(df.loc[df["behaviour"] == cheat, "reason"]) == {vl.CHEATS[cheat]}
    assert set(df.loc[df["kind"] == "honest", "reason"]) == {"compliant"}
    assert set(df.loc[df["kind"] == "malformed", "reason"]) == {"malformed"}
    assert (df["kind"] == "honest").sum() == vl.QUICK_BUNDLES - max(
        round(0.2 * vl.QUICK_BUNDLES), len(vl.QUICK_CHEATS) + len(vl.QUICK_MALFORMED)
    )
    # honest bundles: one SNARK per proof; malformed ones never reach the SNARK check
    honest = df[df["kind"] == "honest"]
    assert (honest["snarks"] == honest["proofs"]).all() and (honest["proofs"] == 2).all()
    assert (df.loc[df["kind"] == "malformed", "snarks"] == 0).all()
    assert (df["latency_ms"] > 0).all()
    per = summary["verify"]["per_reason"]
    assert sum(s["n"] for s in per.values()) == len(df)
    assert summary["verify"]["snarks"] == df["snarks"].sum()


def test_store_writes_and_reads(quick):
    out, summary = quick
    writes = pd.read_csv(out / "writes.csv")
    verify = pd.read_csv(out / "verify.csv")
    assert len(writes) == len(verify) == summary["writes"]["verdicts"]
    assert (writes["reason"] == verify["reason"]).all()
    assert (writes["registry_write"] == (writes["reason"] == "compliant")).all()
    # one registry version per node registration, one more per compliant verdict (writes phase and at-size writes)
    reads = pd.read_csv(out / "reads.csv")
    at_size = reads[reads["query"] == "verdict transaction (write)"]
    assert summary["writes"]["registry_versions"] >= vl.QUICK_NODES + writes["registry_write"].sum()
    assert sorted(set(reads["rows"])) == list(vl.READ_SIZES)
    assert set(reads["query"]) == {
        "quarantined()",
        "decided(request)",
        "failed_requests(node)",
        "verdict transaction (write)",
    }
    assert len(at_size) == len(vl.READ_SIZES)
    assert (reads["reps"] == vl.QUICK_READ_REPS).all()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["config"]["quick"] and saved["config"]["circuit"].endswith("_G16")
    assert saved["writes"]["fs_type"]


def test_cli_wiring(tmp_path):
    from simulations.cli import build_parser

    args = build_parser().parse_args(["bench", "load", "--out", str(tmp_path), "--quick", "--bundles", "60"])
    assert (args.what, args.quick, args.bundles) == ("load", True, 60)
    assert build_parser().parse_args(["bench", "load", "--out", str(tmp_path)]).bundles is None
    with pytest.raises(ValueError, match="at least 1"):
        vl.run(tmp_path, quick=True, bundles=0)
