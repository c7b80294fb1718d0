"""The provider strategy and the client mod in-process: a synchronous Grid that runs a real ClientApp.

Fast counterparts of the Ray fleet test (tests/test_fleet.py): the same protocol messages, the real
EZKL prover and verifier, the persistent registry and ledger, deadline and retry, quarantine.
"""

import json
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from strategies import DeletionRequest, VerifiedUnlearning, dispatch
from strategies.ledger import Ledger
from strategies.registry import Registry
from zkapex_flwr.client import MissingState
from zkapex_flwr.data.images import load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.proof.cheats import cheat_bundle
from zkapex_flwr.protocol import UNLEARN, ProtocolError, UnlearnReply, UnlearnRequest
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.testing import DigitsMLP, SyncGrid, digits_client_app, digits_global_model, digits_provider
from zkapex_flwr.training import accuracy

pytestmark = [
    pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS"),
    pytest.mark.usefixtures("task_identity"),
]  # Messages built outside a Flower runtime (conftest.py)
SCOPE = r"(^|\.)fc1\.weight$"


@pytest.fixture(scope="module")
def digits():
    x, y = load_images("digits")
    return x, y


def make_app(digits, hooks: dict) -> ClientApp:
    """The digits ClientApp: node pid holds 80 digits from 300 + 100·pid (mod 1 400), one local epoch."""
    x, y = digits
    return digits_client_app(
        x,
        y,
        wrap=1400,
        train_kwargs=dict(epochs=1, lr=1e-3),
        hooks=hooks,
        test=TensorData((x[1500:1600], y[1500:1600])),
    )


def provider(digits, state_dir, **cfg) -> VerifiedUnlearning:
    """The digits world's provider: class 3 is forgotten after training round 1; two personalization epochs."""
    return digits_provider(state_dir, after_round=1, x=digits[0], y=digits[1], **({"personal_epochs": 2} | cfg))


def initial_arrays(digits) -> ArrayRecord:
    return digits_global_model(*digits, epochs=5)


def mask_only(prover, mask, req, context):
    return cheat_bundle(prover, mask, req.request_id, "mask-only", binding=req.binding(context.node_id))


@pytest.fixture(scope="module")
def fleet(digits, tmp_path_factory):
    """4 nodes: two honest, one mask-only cheater, one honest node whose first unlearn message is lost."""
    state = tmp_path_factory.mktemp("provider")
    grid = SyncGrid(make_app(digits, {2: mask_only}), 4, drop_first={(103, UNLEARN)})
    strat = provider(digits, state, deadline_s=0.5)
    arrays = initial_arrays(digits)
    strat.result = strat.start(grid, arrays, num_rounds=2, evaluate_fn=central_evaluation(digits))
    return grid, strat, state, arrays


def central_evaluation(digits):
    """The ServerApp's own evaluation of θg: accuracy on held-out digits, and on the class to forget."""
    x, y = digits
    held = TensorData((x[1600:], y[1600:]))
    threes = TensorData((x[:300][y[:300] == 3], y[:300][y[:300] == 3]))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = DigitsMLP()
        model.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord(
            {"accuracy": accuracy(model, ImageTask(), held), "forget-accuracy": accuracy(model, ImageTask(), threes)}
        )

    return evaluate


def test_honest_nodes_compliant_cheater_quarantined(fleet):
    grid, strat, _, _ = fleet
    out = strat.ledger.frame().set_index("node_id")
    assert out.loc[100, "reason"] == "compliant" and out.loc[101, "reason"] == "compliant"
    assert out.loc[102, "reason"] == "kkt-violation"
    assert strat.quarantined() == {102}
    assert bool(out.loc[102, "quarantined"]) and not bool(out.loc[100, "quarantined"])


