"""MUNKEY over Flower: MunkeyUnlearning (provider) and MunkeyMod (client) through an in-process SyncGrid.

A fleet of honest and dishonest clients (zkapex_flwr.munkey.cheats) with a tiny MunkeyViT: two requests
(provider-held and client-held ids; then a class), honest nodes compliant, every cheater quarantined with
its reason code, the uncatchable hidden copy compliant, restart keeps the registry and the ledger.
"""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from strategies.munkey import LEDGER_REASONS, MunkeyConfig, MunkeyRequest, MunkeyUnlearning
from zkapex_flwr.client.munkey import MUNKEY_DELETE, MunkeyDeleteReply, MunkeyMod, MunkeySetup
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.munkey import cheats
from zkapex_flwr.munkey.commitment import MemoryCommitment
from zkapex_flwr.munkey.model import MunkeyViT
from zkapex_flwr.protocol import ProtocolError
from zkapex_flwr.testing import SyncGrid

torch.set_num_threads(1)
pytestmark = pytest.mark.usefixtures("task_identity")

VIT = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0)
PROVIDER_ROWS = 60
OWN_ROWS = 16


def tiny_model() -> MunkeyViT:
    return MunkeyViT.build((1, 8, 8), 10, seed=0, **VIT).freeze()


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 10


def global_arrays() -> ArrayRecord:
    model = tiny_model()
    x, y = images(PROVIDER_ROWS, 0)
    model.add_instances(torch.arange(PROVIDER_ROWS), x, y)
    return ArrayRecord(model.state_dict())


def own_ids(pid: int) -> torch.Tensor:
    return 1000 * (pid + 1) + torch.arange(OWN_ROWS)


def then(first: cheats.Behaviour, later: cheats.Behaviour) -> cheats.Behaviour:
    """Answer the first request with ``first`` and every later one with ``later``."""
    calls = []

    def behaviour(task):
        calls.append(task.binding.request_id)
        return (first if len(set(calls)) == 1 else later)(task)

    return behaviour


BEHAVIOURS = {  # partition id -> how that node answers deletions (None: honest)
    0: None,
    1: None,  # its first delete message is lost: answered on the retry
    2: cheats.keep_key,
    3: cheats.reinsert,
    4: cheats.edit_values,
    5: cheats.garbage,
    6: then(cheats.honest, cheats.replay),
    7: then(cheats.honest, cheats.stale_root),
    8: cheats.hidden_copy,
}
EXPECTED_R1 = {
    100: "compliant",
    101: "compliant",
    102: "kept-key",
    103: "root-mismatch",
    104: "root-mismatch",
    105: "malformed",
    106: "compliant",
    107: "compliant",
    108: "compliant",
}
EXPECTED_R2 = {100: "compliant", 101: "compliant", 106: "replay", 107: "stale-root", 108: "compliant"}


def make_app(models: dict) -> ClientApp:
    def setup(context):
        pid = int(context.node_config["partition-id"])
        x, y = images(OWN_ROWS, 10 + pid)
        models[100 + pid] = model = tiny_model()
        return MunkeySetup(model=model, ids=own_ids(pid), data=TensorData((x, y)), behaviour=BEHAVIOURS.get(pid))

    mod = MunkeyMod(setup)
    return mod.install(ClientApp())


