"""The provider's SQLite store: registry + ledger survive a killed provider, refuse bad rows, and a damaged
file is a clear error that leaves the file as it was (never a silent reset)."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from strategies.ledger import Ledger, LedgerError, LedgerRow
from strategies.registry import Registry, RegistryError
from strategies.store import ProviderStore, StoreError
from zkapex_flwr.proof.circuit import CircuitSpec
from zkapex_flwr.proof.commitments import BlockCommitments

SPEC = CircuitSpec(d=4, slots=1, scale=8, steps=1, group=1)
BIG = 2**64 - 1  # Flower node ids are unsigned 64-bit


def entry(mark: int = 0) -> BlockCommitments:
    theta = np.full((2, 64), mark % 256, dtype=np.uint8)
    return BlockCommitments("c" * 64, "layout", theta, np.full((2, 4, 64), mark % 256, dtype=np.uint8))


def row(rid="r1", node=1, nonce="n1", reason="compliant", **kw) -> dict:
    base = {
        "request_id": rid,
        "node_id": node,
        "partition_id": 0,
        "server_round": 1,
        "nonce": nonce,
        "reason": reason,
        "detail": "",
        "compliant": reason == "compliant",
        "attempts": 1,
        "verify_ms": 1.0,
        "proofs": 1,
        "bundle_bytes": 10,
        "circuit": "k",
        "quarantined": reason != "compliant",
        "recorded_at": "",
    }
    return {**base, **kw}


def test_registry_versions_and_uint64_node_ids(tmp_path):
    reg = Registry(tmp_path / "p.db")
    reg.register(BIG, entry(1), SPEC, partition_id=3)
    reg.update_theta(BIG, {0: bytes([9]) * 64})
    again = Registry(tmp_path / "p.db")
    assert again.nodes() == [BIG] and again.versions(BIG) == [1, 2] and again.record(BIG)["partition_id"] == 3
    assert again.partitions() == {BIG: 3}  # a restarted provider still knows which partition a node reported
    assert again.get(BIG).theta_of(0) == bytes([9]) * 64 and again.get(BIG).theta_of(1) == bytes([1]) * 64
    with pytest.raises(RegistryError, match="node 5 has no registry entry"):
        again.get(5)


def test_ledger_outcomes_quarantine_and_export(tmp_path):
    led = Ledger(tmp_path / "p.db")
    led.append([row("r1", BIG, "a", "kkt-violation"), row("r1", 2, "b"), row("r2", 2, "c", "no-response")])
    led.append([row("r1", BIG, "d")])  # a make-up round: new nonce, now compliant
    assert len(led) == 4 and led.quarantined() == {2} and led.failed_requests(2) == ["r2"]
    assert led.decided("r1") == {BIG, 2}
    out = led.outcomes().set_index(["request_id", "node_id"])
    assert out.loc[("r1", BIG), "nonce"] == "d" and out.loc[("r1", BIG), "reason"] == "compliant"
    assert led.frame()["node_id"].dtype == "uint64" and int(led.frame()["node_id"].iloc[0]) == BIG
    part = led.frame().iloc[:1]  # the same dtypes whatever rows are present (a frame read early equals one read later)
    assert part["client_recovery"].dtype == "float64" and part["client_recovery"].isna().all()
    csv, pq = led.export(tmp_path / "l.csv"), led.export(tmp_path / "l.parquet")
    import pandas as pd

    assert len(pd.read_csv(csv)) == 4 and len(pd.read_parquet(pq)) == 4
    with pytest.raises(LedgerError, match=r"\.csv or \.parquet"):
        led.export(tmp_path / "l.json")


def test_ledger_row_record_maps_client_metrics_to_columns_and_refuses_unknown_ones(tmp_path):
    led = Ledger(tmp_path / "p.db")
    led.append([LedgerRow("r1", 5, "compliant", nonce="n", client={"forget-acc-after": 0.25, "prove-s": 1.5})])
    got = led.frame().iloc[0]
    assert bool(got["compliant"]) and got["client_forget_acc_after"] == 0.25 and got["client_prove_s"] == 1.5
    with pytest.raises(LedgerError, match=r"unknown client metric\(s\) \['accuracy'\]"):
        led.append([LedgerRow("r1", 6, "compliant", nonce="m", client={"accuracy": 1.0})])
    assert len(led) == 1


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(reason="fine"), "unknown reason code 'fine'"),
        (dict(compliant=False), "contradicts reason 'compliant'"),
        (dict(extra_col=1), "unknown columns"),
        (dict(nonce="n1"), "already has a verdict"),  # the same (request, node, nonce) twice: never double-counted
    ],
)
def test_ledger_refuses_bad_rows_and_writes_nothing(tmp_path, bad, match):
    led = Ledger(tmp_path / "p.db")
    led.append([row()])
    before = led.frame()
    with pytest.raises(LedgerError, match=match):
        led.append([row(node=7, nonce="fresh"), row(**bad)])  # the good first row is not written either
    assert led.frame().equals(before)


def test_verdict_transaction_is_all_or_nothing(tmp_path):
    store = ProviderStore(tmp_path / "p.db")
    reg, led = Registry(store), Ledger(store)
    reg.register(1, entry(1), SPEC)
    with pytest.raises(LedgerError):
        with store.transaction():
            reg.update_theta(1, {0: bytes([7]) * 64})
            led.append([row(reason="nope")])
    assert reg.versions(1) == [1] and reg.get(1).theta_of(0) == bytes([1]) * 64 and len(led) == 0


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"this is not a database at all" * 200)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "other-sqlite":
        path.unlink()
        sqlite3.connect(path).execute("CREATE TABLE x (a)").connection.commit()
    elif how == "schema":
        con = sqlite3.connect(path)
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        con.commit()
        con.close()
    elif how == "entry":
        con = sqlite3.connect(path)
        con.execute("UPDATE registry SET entry = X'00010203'")
        con.commit()
        con.close()


@pytest.mark.parametrize(
    "how, match",
    [
        ("garbage", "is damaged"),
        ("empty", "is empty"),
        ("truncated", "is damaged"),
        ("other-sqlite", "not a zkapex-flwr provider store"),
        ("schema", "schema version 99"),
        ("entry", "unreadable"),
    ],
)
def test_damaged_store_is_a_clear_error_never_a_reset(tmp_path, how, match):
    path = tmp_path / "p.db"
    store = ProviderStore(path)
    reg, led = Registry(store), Ledger(store)
    for n in range(40):  # enough pages that truncation cuts real data
        reg.register(n, entry(n), SPEC)
        led.append([row(node=n, nonce=f"x{n}", detail="d" * 200)])
    store.close()
    for side in ("-wal", "-shm"):
        Path(str(path) + side).unlink(missing_ok=True)
    _damage(path, how)
    damaged = path.read_bytes()
    with pytest.raises(StoreError, match=match):
        reg = Registry(path)
        reg.get(3)  # a damaged entry is found when read
    assert path.read_bytes() == damaged  # left for the operator: nothing rewritten


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from strategies.store import ProviderStore
    from strategies.registry import Registry
    from strategies.ledger import Ledger
    from zkapex_flwr.proof.circuit import CircuitSpec
    from zkapex_flwr.proof.commitments import BlockCommitments

    path, total, nodes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = ProviderStore(path)
    reg, led = Registry(store), Ledger(store)
    spec = CircuitSpec(d=4, slots=1, scale=8, steps=1, group=1)
    for k in range(nodes):
        node = 2**63 + k
        if node not in reg:
            mark = np.frombuffer(k.to_bytes(8, "little"), np.uint8)   # each node's own commitments
            reg.register(node, BlockCommitments("c" * 64, "layout", np.resize(mark, (2, 64)),
                                                np.resize(mark, (2, 4, 64))), spec)
    for i in range(total):          # verdict i: request i // nodes, node i % nodes, as the provider writes it
        rid, node = f"req-{i // nodes}", 2**63 + i % nodes
        if node in led.decided(rid):
            continue                # a restarted provider does not ask (or count) a decided pair again
        ok = i % 5 != 3
        with store.transaction():
            if ok:
                reg.update_theta(node, {0: (i).to_bytes(64, "little")})
            led.append([{"request_id": rid, "node_id": node, "partition_id": i, "server_round": 1,
                         "nonce": f"nonce-{i}", "reason": "compliant" if ok else "kkt-violation", "detail": "",
                         "compliant": ok, "attempts": 1, "verify_ms": 1.0, "proofs": 1, "bundle_bytes": 1,
                         "circuit": "k", "quarantined": not ok, "recorded_at": ""}])
        print(i, flush=True)
    print("done", flush=True)
""")