def test_the_provider_is_a_flower_strategy_whose_result_records_each_deletion(fleet, tmp_path):
    from flwr.serverapp.strategy import Strategy

    from strategies import UnlearningResult

    _, strat, _, _ = fleet
    result = strat.result
    assert isinstance(strat, Strategy) and isinstance(result, UnlearningResult)
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]  # evaluate_fn: before round 1 and after each round
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    (deletion,) = result.deletions
    assert (deletion.request_id, deletion.after_round) == ("r1", 1)
    assert deletion.verdicts == {"compliant": 3, "kkt-violation": 1}
    before, after = deletion.evaluate_before["serverapp"], deletion.evaluate_after["serverapp"]
    assert before == result.evaluate_metrics_serverapp[1]
    # θg itself had the masked weights zeroed: its evaluation after the deletion differs from before
    assert after["forget-accuracy"] != before["forget-accuracy"] or after["accuracy"] != before["accuracy"]
    saved = json.loads(strat.result.save(tmp_path).read_text())
    assert saved["deletions"][0]["verdicts"] == {"compliant": 3, "kkt-violation": 1}
    assert saved["deletions"][0]["evaluate_after"]["serverapp"]["accuracy"] == pytest.approx(after["accuracy"])
    assert set(saved["evaluate_metrics_serverapp"]) == {"0", "1", "2"}
    assert set(torch.load(tmp_path / "global_model.pt")) == set(result.arrays.to_torch_state_dict())


def test_a_strategy_that_needs_more_nodes_than_quarantine_leaves_skips_the_round(fleet):
    """FedAvg(min_train_nodes=4) with one of four nodes quarantined would wait for a fourth node forever."""
    import threading

    grid, strat, state, arrays = fleet
    assert len(strat.quarantined()) == 1
    out = {}

    def run() -> None:  # the store's SQLite connection belongs to the thread that opens it
        strict = out["strategy"] = VerifiedUnlearning(
            FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=4, min_available_nodes=2),
            masker=strat.masker,
            requests=[],
            state_dir=state,
        )
        out["result"] = strict.start(grid, arrays, num_rounds=1)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the wrapped strategy was left waiting for nodes that quarantine hides"
    strict = out["strategy"]
    assert strict.nodes_needed("train") == 4 and strict.nodes_needed("evaluate") == 0
    assert strict.participants[1] == [] and 1 not in out["result"].train_metrics_clientapp


def test_quarantined_node_excluded_from_next_training_round(fleet):
    _, strat, _, _ = fleet
    assert strat.participants[1] == [100, 101, 102, 103]
    assert strat.participants[2] == [100, 101, 103]


def test_lost_message_is_retried_after_the_deadline(fleet):
    grid, strat, _, _ = fleet
    row = strat.ledger.frame().set_index("node_id").loc[103]
    assert row["reason"] == "compliant" and row["attempts"] == 2
    assert grid.seen.count((103, UNLEARN)) == 2


def test_registry_moves_to_theta_u_and_persists(fleet):
    _, strat, state, _ = fleet
    reg = Registry(state / "provider.db")  # a restarted provider reads the same registry
    assert reg.record(100)["version"] == 2 and reg.record(102)["version"] == 1
    assert reg.get(100).digest() == strat.registry.get(100).digest()
    assert reg.get(100).theta.tobytes() != reg.get(102).theta.tobytes()


def test_unlearning_replies_hold_no_weights(fleet):
    _, strat, _, _ = fleet
    assert strat.reply_audit and all(a["array_records"] == 0 for a in strat.reply_audit)


def test_restarted_provider_does_not_ask_again(fleet, digits):
    grid, _, state, arrays = fleet
    before = Ledger(state / "provider.db").frame()
    again = provider(digits, state)
    grid.seen.clear()
    again.start(grid, arrays, num_rounds=1)
    assert (100, "train.commit") not in grid.seen  # registered nodes are not asked to commit again
    kinds = [k for n, k in grid.seen if n != 102]
    assert UNLEARN not in kinds  # decided (request, node) pairs are not re-asked
    after = Ledger(state / "provider.db").frame()
    pd.testing.assert_frame_equal(after.iloc[: len(before)], before, check_dtype=False)  # no row lost or changed
    assert set(after.iloc[len(before) :]["node_id"]) <= {102}  # only the quarantined node's make-up is new


