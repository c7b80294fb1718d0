"""The MUNKEY fleet end to end without Ray: simulations/munkey.toml (shrunk) through an in-process SyncGrid.

The same ServerApp body (``munkey_provider_main``: MunkeyUnlearning around FedAvg) and the same ClientApp
(``build_munkey_client_app``: MunkeyMod plus the research mod) as ``simulate_munkey`` on Ray. Twelve
clients: two honest and one of every MUNKEY behaviour; every reply goes to the real verifier.
"""

import json

import pandas as pd
import pytest
import tomli_w
import torch
from flwr.app import Context, RecordDict

from simulations.client_app import build_client_app
from simulations.munkey_fleet import (
    EXPECTED,
    FROM_SECOND,
    UNCATCHABLE,
    build_munkey_client_app,
    load_munkey_scenario,
    munkey_provider_main,
    munkey_world,
)
from simulations.scenario import PROJECT_ROOT, ScenarioError, effective_tables
from simulations.server_app import main as server_main
from strategies.munkey import LEDGER_REASONS
from zkapex_flwr.munkey import cheats
from zkapex_flwr.munkey.commitment import MemoryCommitment
from zkapex_flwr.testing import SyncGrid

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("task_identity")

SCENARIO = PROJECT_ROOT / "simulations" / "munkey.toml"
SMALL = {
    "clients": 12,
    "behaviours.honest": 2,
    "training.steps": 60,
    "training.shift_steps": 10,
    "data.eval_samples": 40,
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("munkey-fleet")
    path = tmp / "munkey-small.toml"
    path.write_text(tomli_w.dumps(effective_tables(SCENARIO, SMALL)), encoding="utf-8")
    sc = load_munkey_scenario(path)
    out = tmp / "out"
    # what `flwr run .` starts: the project's one ClientApp and one ServerApp, which dispatch on `method`
    grid = SyncGrid(build_client_app(str(path)), sc.clients)
    run_config = {"scenario": str(path), "out": str(out), "resume": False, "supernode-wait-s": 1.0}
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    summary = json.loads((out / "summary.json").read_text())
    return sc, munkey_world(path), grid, out, summary


def test_the_same_fleet_through_its_own_apps(tmp_path):
    """``simulate_munkey``'s own ClientApp and provider give the same verdicts as the project's apps."""
    path = tmp_path / "munkey-tiny.toml"
    path.write_text(tomli_w.dumps(effective_tables(SCENARIO, {**SMALL, "clients": 11, "behaviours.honest": 1})))
    grid = SyncGrid(build_munkey_client_app(str(path)), 11)
    summary = munkey_provider_main(grid, path, tmp_path / "out", supernode_wait_s=1.0)
    assert summary["cheaters_caught"] == summary["catchable_cheaters"] and summary["honest_rejected"] == 0


def test_every_behaviour_of_the_cheats_module_is_in_the_fleet(fleet):
    sc, world, _, _, _ = fleet
    assert set(world.fleet) == set(cheats.BEHAVIOURS) | {"backbone-shift"}
    assert len(sc.requests) >= 2 and {r.forget for r in sc.requests} == {"ids", "client-ids", "class"}


def test_every_catchable_cheater_caught_with_its_reason(fleet):
    _, world, _, out, summary = fleet
    ledger = pd.read_csv(out / "ledger.csv")
    assert set(ledger["reason"]) <= set(LEDGER_REASONS)
    ledger = ledger[ledger["phase"] == "request"]  # each request's own verdict (make-up rounds come after)
    requests = list(dict.fromkeys(ledger["request_id"]))
    for pid, beh in enumerate(world.fleet):
        mine = ledger[ledger["partition_id"] == pid].set_index("request_id")["reason"]
        if beh == "honest" or beh in UNCATCHABLE:
            assert set(mine) == {"compliant"}, (pid, beh, dict(mine))
            continue
        first = requests[1] if beh in FROM_SECOND else requests[0]
        assert mine[first] == cheats.EXPECTED[beh], (pid, beh, dict(mine))
        if beh in FROM_SECOND:
            assert mine[requests[0]] == "compliant"
    assert summary["cheaters_caught"] == summary["catchable_cheaters"] == 8
    assert summary["honest_rejected"] == 0 and summary["uncatchable_caught"] == 0
    assert summary["all_as_expected"] and EXPECTED["backbone-shift"] == "compliant"


def _live_ids(grid, node):
    return set(grid.contexts[node].state.array_records["munkey.model"].to_torch_state_dict()["memory.ids"].tolist())


def test_deleted_ids_are_gone_from_honest_clients_and_theta(fleet):
    _, world, grid, out, summary = fleet
    clients = pd.read_csv(out / "clients.csv")
    served = json.loads((out / "provider" / "munkey-provider.json").read_text())
    provider_gone = set(served["deleted_ids"])
    class_label = next(r.label for r in world.scenario.requests if r.forget == "class")
    assert set(world.requests["provider-ids"]["provider"]) <= provider_gone
    assert {i for i in world.memory_ids.tolist() if int(world.y[i]) == class_label} <= provider_gone
    assert summary["theta"]["final_is_theta_minus_deleted"] and summary["theta"]["deleted_ids_in_final"] == 0
    for _, c in clients[clients["behaviour"] == "honest"].iterrows():
        node, pid = int(c["node_id"]), int(c["partition_id"])
        held = _live_ids(grid, node)
        own = set(world.parts[pid].tolist())
        own_gone = set(world.requests["client-own"]["clients"].get(pid, [])) | {
            i for i in own if int(world.y[i]) == class_label
        }
        assert held == (set(world.memory_ids.tolist()) - provider_gone) | (own - own_gone)
        meta = grid.contexts[node].state.config_records["munkey.meta"]
        assert MemoryCommitment.from_bytes(meta["state"]).ids() == sorted(held)
    # the hidden copy is compliant, yet its live memory still holds what it proved deleted
    hidden = clients[clients["behaviour"] == "hidden-copy"].iloc[0]
    assert set(world.requests["provider-ids"]["provider"]) <= _live_ids(grid, int(hidden["node_id"]))


def test_research_metrics_and_outputs(fleet):
    _, _, _, out, summary = fleet
    for name in (
        "ledger.csv",
        "clients.csv",
        "research.csv",
        "summary.json",
        "report.md",
        "detection.png",
        "deletion_time.png",
        "uncatchable.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text())["clients"] == 12
    ids = summary["requests"]["provider-ids"]
    assert ids["theta"]["exact_rebuild"] and ids["theta"]["provider_ids_deleted"] == 30
    assert ids["honest_deleted_ids_still_held"] == 0 and ids["honest_equal_to_twin"]
    assert ids["theta"]["forget_p_after"] < ids["theta"]["forget_p_before"]  # deleting keys removes their signal
    assert 0 < ids["prove_ms_per_deleted"] < 50 and 0 < ids["verify_ms_per_deleted"] < 50
    hidden = summary["uncatchable_signal"]["hidden-copy"]["provider-ids"]
    assert hidden["forget_p_after"] > hidden["forget_p_twin"]  # the kept rows still answer for the deleted ids
    assert "| keep-key | 1 | kept-key | kept-key | 1 | yes |" in (out / "report.md").read_text()


def test_unknown_keys_and_wrong_method_are_errors(tmp_path):
    with pytest.raises(ScenarioError, match=r"\[deletion\]: unknown key\(s\) \['dedline_s'\]"):
        load_munkey_scenario(SCENARIO, {"deletion.dedline_s": 1.0})
    with pytest.raises(ScenarioError, match="unknown behaviour 'flip'"):
        load_munkey_scenario(SCENARIO, {"behaviours.flip": 1})
    bad = tmp_path / "zk.toml"
    bad.write_text(tomli_w.dumps({k: v for k, v in effective_tables(SCENARIO).items() if k != "method"}))
    with pytest.raises(ScenarioError, match="'method' must be \"munkey\""):
        load_munkey_scenario(bad)