def test_provider_killed_mid_write_resumes_without_loss_or_duplicates(tmp_path):
    """SIGKILL a writer doing the provider's verdict transactions at random points, restart it, repeat."""
    path, total, nodes = tmp_path / "provider.db", 200, 8
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(total), str(nodes)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        stop_after = int(rng.integers(3, 40))
        seen, finished = 0, False
        for line in proc.stdout:
            if line.strip() == "done":
                finished = True
                break
            seen += 1
            if kills < 4 and seen >= stop_after:
                os.kill(proc.pid, signal.SIGKILL)  # mid-transaction or between two: wherever it is
                kills += 1
                break
        proc.wait(timeout=60)
        proc.stdout.close()
        if finished:
            break
        if kills:
            Ledger(path)  # the store opens cleanly after every kill
    assert finished and kills == 4, (finished, kills)
    store = ProviderStore(path)
    led, reg = Ledger(store).frame(), Registry(store)
    assert len(led) == total and sorted(led["partition_id"]) == list(range(total))  # none lost, none twice
    assert not led.duplicated(["request_id", "node_id"]).any()
    for k in range(nodes):
        node = 2**63 + k
        mine = led[led["node_id"] == node].sort_values("partition_id")
        ok = mine[mine["compliant"]]
        assert reg.versions(node) == list(range(1, len(ok) + 2))  # one registry version per compliant verdict
        last = int(ok["partition_id"].iloc[-1])
        assert reg.get(node).theta_of(0) == last.to_bytes(64, "little")  # registry = the last compliant verdict


