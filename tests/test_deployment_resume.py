"""The provider killed mid-request on a real loopback deployment (``tests/deployment.py``), then resumed.

Its own file so that it runs beside the main deployment run (``test_deployment.py``) on the other test
worker: each is a few minutes of real processes, real EZKL proofs and real network.
"""

import json
import re
import time

import pandas as pd
import pytest
from deployment import PROJECT_ROOT, Deployment, alive

pytestmark = [pytest.mark.deployment, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SCENARIO = PROJECT_ROOT / "simulations" / "deploy.toml"
EXPECTED = {"honest": "compliant", "garbage-proof": "invalid-proof"}


def _ledger_rows(db) -> int:
    """Rows in the provider's ledger, read-only from outside the provider (0 while the store does not exist)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
        try:
            return con.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # the schema is being created
        return 0


def _received(dep, kind: str, offsets: dict | None = None) -> dict[str, int]:
    """How many ``kind`` messages each SuperNode received (after ``offsets``: byte offsets into its log)."""
    out = {}
    for s in dep.supernodes:
        text = s.log.read_bytes()[(offsets or {}).get(s.name, 0) :].decode(errors="replace")
        out[s.name] = text.count(f"Receiving: {kind} message")
    return out


def test_provider_killed_mid_request_resumes_on_restart(tmp_path):
    """SIGKILL the ServerApp after the first verdict of the unlearning round, with the next node's request in
    flight; ``flwr run ... resume=true`` against the same SuperLink/SuperNodes finishes the request: no ledger
    row lost or duplicated, no node asked to commit again, decided nodes not asked again, and the node whose
    answer died with the provider is compliant when asked again (it proves from its registered θp)."""
    from strategies.ledger import Ledger
    from strategies.registry import Registry

    scenario = tmp_path / "deploy-serial.toml"  # one unlearning message in flight at a time
    text = SCENARIO.read_text()
    assert "max_in_flight = 3" in text
    scenario.write_text(text.replace("max_in_flight = 3", "max_in_flight = 1"))
    out = tmp_path / "out"
    db = out / "provider" / "provider.db"
    with Deployment(tmp_path / "dep", supernodes=3) as dep:
        popen, log = dep.start_run({"scenario": str(scenario), "out": str(out), "resume": True})
        run1 = dep.run_id_of(log, popen=popen)
        end = time.monotonic() + 600
        while _ledger_rows(db) < 1 and time.monotonic() < end and popen.poll() is None:
            time.sleep(0.2)
        rows_at_kill = _ledger_rows(db)
        assert 1 <= rows_at_kill < 3, f"not mid-request: {rows_at_kill} ledger rows\n{dep.logs()}"
        killed = dep.kill_serverapp()
        offsets = {s.name: s.log.stat().st_size for s in dep.supernodes}
        dep.flwr("stop", str(run1), "deploy")  # what an operator does: the dead run is marked finished
        assert not alive(killed)
        before = Ledger(db).frame()
        assert len(before) == rows_at_kill
        popen.wait(timeout=120)

        popen2, log2 = dep.start_run({"scenario": str(scenario), "out": str(out), "resume": True})
        run2 = dep.run_id_of(log2, popen=popen2)
        popen2.wait(timeout=900)
        status = dep.wait_for_run(run2, timeout_s=120)
        assert status == "finished:completed", f"run {run2}: {status}\n{dep.logs()}"
        ledger = Ledger(db).frame()
        msg = f"\n{ledger[['node_id', 'reason', 'attempts', 'detail']].to_string()}\n{dep.logs()}"
        pd.testing.assert_frame_equal(ledger.iloc[: len(before)], before, check_dtype=False)  # nothing lost or changed
        assert len(ledger) == 3 and not ledger.duplicated(["request_id", "node_id"]).any(), msg  # each node once
        decided = {int(n) for n in before["node_id"]}
        node_of = {s.name: int(re.search(r"SuperNode ID: (\d+)", s.log.read_text()).group(1)) for s in dep.supernodes}
        commits, unlearns = _received(dep, "train.commit", offsets), _received(dep, "train.unlearn", offsets)
        assert not any(commits.values()), f"run 2 asked nodes to commit again: {commits}" + msg
        for name, node in node_of.items():
            # decided nodes are not asked again; the others are (a run-1 message delivered late counts here too)
            assert (unlearns[name] == 0) if node in decided else (unlearns[name] >= 1), f"{name}: {unlearns}" + msg
        clients = pd.read_csv(out / "clients.csv", dtype={"node_id": "UInt64"})
        rows = ledger.merge(clients[["partition_id", "behaviour"]], on="partition_id")
        for _, r in rows.iterrows():
            assert r["reason"] == EXPECTED[r["behaviour"]], f"{r['behaviour']}: {r['reason']} {r['detail']}" + msg
        registry = Registry(db)
        for _, r in rows[rows["behaviour"] == "honest"].iterrows():
            assert registry.versions(int(r["node_id"])) == [1, 2], msg  # exactly one move to θu per node
        summary = json.loads((out / "summary.json").read_text())
        assert summary["honest_accepted"] == 2 and summary["cheaters_caught"] == 1, summary