def test_dropped_and_late_clients_follow_the_deadline_policy(digits, tmp_path):
    """100 honest; 101 offline for the unlearning round; 102 answers every attempt after the deadline; 103 is
    late on its first attempt only; 104 fails with an error on every attempt. Retry, then deadline, then
    quarantine; late replies are ignored."""

    def out_of_memory(prover, mask, req, context):
        raise RuntimeError("device out of memory")

    grid = SyncGrid(make_app(digits, {4: out_of_memory}), 5)
    grid.drop_always = {(101, UNLEARN)}
    grid.late = {(102, UNLEARN): [2.5, 2.5], (103, UNLEARN): [2.5]}
    strat = provider(digits, tmp_path, deadline_s=1.5, max_in_flight=1)  # one at a time: SyncGrid proves inside push
    strat.start(grid, initial_arrays(digits), num_rounds=2)
    led = strat.ledger.frame().set_index("node_id")
    assert len(led) == 5 and led.index.is_unique, led[["reason", "attempts", "detail"]]  # none counted twice
    assert list(led.sort_index()["reason"]) == [
        "compliant",
        "no-response",
        "no-response",
        "compliant",
        "no-response",
    ], led[["reason", "attempts"]]
    assert led.loc[100, "reason"] == "compliant" and led.loc[100, "attempts"] == 1
    assert led.loc[103, "reason"] == "compliant" and led.loc[103, "attempts"] == 2  # late once: not quarantined
    for node in (101, 102):
        assert led.loc[node, "reason"] == "no-response" and led.loc[node, "attempts"] == 2
        assert "no reply within 1.5 s on attempt 2" in led.loc[node, "detail"]
    assert grid.seen.count((101, UNLEARN)) == 2 and grid.seen.count((102, UNLEARN)) == 2
    assert (
        led.loc[104, "attempts"] == 2 and "client error: RuntimeError: device out of memory" in led.loc[104, "detail"]
    )
    assert strat.quarantined() == {101, 102, 104} and strat.participants[2] == [100, 103]


class Killed(BaseException):
    """The provider process dies here."""


def test_new_run_after_provider_restart_uses_the_nodes_persisted_state(digits, tmp_path):
    """The provider dies after a node proved but before its verdict was recorded; a new Flower run (fresh
    Contexts, the SuperNodes' state on disk) asks that node again, and it proves from the registered θp."""
    arrays = initial_arrays(digits)
    first = SyncGrid(make_app(digits, {}), 2, state_root=tmp_path / "devices")
    dying = provider(digits, tmp_path / "provider", max_in_flight=1)

    def die(*args, **kwargs):
        raise Killed()

    dying._verify_outcome = die
    with pytest.raises(Killed):
        dying.start(first, arrays, num_rounds=1)
    assert first.seen.count((100, UNLEARN)) == 1 and len(dying.ledger) == 0  # node 100 proved; nothing recorded
    assert all((tmp_path / "devices" / f"node-{i}" / "node-state.npz").exists() for i in range(2))
    second = SyncGrid(make_app(digits, {}), 2, run_id=2, state_root=tmp_path / "devices")  # new run, empty Contexts
    restarted = provider(digits, tmp_path / "provider")
    restarted.start(second, arrays, num_rounds=1)
    assert ("train.commit" not in {k for _, k in second.seen}) and (100, UNLEARN) in second.seen
    out = restarted.ledger.outcomes()
    assert set(out["reason"]) == {"compliant"} and len(out) == 2
    assert restarted.registry.versions(100) == [1, 2]
    assert restarted.partitions == {100: 0, 101: 1} and set(out["partition_id"]) == {0, 1}
    without = SyncGrid(make_app(digits, {}), 1, run_id=3)  # no state dir: a clear error, not a silent re-commit
    req = UnlearnRequest("r", "n", b"\x00\x00\x00\x00", "{}", "digest", "circuit", 1, 5.0)
    msg = Message(req.to_content(), dst_node_id=100, message_type=UNLEARN)
    msg.metadata.__dict__["_message_id"] = "m0"
    with pytest.raises(MissingState, match="zkapex-state-dir"):
        without.app(msg, without.contexts[100])


def test_unlearn_before_commit_is_a_clear_error(digits):
    app = make_app(digits, {})
    grid = SyncGrid(app, 1)
    req = UnlearnRequest("r", "n", b"\x00\x00\x00\x00", "{}", "digest", "circuit", 1, 5.0)
    msg = Message(req.to_content(), dst_node_id=100, message_type=UNLEARN)
    msg.metadata.__dict__["_message_id"] = "m1"
    with pytest.raises(MissingState, match="must answer a train.commit round"):
        app(msg, grid.contexts[100])


