"""The smoke fleet end to end through Flower's simulation engine on Ray (about 2 minutes).

20 virtual SuperNodes run the ready ClientApp; one of every dishonest behaviour of docs/protocol.md §5 runs
its real code path against the real verifier inside the provider strategy.
"""

import json

import pandas as pd
import pytest

from simulations.report import HONEST_BEHAVIOURS
from zkapex_flwr.proof.cheats import BEHAVIOURS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS"),
]

# the reason code each behaviour must be caught with (replay: another node's bundle opens another θp,
# or was proven with another circuit when the victim's device picked a different proof size)
EXPECTED = {
    "ignore": {"incomplete"},
    "garbage-proof": {"invalid-proof"},
    "mask-only": {"kkt-violation"},
    "partial-mask": {"wrong-mask"},
    "stale-model": {"stale-model"},
    "fake-fisher": {"fisher-mismatch"},
    "replay": {"invalid-proof", "wrong-circuit"},
    "tamper-instances": {"invalid-proof"},
    "wrong-mask": {"wrong-mask"},
    "drop-blocks": {"incomplete"},
    "duplicate-block": {"incomplete"},
    "hide-in-padding": {"incomplete"},
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from simulations.runner import simulate

    out = tmp_path_factory.mktemp("smoke")
    summary = simulate("simulations/smoke.toml", out)
    ledger = pd.read_csv(out / "ledger.csv", dtype={"node_id": "uint64"})
    clients = pd.read_csv(out / "clients.csv", dtype={"node_id": "UInt64"})
    rows = ledger.merge(clients[["partition_id", "behaviour"]], on="partition_id")
    return out, summary, rows, clients


def test_summary_has_every_key(smoke):
    _, s, _, clients = smoke
    for key in (
        "clients",
        "honest",
        "dishonest",
        "honest_accepted",
        "honest_rejected",
        "cheaters_caught",
        "cheaters_missed",
        "by_behaviour",
        "recovery_median",
        "forget_acc_after_median",
        "prove_s_median",
        "proof_bytes_median",
        "verify_ms_median",
        "wall_s",
    ):
        assert key in s, key
    assert s["clients"] == 20 and set(clients["behaviour"]) == set(BEHAVIOURS) | {"late"}
    assert s["prove_s_median"] > 0 and s["proof_bytes_median"] > 0 and s["verify_ms_median"] > 0


def test_every_cheater_caught_with_its_reason(smoke):
    _, s, rows, clients = smoke
    cheaters = clients[~clients["behaviour"].isin(HONEST_BEHAVIOURS)]
    assert s["cheaters_caught"] == len(cheaters) == s["dishonest"] and s["cheaters_missed"] == 0
    for _, c in cheaters.iterrows():
        mine = rows[rows["partition_id"] == c["partition_id"]]
        assert len(mine) == 1, f"{c['behaviour']}: {len(mine)} ledger rows"
        reason = mine["reason"].iloc[0]
        assert reason in EXPECTED[c["behaviour"]], f"{c['behaviour']} caught as {reason}: {mine['detail'].iloc[0]}"
        assert bool(mine["quarantined"].iloc[0])


def test_no_honest_client_rejected(smoke):
    _, s, rows, _ = smoke
    honest = rows[rows["behaviour"].isin(HONEST_BEHAVIOURS)]
    assert len(honest) == s["honest"] == 8
    assert (honest["reason"] == "compliant").all(), honest[["behaviour", "reason", "detail"]]
    assert s["honest_rejected"] == 0 and s["honest_accepted"] == s["honest"]
    assert not honest["quarantined"].astype(bool).any()
    assert s["recovery_median"] is not None and s["recovery_median"] > 0.8


def test_forgetting_measurable_and_matched_by_retrain(smoke):
    """The request forgets something the clients knew, as far as retrain-from-scratch does."""
    out, s, rows, _ = smoke
    assert s["forget_acc_before_median"] > 0.5  # θp knows the class before the request
    ref = s["retrain_reference"]
    good = rows[rows["behaviour"].isin(HONEST_BEHAVIOURS) & (rows["reason"] == "compliant")].set_index("partition_id")
    measured = good.dropna(subset=["client_forget_acc_before", "client_forget_acc_after"])
    # retrain_clients = 8. A reply resent after a missed deadline carries no research metrics, and on a
    # loaded 2-core machine two of the eight were resent: the reference needs a majority, not all
    assert ref["clients"] == min(8, len(measured)) >= 5
    assert ref["retrain_forget_acc_median"] < 0.1  # retrain forgets in this setting
    assert ref["forget_acc_after_median"] <= ref["retrain_forget_acc_median"] + 0.05
    assert ref["forget_acc_before_median"] - ref["forget_acc_after_median"] > 0.5
    assert ref["personalization_acc_after_median"] >= 0.95 * ref["retrain_personalization_acc_median"]
    # the reference rows are the clients' own ledger numbers beside their retrain figures
    for r in ref["rows"]:
        assert r["client_forget_acc_after"] == pytest.approx(good.loc[r["partition_id"], "client_forget_acc_after"])
    assert len(pd.read_csv(out / "reference.csv")) == ref["clients"]


def test_late_client_handled_by_deadline_policy(smoke):
    _, _, rows, _ = smoke
    late = rows[rows["behaviour"] == "late"].iloc[0]
    assert late["reason"] == "compliant" and late["attempts"] == 2 and not bool(late["quarantined"])


def test_quarantined_clients_excluded_from_next_training_round(smoke):
    out, _, rows, clients = smoke
    rounds = json.loads((out / "rounds.json").read_text())
    quarantined = set(rounds["quarantined_after"])
    cheater_nodes = {int(n) for n in clients.loc[~clients["behaviour"].isin(HONEST_BEHAVIOURS), "node_id"]}
    assert quarantined == cheater_nodes
    after = set(rounds["participants"]["2"])  # the FedAvg round after the unlearning round
    assert after and not after & quarantined
    assert len(rounds["participants"]["1"]) == 10  # fraction_train 0.5 of 20, before any verdict
    mpu_cheaters = pd.read_csv(out / "mpu_requests.csv").query("behaviour != 'honest'")["node_id"]
    hidden = quarantined | {int(n) for n in mpu_cheaters}  # the MPU screen quarantines too
    assert len(after) == max(int(0.5 * (20 - len(hidden))), 2)  # FedAvg's fraction of what is left, at least 2


def test_unlearning_replies_carry_no_weights(smoke):
    out, s, rows, _ = smoke
    audit = json.loads((out / "replies.json").read_text())
    assert len(audit) >= len(rows) - 1  # every reply that arrived (ignore's empty bundle included)
    assert all(a["array_records"] == 0 for a in audit)
    # the reply is proofs, their public values and residuals, one proof step per K masked columns of a
    # block: its size follows the mask (≈ 1.3 KB per step of 6 committed inputs), not the model
    masked = s["masks"]["forget-class-3"]["masked_weights"]
    assert sorted(a["content_bytes"] for a in audit)[len(audit) // 2] < 2500 * masked


def test_report_is_written(smoke):
    out, _, _, _ = smoke
    report = (out / "report.md").read_text()
    for name in (
        "summary.json",
        "ledger.csv",
        "clients.csv",
        "detection.png",
        "recovery.png",
        "proof_cost.png",
        "forgetting.png",
        "reference.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    for b in EXPECTED:
        assert b in report


# --------------------------------------------------------------------- client-held requests (MPU)
MPU_CAUGHT = {"zero-update": {"flagged"}, "garbage": {"flagged", "malformed"}, "random-update": {"flagged"}}


def test_mpu_requests_served_beside_the_providers(smoke):
    """Each [[mpu_requests]] client is served with MPU after the provider's request, through the real
    MPUMod and MPUUnlearning: honest ones accepted and θg forgets their own samples; every dishonest
    reply is caught by the consistency screen, and its node quarantined from later training."""
    out, s, _, clients = smoke
    mpu = s["mpu"]
    rows = pd.read_csv(out / "mpu_requests.csv")
    assert len(rows) == mpu["requests"] == 5, rows
    honest = rows[rows["behaviour"] == "honest"]
    assert (honest["outcome"] == "accepted").all(), honest[["partition_id", "outcome", "detail"]]
    assert (honest["rounds_done"] == honest["rounds"]).all() and mpu["honest_accepted"] == 2
    for _, r in honest.iterrows():  # θg loses the requester's own samples, and keeps most of the other classes
        assert r["forget_acc_after"] < r["forget_acc_before"] - 0.2, r.to_dict()
        assert r["kept_acc_after"] > r["kept_acc_before"] - 0.2, r.to_dict()
    cheats = rows[rows["behaviour"] != "honest"]
    for _, r in cheats.iterrows():
        assert r["outcome"] in MPU_CAUGHT[r["behaviour"]], r.to_dict()
    assert mpu["cheaters_caught"] == mpu["cheaters"] == 3
    rounds = json.loads((out / "rounds.json").read_text())
    assert not set(rounds["participants"]["2"]) & {int(n) for n in cheats["node_id"]}  # hidden from round 2
    ledger = pd.read_csv(out / "mpu_ledger.csv")
    assert set(ledger["request_id"]) == set(rows["request_id"])
    assert "Client-held requests (MPU)" in (out / "report.md").read_text()