REQUESTS = [
    MunkeyRequest("r1", ids=(3, 7, 11), client_ids={100: (1000, 1001), 102: (3000,), 103: (4002,)}),
    MunkeyRequest("r2", label=5),
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    state = tmp_path_factory.mktemp("munkey-provider")
    models: dict = {}
    grid = SyncGrid(make_app(models), len(BEHAVIOURS), drop_first={(101, MUNKEY_DELETE)})
    strat = MunkeyUnlearning(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        requests=REQUESTS,
        state_dir=state,
        config=MunkeyConfig(deadline_s=0.5),
    )
    result = strat.start(grid, global_arrays(), num_rounds=0)
    return grid, strat, state, result, models


def test_every_node_committed_and_nothing_but_commitments_came_back(fleet):
    _, strat, _, _, _ = fleet
    assert sorted(strat.registry) == list(range(100, 100 + len(BEHAVIOURS)))
    for node, entry in strat.registry.items():
        assert len(bytes.fromhex(entry["commitment"])) == 41
        assert entry["partition"] == node - 100


def test_first_request_verdicts(fleet):
    _, strat, _, _, _ = fleet
    frame = strat.ledger.frame()
    first = frame[frame["request_id"] == "r1"].groupby("node_id").head(1).set_index("node_id")["reason"].to_dict()
    assert first == EXPECTED_R1
    assert set(frame["reason"]) <= set(LEDGER_REASONS)
    honest = frame[(frame["request_id"] == "r1") & (frame["node_id"] == 100)].iloc[0]
    assert honest["deleted"] == 5 and honest["verify_ms"] < 50 and honest["proof_bytes"] > 0
    assert frame[(frame["node_id"] == 101) & (frame["request_id"] == "r1")].iloc[0]["attempts"] == 2


def test_second_request_and_quarantine(fleet):
    _, strat, _, result, _ = fleet
    out = strat.ledger.outcomes()
    r2 = out[out["request_id"] == "r2"].set_index("node_id")["reason"].to_dict()
    for node, reason in EXPECTED_R2.items():
        assert r2[node] == reason, (node, r2)
    assert strat.quarantined() == {102, 103, 104, 105, 106, 107}
    assert [d.request_id for d in result.deletions] == ["r1", "r2"]
    assert result.deletions[1].quarantined == sorted(strat.quarantined())
    # the cheaters were asked again (make-up before r2) and failed again
    made_up = strat.ledger.frame()
    assert len(made_up[(made_up["request_id"] == "r1") & (made_up["node_id"] == 102)]) == 2


def client_commitment(grid, node):
    return MemoryCommitment.from_bytes(grid.contexts[node].state.config_records["munkey.meta"]["state"]).commitment


def test_registry_follows_compliant_nodes_only(fleet):
    grid, strat, _, _, _ = fleet
    for node in (100, 101, 108):  # two compliant deletions: the registry holds the client's current commitment
        assert len(strat.registry[node]["history"]) == 2
        assert strat.commitment(node) == client_commitment(grid, node)
    assert strat.commitment(100).count == PROVIDER_ROWS + OWN_ROWS - 5 - 8
    for node in (102, 103, 104, 105):  # a cheater's entry stays at what it committed
        assert strat.registry[node]["history"] == []


def test_honest_memory_lost_exactly_the_requested_rows(fleet):
    _, strat, _, result, models = fleet
    gone = {3, 7, 11, 1000, 1001} | {i for i in range(PROVIDER_ROWS) if i % 10 == 5} | {1005, 1015}
    held = set(models[100].memory.ids.tolist())
    assert not held & gone
    assert held == (set(range(PROVIDER_ROWS)) | set(own_ids(0).tolist())) - gone
    theta = result.arrays.to_torch_state_dict()["memory.ids"].tolist()  # θg lost the provider-held rows too
    assert set(theta) == set(range(PROVIDER_ROWS)) - gone
    # the uncatchable cheat: compliant on both requests, yet its model still reads every forgotten row
    assert {3, 7, 11} <= set(models[108].memory.ids.tolist())


def test_quarantined_nodes_are_hidden_from_training(fleet):
    grid, strat, _, _, _ = fleet
    msgs = strat.configure_train(1, global_arrays(), ConfigRecord(), grid)
    assert {m.metadata.dst_node_id for m in msgs} == {100, 101, 108}


def test_restart_keeps_registry_and_ledger(fleet):
    _, strat, state, _, _ = fleet
    again = MunkeyUnlearning(requests=REQUESTS, state_dir=state)
    assert again.registry == strat.registry
    assert again.quarantined() == strat.quarantined() and len(again.ledger) == len(strat.ledger)
    assert again.deleted_ids == strat.deleted_ids


def test_a_reply_carrying_weights_or_junk_is_refused():
    good = MunkeyDeleteReply("r1", "n", client_commitment_of_nothing(), b"proof").to_content({})
    assert MunkeyDeleteReply.from_message(Message(good, dst_node_id=100, message_type=MUNKEY_DELETE)).proof == b"proof"
    weights = RecordDict(dict(good) | {"arrays": ArrayRecord({"w": torch.zeros(2)})})
    with pytest.raises(ProtocolError, match="unexpected record"):
        MunkeyDeleteReply.from_message(Message(weights, dst_node_id=100, message_type=MUNKEY_DELETE))
    with pytest.raises(ProtocolError, match="no 'munkey'"):
        MunkeyDeleteReply.from_message(Message(RecordDict(), dst_node_id=100, message_type=MUNKEY_DELETE))


def client_commitment_of_nothing():
    from zkapex_flwr.munkey.commitment import commit_entries

    return commit_entries({}).commitment


def test_client_state_roundtrips_through_the_context(fleet):
    grid, _, _, _, models = fleet
    meta = grid.contexts[100].state.config_records["munkey.meta"]
    state = MemoryCommitment.from_bytes(meta["state"])
    assert state.mismatches(models[100].memory) == []  # the honest node's live memory is what it committed
    assert "salt" not in str(grid.contexts[100].state.config_records.keys())


def test_two_requests_in_one_round_each_see_theta_as_the_earlier_left_it(tmp_path):
    """r1 deletes provider-held rows of class 5, r2 (same round) the class: r2 must not ask for r1's rows again.

    Served from the θg the round started with, r2's required ids would include rows 5 and 15, which every
    honest node deleted for r1, so each honest answer to r2 would be judged against rows it no longer has."""
    models: dict = {}
    grid = SyncGrid(make_app(models), 2)
    strat = MunkeyUnlearning(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        requests=[MunkeyRequest("r1", ids=(5, 15)), MunkeyRequest("r2", label=5)],
        state_dir=tmp_path,
        config=MunkeyConfig(deadline_s=5.0),
    )
    result = strat.start(grid, global_arrays(), num_rounds=0)
    out = strat.ledger.outcomes().set_index(["request_id", "node_id"])["reason"].to_dict()
    assert out == {(r, n): "compliant" for r in ("r1", "r2") for n in (100, 101)}, out
    fives = {i for i in range(PROVIDER_ROWS) if i % 10 == 5}
    assert not fives & set(result.arrays.to_torch_state_dict()["memory.ids"].tolist())
    for node in (100, 101):
        assert not fives & set(models[node].memory.ids.tolist())
        assert strat.commitment(node) == client_commitment(grid, node)