def test_identity_registers_once_and_a_v2_store_is_migrated_in_place(tmp_path):
    from strategies.registry import DuplicateIdentity

    reg = Registry(tmp_path / "p.db")
    reg.register(1, entry(1), SPEC, identity="partition-7")
    reg.record_failure(2, "no-response", "lost", identity="partition-8")
    assert reg.identity_holder("partition-7") == 1 and reg.identity_holder("partition-8") == 2
    assert reg.identity_holder("") is None
    with pytest.raises(DuplicateIdentity, match="identity 'partition-7', which node 1 holds"):
        reg.register(3, entry(3), SPEC, identity="partition-7")
    with pytest.raises(DuplicateIdentity, match="node 2 holds"):
        reg.register(4, entry(4), SPEC, identity="partition-8")
    assert 3 not in reg and 4 not in reg
    # a store written by the previous schema (no identity columns) opens with every row kept
    path = tmp_path / "v2.db"
    store = ProviderStore(path)
    Registry(store).register(5, entry(5), SPEC)
    Ledger(store).append([row(node=5)])
    store.conn.executescript(
        "DROP INDEX registry_identity; ALTER TABLE registry DROP COLUMN identity; "
        "ALTER TABLE commit_failures DROP COLUMN identity; "
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';"
    )
    store.close()
    again = Registry(path)
    assert again.get(5).theta_of(0) == bytes([5]) * 64 and again.record(5)["identity"] is None
    assert len(Ledger(again.store)) == 1
    assert again.store.query("SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]
    again.register(6, entry(6), SPEC, identity="partition-9")
    assert again.identity_holder("partition-9") == 6