def test_reply_with_weights_is_malformed():
    req = Message(RecordDict(), dst_node_id=1, message_type=UNLEARN)
    req.metadata.__dict__["_message_id"] = "m2"
    content = UnlearnReply("r", "n", b"x").to_content({})
    content["leak"] = ArrayRecord([np.zeros(3, dtype=np.float32)])
    with pytest.raises(ProtocolError, match="must never hold weights"):
        UnlearnReply.from_message(Message(content, reply_to=req))


def test_dispatch_gives_up_after_max_attempts():
    class Silent:
        def __init__(self):
            self.pushed = 0

        def push_messages(self, msgs):
            self.pushed += len(msgs)
            return [uuid.uuid4().hex for _ in msgs]

        def pull_messages(self, ids):
            return []

    grid, t0 = Silent(), time.monotonic()
    out = dispatch(
        grid,
        [1, 2],
        lambda n, a: Message(RecordDict(), dst_node_id=n, message_type=UNLEARN),
        deadline_s=0.2,
        max_attempts=3,
        max_in_flight=1,
        poll_s=0.01,
    )
    assert grid.pushed == 6 and all(
        o.reply is None and "no reply within 0.2 s on attempt 3" in o.detail for o in out.values()
    )
    assert all(o.attempts == 3 for o in out.values()) and time.monotonic() - t0 >= 1.2


def test_scenario_errors_name_file_and_key(tmp_path):
    from simulations.scenario import ScenarioError, load_scenario

    bad = tmp_path / "bad.toml"
    bad.write_text('clients = 4\n[[requests]]\nid = "r"\nafter_round = 0\n[behaviours]\nhonest = 3\nsneaky = 1\n')
    with pytest.raises(ScenarioError, match="unknown behaviour 'sneaky'"):
        load_scenario(bad)
    bad.write_text("clients = 4\n[unlearning]\nblock_sise = 16\n")
    with pytest.raises(ScenarioError, match=r"bad.toml \[unlearning\]: unknown key\(s\) \['block_sise'\]"):
        load_scenario(bad)
    bad.write_text('clients = 4\nretrain_clients = "all"\n[[requests]]\nid = "r"\nafter_round = 0\n')
    with pytest.raises(ScenarioError, match=r"'retrain_clients' must be an integer in 0..clients=4, got 'all'"):
        load_scenario(bad)
    sc = load_scenario("simulations/smoke.toml")
    assert sc.fleet() == load_scenario("simulations/smoke.toml").fleet()
    counts = {}
    for c in sc.fleet():
        counts[c.behaviour] = counts.get(c.behaviour, 0) + 1
    assert counts["honest"] == 7 and len(counts) == 14


def test_group_mask_respects_block_budget():
    from zkapex_flwr.unlearning import BlockLayout, select_mask

    layout = BlockLayout.from_model(DigitsMLP(), 16, SCOPE)
    scores = torch.rand(layout.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = select_mask(scores, layout, 0.01, max_blocks=16, group=(16, 2))
    units = {int(b) // 16 for b in mask.touched_blocks()}
    assert len(units) == 1 and len(mask) == round(0.01 * layout.size)
    cols = mask.dense().reshape(-1, 16, 16)[list(units)[0]].any(0)
    assert int(cols.sum()) <= 2
    with pytest.raises(ValueError, match="hold at most"):
        select_mask(scores, layout, 0.04, max_blocks=16, group=(16, 2))


def test_quarantined_node_is_released_when_it_makes_up_the_request(digits, tmp_path):
    """A node that cheats on r1 is quarantined; before r2 it gets r1 again, proves honestly, is released."""
    calls = []

    def cheat_once(prover, mask, req, context):
        calls.append(req.request_id)
        if len(calls) > 1:
            return None
        return cheat_bundle(prover, mask, req.request_id, "mask-only", binding=req.binding(context.node_id))

    grid = SyncGrid(make_app(digits, {1: cheat_once}), 3)
    strat = provider(digits, tmp_path)
    x, y = digits
    strat.requests.append(
        DeletionRequest("r2", TensorData((x[:300][y[:300] == 5], y[:300][y[:300] == 5])), after_round=2)
    )
    strat.start(grid, initial_arrays(digits), num_rounds=2)
    rows = strat.ledger.frame()
    mine = rows[rows["node_id"] == 101][["request_id", "reason"]].values.tolist()
    assert mine == [["r1", "kkt-violation"], ["r1", "compliant"], ["r2", "compliant"]]
    assert strat.participants[2] == [100, 102] and strat.quarantined() == set()
