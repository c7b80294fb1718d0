"""The MUNKEY benchmark's quick mode end to end: files, keys, finite numbers, exact deletion."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import munkey as mb  # noqa: E402

HEADLINE = (
    "mia_auc_forget",
    "retrain_mia_auc_forget",
    "plain_retrain_mia_auc_forget",
    "accuracy",
    "plain_vit_accuracy",
    "verify_ms_per_deleted",
    "prove_ms_per_deleted",
    "proof_bytes_per_deleted",
)


def test_munkey_benchmark_quick(tmp_path):
    summary = mb.run(tmp_path, quick=True)
    for name in (
        "munkey.csv",
        "munkey_runs.csv",
        "proofs.csv",
        "tuning.csv",
        "summary.json",
        "report.md",
        "machine.json",
        "munkey.png",
        "forget_time.png",
        "tuning.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in HEADLINE:
        assert isinstance(saved[key], float) and math.isfinite(saved[key]), key
    # the deleted ids are gone, and deleting equals rebuilding without them (memory and logits, bit for bit)
    assert saved["exact_rebuild"] is True and saved["deleted_ids_remaining"] == 0
    assert saved["mia_auc_forget"] == saved["retrain_mia_auc_forget"]
    assert saved["proof_verdicts"] == ["compliant"]
    runs = pd.read_csv(tmp_path / "munkey_runs.csv")
    assert set(runs["request"]) == set(mb.REQUESTS)
    expected = {"munkey", "munkey-delete", "munkey-rebuild", "plain", "plain-retrain"}
    assert expected <= set(runs["method"])
    assert runs[list(mb.METRICS)].notna().all().all()
    munkey_rows = runs[runs["method"].str.startswith("munkey")]
    assert munkey_rows["exact_rebuild"].astype(bool).all()
    proofs = pd.read_csv(tmp_path / "proofs.csv")
    assert (proofs["new_state_matches_memory"]).all() and (proofs["verdict"] == "compliant").all()
    assert summary["requests"]["class"]["munkey-delete"]["runs"] == len(mb.QUICK.seeds)


def test_forget_requests_come_from_the_deletable_pool():
    plan = mb.QUICK
    labels = torch.arange(500) % 10
    pools = mb.split_pools(500, plan, 0)
    requests = mb.forget_ids(pools, labels, plan, 0)
    assert len(requests["samples"]) == round(len(pools.train) * plan.forget_fraction)
    for ids in requests.values():
        assert torch.isin(ids, pools.deletable).all() and not torch.isin(ids, pools.base).any()
    assert (labels[requests["class"]] == plan.forget_class).all()
    assert len(requests["class"]) == int((labels[pools.deletable] == plan.forget_class).sum())
    # every role is disjoint and covers the pool
    everything = torch.cat([pools.test, pools.base, pools.deletable])
    assert everything.sort().values.tolist() == list(range(500))
