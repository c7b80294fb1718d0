"""A real deployment on loopback: ``flower-superlink`` + 3 ``flower-supernode`` processes, ``flwr run``.

The app goes through the same path as in production: ``flwr run . deploy`` builds the FAB, sends it to
the SuperLink's Control API, the SuperLink's SuperExec starts ``flwr-serverapp`` (the provider) as its
own process, and each SuperNode fetches its messages over the Fleet API (HTTP in flwr 1.41+, not gRPC) and starts a ``flwr-clientapp``
process per message. Training, ``train.commit``, ``train.unlearn`` (2 honest nodes with real EZKL
proofs, 1 sending a garbage proof) and verification all cross the network between processes, over TLS
with SuperNode authentication (each SuperNode's key registered with ``flwr supernode register``)
(``simulations/deploy.toml``; about 3 minutes on 2 cores, a minimal TLS run 50 s more). Helpers: ``tests/deployment.py``.
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


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployment")
    out = root / "out"
    with Deployment(root, supernodes=3, tls=True, auth=True) as dep:  # TLS, and only registered SuperNode keys
        t0 = time.monotonic()
        popen, log = dep.start_run({"scenario": str(SCENARIO), "out": str(out)})
        seen = {"serverapp": set(), "clientapp": set(), "all_alive": True}
        while popen.poll() is None and time.monotonic() - t0 < 900:  # watch the process tree while it runs
            seen["serverapp"].update(dep.serverapp_pids())
            seen["clientapp"].update(dep.clientapp_pids())
            seen["all_alive"] &= all(p.alive() for p in dep.processes())
            time.sleep(0.25)
        if popen.poll() is None:
            popen.kill()
            pytest.fail(f"flwr run did not return within 900 s\n{dep.logs()}")
        run_id = dep.run_id_of(log, timeout_s=1.0)
        status = dep.wait_for_run(run_id, timeout_s=60.0)
        info = dep.run_info(run_id)
        node_ids = {}
        for s in dep.supernodes:
            m = re.search(r"SuperNode ID: (\d+)", s.log.read_text(errors="replace"))
            node_ids[int(s.name.rsplit("-", 1)[1])] = int(m.group(1)) if m else None
        auth = _restart_and_intrude(dep)
        yield {
            "dep": dep,
            "out": out,
            "rc": popen.returncode,
            "run_id": run_id,
            "status": status,
            "info": info,
            "seen": seen,
            "node_ids": node_ids,
            "wall_s": time.monotonic() - t0,
            "auth": auth,
            "pids": {p.name: p.pid for p in dep.processes()},
        }


def _restart_and_intrude(dep) -> dict:
    """After the run: SuperNode 0 restarted with its key, and a SuperNode whose key was never registered."""
    before = dep.node_id_of(0)
    next(s for s in dep.supernodes if s.name == "supernode-0").stop()
    restarted = dep.start_supernode(0)
    end = time.monotonic() + 60
    while restarted.log.read_text(errors="replace").count("SuperNode ID") < 2 and time.monotonic() < end:
        time.sleep(0.3)
    stranger = dep.start_supernode(dep.n, register=False)
    end = time.monotonic() + 60
    while stranger.alive() and time.monotonic() < end:
        time.sleep(0.3)
    dep.supernodes.remove(stranger)
    if stranger.alive():
        stranger.stop()
        return {
            "before": before,
            "after": dep.node_id_of(0),
            "stranger_exited": False,
            "stranger_id": None,
            "stranger_log": stranger.log.read_text(errors="replace"),
        }
    return {
        "before": before,
        "after": dep.node_id_of(0),
        "stranger_exited": True,
        "stranger_id": dep.node_id_of(dep.n),
        "stranger_log": stranger.log.read_text(errors="replace"),
    }


def test_run_completed(deployed):
    d, dep = deployed, deployed["dep"]
    assert d["rc"] == 0 and d["status"] == "finished:completed", (
        f"flwr run rc={d['rc']}, run {d['run_id']} status {d['status']!r}\n{dep.logs()}"
    )
    assert (d["out"] / "summary.json").is_file(), f"the ServerApp wrote no summary.json\n{dep.logs()}"


def test_processes_were_real(deployed):
    """SuperLink, SuperNodes, ServerApp and ClientApps were separate, live OS processes during the run."""
    d, dep = deployed, deployed["dep"]
    seen, pids = d["seen"], set(d["pids"].values())
    assert seen["all_alive"], f"a SuperLink/SuperNode process died during the run\n{dep.logs()}"
    assert all(alive(p) for p in pids), f"a component is not alive after the run\n{dep.logs()}"
    assert len(pids) == 4
    assert seen["serverapp"] and not seen["serverapp"] & pids, f"no separate flwr-serverapp process: {seen}"
    assert seen["clientapp"] and not seen["clientapp"] & pids, f"no separate flwr-clientapp process: {seen}"
    assert all(d["node_ids"].values()), f"a SuperNode never registered: {d['node_ids']}\n{dep.logs()}"


def test_every_node_committed_and_was_verified(deployed):
    d, dep = deployed, deployed["dep"]
    out = d["out"]
    assert (out / "summary.json").is_file(), dep.logs()
    s = json.loads((out / "summary.json").read_text())
    clients = pd.read_csv(out / "clients.csv", dtype={"node_id": "UInt64"})
    ledger = pd.read_csv(out / "ledger.csv", dtype={"node_id": "uint64"})
    rows = ledger.merge(clients[["partition_id", "behaviour"]], on="partition_id")
    msg = f"\n{rows.to_string()}\n{json.dumps(s, indent=1)[:3000]}\n{dep.logs()}"

    # the ledger's node ids are the real SuperNodes' ids, each with its own partition, and each the node id
    # the SuperLink gave that SuperNode's registered public key (SuperNode authentication is on)
    assert {int(pid): int(node) for pid, node in zip(clients["partition_id"], clients["node_id"])} == d["node_ids"], msg
    assert d["node_ids"] == dep.registered, msg

    # every node committed (a registry entry), and an honest node's commitments moved to θu after verification
    from strategies.registry import Registry

    registry = Registry(out / "provider" / "provider.db")
    assert set(registry.nodes()) == set(d["node_ids"].values()), msg

    assert s["clients"] == 3 and s["requests"] == 1, msg
    assert s["honest_accepted"] == 2 and s["honest_rejected"] == 0 and s["honest_no_response"] == 0, msg
    assert s["cheaters_caught"] == 1 and s["cheaters_missed"] == 0, msg
    assert len(rows) == 3 and rows["partition_id"].nunique() == 3, msg
    for _, r in rows.iterrows():
        assert r["reason"] == EXPECTED[r["behaviour"]], f"{r['behaviour']} ended {r['reason']}: {r['detail']}{msg}"
        assert r["verify_ms"] > 0 and r["bundle_bytes"] > 0, msg
        if r["behaviour"] == "honest":
            assert r["compliant"] and r["proofs"] > 0 and not r["quarantined"], msg
            assert len(registry.versions(int(r["node_id"]))) >= 2, msg
        else:
            assert not r["compliant"] and r["quarantined"], msg


def test_unlearning_replies_crossed_the_network(deployed):
    """Every SuperNode received train.unlearn and sent its reply; the SuperLink took the bundles in."""
    d, dep = deployed, deployed["dep"]
    for s in dep.supernodes:
        text = s.log.read_text(errors="replace")
        for kind in ("train.commit", "train.unlearn"):
            assert f"Receiving: {kind} message" in text and f"Sending: {kind} message" in text, (
                f"{s.name} did not answer {kind}\n{dep.logs()}"
            )
    link = dep.superlink.log.read_text(errors="replace")
    for node in d["node_ids"].values():
        assert f"Push replies from node_id={node}" in link, f"node {node}\n{dep.logs()}"
    replies = json.loads((d["out"] / "replies.json").read_text())
    assert len(replies) == 3 and all(r["content_bytes"] > 1000 for r in replies), replies
    traffic = d["info"].get("network-traffic", {})
    assert traffic.get("inbound-bytes", 0) > sum(r["content_bytes"] for r in replies), d["info"]


def test_supernode_authentication_pins_each_key_to_one_node_id(deployed):
    """The TLS and SuperNode authentication set-up of the README: SuperLink with --ssl-* and
    --enable-supernode-auth, each SuperNode's P-384 public key registered with ``flwr supernode register``
    and the SuperNode started with --auth-supernode-private-key; ``flwr`` with ``root-certificates``.

    The provider's registry and ledger are keyed by node id; authentication is what makes a node id an
    identity: the SuperLink gives each registered key one node id (the ledger's ids, checked above), a
    SuperNode restarted with its key comes back under that id (its entry, its obligations and any
    quarantine still apply), and a key that was never registered cannot join at all."""
    d, dep = deployed, deployed["dep"]
    assert "https://127.0.0.1" in dep.superlink.log.read_text(), dep.logs()
    assert d["node_ids"] == dep.registered, dep.logs()
    auth = d["auth"]
    assert auth["before"] == auth["after"] == dep.registered[0], f"{auth}\n{dep.logs()}"
    assert auth["stranger_exited"] and auth["stranger_id"] is None, f"{auth}\n{dep.logs()}"
    assert "Failed to activate SuperNode" in auth["stranger_log"], auth["stranger_log"][-2000:]
