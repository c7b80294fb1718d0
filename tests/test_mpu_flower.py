"""MPU over Flower in-process: the real strategy, the real mod, real messages through a SyncGrid.

A 64-32-10 MLP on 8 × 8 digits whose ``fc1``/``fc2`` pair is a hidden-unit site of the reparameterization.
Node 100 holds the forget set (its class-3 digits) and asks in band; node 101 answers with garbage,
node 102 with the copies unchanged, node 103 has no forget set (both asked out of band).
"""

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

import zkapex_flwr.mpu.perturb as perturb
from strategies.mpu import MPURequest, MPUResult, MPUUnlearning
from zkapex_flwr.client.mpu import MPU_CHEATS, MPUMod, MPUSetup
from zkapex_flwr.data.images import load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.mpu.messages import MPU_UNLEARN, REQUEST_METRIC, MPUTrainRequest
from zkapex_flwr.mpu.perturb import MPUConfig
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.testing import SyncGrid
from zkapex_flwr.training import accuracy, train

pytestmark = pytest.mark.usefixtures("task_identity")
FORGET_CLASS = 3


class DigitsNet(nn.Module):
    """fc1 (64 → 32), ReLU, fc2 (32 → 10): the hidden units can be permuted."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    x, y = load_images("digits")
    model = DigitsNet()
    train(model, ImageTask(), TensorData((x[:1200], y[:1200])), epochs=15, lr=3e-3)
    held = TensorData((x[1500:], y[1500:]))
    keep = held.subset(torch.nonzero(held.tensors[1] != FORGET_CLASS, as_tuple=True)[0])
    forget_test = held.subset(torch.nonzero(held.tensors[1] == FORGET_CLASS, as_tuple=True)[0])
    return x, y, ArrayRecord(model.state_dict()), keep, forget_test


def node_data(x, y, pid):
    idx = torch.arange(300 * pid, 300 * pid + 300)
    data = TensorData((x[idx], y[idx]))
    is_f = data.tensors[1] == FORGET_CLASS
    return data.subset(torch.nonzero(is_f, as_tuple=True)[0]), data.subset(torch.nonzero(~is_f, as_tuple=True)[0])


def make_app(x, y, *, hooks=None, no_forget=(), asks=(0,)) -> tuple[ClientApp, MPUMod]:
    """A decorator ClientApp: local FedAvg training (one epoch) plus the MPU mod."""

    def setup(context: Context) -> MPUSetup:
        pid = int(context.node_config["partition-id"])
        forget, retain = node_data(x, y, pid)
        return MPUSetup(
            model=DigitsNet(),
            task=ImageTask(),
            forget=None if pid in no_forget else forget,
            retain=retain,
            request=pid in asks,
            reply_hook=(hooks or {}).get(pid),
            seed=pid,
        )

    mpu = MPUMod(setup)
    app = ClientApp(mods=[mpu])

    @app.train()
    def local_train(msg: Message, context: Context) -> Message:
        node = mpu.setup_for(context)
        node.model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        data = node.retain
        if node.forget is not None:  # D_f is part of the node's training data until it is unlearned
            data = TensorData(tuple(torch.cat([a, b]) for a, b in zip(data.tensors, node.forget.tensors)))
        train(node.model, node.task, data, epochs=1, lr=1e-3, seed=node.seed)
        metrics = MetricRecord({"num-examples": len(data)})
        return Message(RecordDict({"arrays": ArrayRecord(node.model.state_dict()), "metrics": metrics}), reply_to=msg)

    return mpu.install(app), mpu


class RecordingGrid(SyncGrid):
    """A SyncGrid that keeps every message pushed to a node."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pushed: list[Message] = []

    def push_messages(self, messages):
        messages = list(messages)
        self.pushed.extend(messages)
        return super().push_messages(messages)


def config(**kw) -> MPUConfig:
    base = dict(copies=3, alphas=(1.0, 2.0, 4.0), kappa=0.05, rounds=2, algorithm="graddiff", steps=6, lr=3e-3)
    return MPUConfig(**(base | kw))


def evaluation(keep, forget_test, seen):
    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        seen.append(arrays.to_torch_state_dict())
        model = DigitsNet()
        model.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord(
            {
                "accuracy": accuracy(model, ImageTask(), keep),
                "forget-accuracy": accuracy(model, ImageTask(), forget_test),
            }
        )

    return evaluate


@pytest.fixture(scope="module")
def run(world, monkeypatch_module):
    """Two FedAvg rounds, then after round 1: node 100's in-band request and the cheaters' requests."""
    x, y, arrays, keep, forget_test = world
    perturbed: list[dict] = []  # every θ that Pre-Process perturbed (spied)
    real = perturb.make_copies

    def spy(model, cfg, generator):
        perturbed.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, cfg, generator)

    monkeypatch_module.setattr(perturb, "make_copies", spy)
    app, _ = make_app(x, y, hooks={1: MPU_CHEATS["garbage"], 2: MPU_CHEATS["zero-update"]}, no_forget=(3,))
    grid = RecordingGrid(app, 4)
    strat = MPUUnlearning(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        model_fn=DigitsNet,
        config=config(),
        requests=[MPURequest("garbage", 101, after_round=1), MPURequest("zero", 102, after_round=1)],
        deadline_s=5.0,
        seed=0,
    )
    seen: list[dict] = []
    result = strat.start(grid, arrays, num_rounds=2, evaluate_fn=evaluation(keep, forget_test, seen))
    return grid, strat, result, perturbed, seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def by_id(result):
    return {d.request_id: d for d in result.deletions}


def test_honest_request_lowers_forget_accuracy_and_keeps_test_accuracy(run):
    _, strat, result, _, _ = run
    assert isinstance(result, MPUResult)
    rec = by_id(result)["mpu-100-r1"]  # asked in band, in its round-1 train reply
    assert (rec.outcome, rec.rounds_done, rec.node_id, rec.after_round) == ("accepted", 2, 100, 1)
    before, after = rec.evaluate_before["serverapp"], rec.evaluate_after["serverapp"]
    assert after["forget-accuracy"] < before["forget-accuracy"] - 0.3, (before, after)
    assert after["accuracy"] > before["accuracy"] - 0.1, (before, after)
    assert len(rec.consistency) == 2 and rec.bytes_sent > 0 and rec.bytes_received > 0 and rec.wall_s > 0
    assert 100 not in strat.quarantined()


def test_exact_theta_never_leaves_the_server_in_an_mpu_message(run):
    grid, _, _, perturbed, seen = run
    mpu_msgs = [m for m in grid.pushed if m.metadata.message_type == MPU_UNLEARN]
    assert len(mpu_msgs) >= 2 + 2  # two rounds for node 100, at least one for each cheater
    thetas = perturbed + seen
    assert len(perturbed) >= 4
    for msg in mpu_msgs:
        content = msg.content
        assert set(content.config_records["mpu"]) == set(MPUTrainRequest.KEYS)  # no α, κ, noise or secret
        assert sorted(content.array_records) == ["copy-0", "copy-1", "copy-2"]
        for rec in content.array_records.values():
            state = rec.to_torch_state_dict()
            for theta in thetas:
                for name, t in theta.items():
                    assert not torch.allclose(state[name], t, atol=1e-6), name
        copies = [r.to_torch_state_dict() for r in content.array_records.values()]
        assert not torch.allclose(copies[0]["fc1.weight"], copies[1]["fc1.weight"])


def test_garbage_and_zero_update_clients_are_flagged_quarantined_and_change_nothing(run):
    _, strat, result, perturbed, seen = run
    recs = by_id(result)
    assert recs["garbage"].outcome == "flagged" and recs["zero"].outcome == "flagged"
    assert "zero update" in recs["zero"].detail
    assert strat.quarantined() == {101, 102}
    for rid in ("garbage", "zero"):
        assert recs[rid].evaluate_after["serverapp"] == recs[rid].evaluate_before["serverapp"]
        assert recs[rid].rounds_done == 0
    # Pre-Process perturbed, in order: θ for the garbage request, for the zero request, for node 100's round 1:
    # the same θ, the one after training round 1 (evaluated second)
    after_round_1 = seen[1]
    for theta in perturbed[:3]:
        assert all(torch.equal(theta[k], after_round_1[k]) for k in theta)
    assert not torch.equal(perturbed[3]["fc1.weight"], after_round_1["fc1.weight"])  # node 100's round 1 moved it
    frame = strat.ledger.frame()
    assert set(frame[frame.node_id == 101].outcome) == {"flagged"}
    assert bool(frame[frame.node_id == 101].quarantined.iloc[-1])


def test_node_without_forget_set_answers_an_error_and_is_not_quarantined(world):
    x, y, arrays, *_ = world
    app, _ = make_app(x, y, no_forget=(0,), asks=())
    grid = SyncGrid(app, 1)
    strat = MPUUnlearning(
        FedAvg(), model_fn=DigitsNet, config=config(rounds=1), requests=[MPURequest("r", 100)], deadline_s=2.0, seed=1
    )
    out, rec = strat.serve_request(grid, arrays, strat.requests[0], 0)
    assert out is arrays and rec.outcome == "client-error" and "no forget set" in rec.detail
    assert strat.quarantined() == set()


def test_a_flagged_reply_leaves_theta_exactly_unchanged(world):
    x, y, arrays, *_ = world
    app, _ = make_app(x, y, hooks={0: MPU_CHEATS["random-update"]}, asks=())
    strat = MPUUnlearning(
        FedAvg(), model_fn=DigitsNet, config=config(rounds=1), requests=[MPURequest("r", 100)], seed=2
    )
    out, rec = strat.serve_request(SyncGrid(app, 1), arrays, strat.requests[0], 0)
    assert rec.outcome == "flagged" and strat.quarantined() == {100}
    assert out is arrays
    # a quarantined node is sent nothing for its next request
    strat.add_request(MPURequest("again", 100))
    grid = RecordingGrid(app, 1)
    _, rec2 = strat.serve_request(grid, arrays, strat.requests[-1], 0)
    assert rec2.outcome == "refused" and grid.pushed == []


def test_the_wrapped_fedavg_rounds_still_run(run):
    _, _, result, _, _ = run
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2]
    for metrics in result.train_metrics_clientapp.values():
        assert REQUEST_METRIC not in metrics  # stripped before FedAvg aggregated
    assert result.evaluate_metrics_serverapp[2]["accuracy"] > 0.8


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(copies=3, alphas=(1.0, 2.0)), "alpha"),
        (dict(kappa=-0.1), "kappa"),
        (dict(kappa=0.0), "kappa"),
        (dict(steps=0), "steps"),
        (dict(rounds=0), "rounds"),
        (dict(algorithm="nope"), "nope"),
        (dict(copies=1, alphas=(1.0,)), "copies"),
    ],
)
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        MPUUnlearning(FedAvg(), model_fn=DigitsNet, config=config(**kw))


def test_bad_requests_raise(world):
    x, y, arrays, *_ = world
    with pytest.raises(ValueError, match="already used"):
        MPUUnlearning(model_fn=DigitsNet, config=config(), requests=[MPURequest("a", 100), MPURequest("a", 101)])
    with pytest.raises(ValueError, match="after_round"):
        MPUUnlearning(model_fn=DigitsNet, config=config(), requests=[MPURequest("a", 100, after_round=-1)])
    strat = MPUUnlearning(model_fn=DigitsNet, config=config(), requests=[MPURequest("a", 999)])
    app, _ = make_app(x, y, asks=())
    with pytest.raises(ValueError, match="999"):
        strat.start(SyncGrid(app, 1), arrays, num_rounds=0)


def test_messages_round_trip_and_refuse_extras():
    from zkapex_flwr.mpu.messages import MPUTrainReply
    from zkapex_flwr.protocol import ProtocolError

    state = {"w": torch.randn(2, 2)}
    req = MPUTrainRequest("r", "n", "ga", 3, 0.1, 8, 1, 2, 2)
    msg = Message(req.to_content([state, state]), dst_node_id=1, message_type=MPU_UNLEARN)
    back, copies = MPUTrainRequest.from_message(msg)
    assert back == req and torch.equal(copies[1]["w"], state["w"])
    msg.content["extra"] = ConfigRecord({"alpha": 1.0})
    with pytest.raises(ProtocolError, match="exactly the ConfigRecord"):
        MPUTrainRequest.from_message(msg)
    reply = Message(
        MPUTrainReply("r", "n", 1).to_content([state]),
        reply_to=Message(RecordDict(), dst_node_id=1, message_type=MPU_UNLEARN),
    )
    with pytest.raises(ProtocolError, match="missing"):
        MPUTrainReply.from_message(reply, 2)


def test_a_tiny_vit_request_is_accepted_through_its_head_reparameterization(world):
    """The attention heads get a permutation and per-head rotations; plain SGD is equivariant under both."""
    from zkapex_flwr.models import build_vit
    from zkapex_flwr.mpu.reparam import find_sites

    x, y, *_ = world

    def vit():
        return build_vit((1, 8, 8), 10, embed_dim=16, depth=1, num_heads=2, seed=0)

    assert all(find_sites(vit()))  # an MLP site and an attention site

    def setup(context):
        forget, retain = node_data(x, y, 0)
        return MPUSetup(model=vit(), task=ImageTask(), forget=forget, retain=retain)

    app = MPUMod(setup).install(ClientApp())
    strat = MPUUnlearning(
        model_fn=vit,
        config=config(rounds=1, steps=3, lr=0.05, optimizer="sgd", algorithm="ga"),
        requests=[MPURequest("vit", 100)],
        seed=3,
    )
    theta = ArrayRecord(vit().state_dict())
    out, rec = strat.serve_request(SyncGrid(app, 1), theta, strat.requests[0], 0)
    assert rec.outcome == "accepted", rec.detail
    assert rec.consistency[0] > 0.9
    assert out is not theta


def test_an_unanswered_request_is_retried_with_the_same_copies_and_changes_nothing(world):
    x, y, arrays, *_ = world
    app, _ = make_app(x, y, asks=())
    grid = RecordingGrid(app, 1)
    grid.drop_always.add((100, MPU_UNLEARN))
    strat = MPUUnlearning(
        model_fn=DigitsNet, config=config(), requests=[MPURequest("r", 100)], deadline_s=0.2, max_attempts=2, seed=5
    )
    out, rec = strat.serve_request(grid, arrays, strat.requests[0], 0)
    assert out is arrays and rec.outcome == "no-response" and strat.quarantined() == set()
    first, second = grid.pushed  # the retry: attempt 2, the same copies (no fresh noise to average out)
    assert (first.content["mpu"]["attempt"], second.content["mpu"]["attempt"]) == (1, 2)
    for name in first.content.array_records:
        a, b = (m.content.array_records[name].to_torch_state_dict() for m in (first, second))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_in_band_cheater_is_hidden_from_training_with_hide_quarantined(world, tmp_path):
    x, y, arrays, *_ = world
    app, _ = make_app(x, y, hooks={1: MPU_CHEATS["garbage"]}, asks=(1,))
    grid = RecordingGrid(app, 3)
    strat = MPUUnlearning(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2),
        model_fn=DigitsNet,
        config=config(rounds=1),
        hide_quarantined=True,
        ledger_path=tmp_path / "mpu.csv",
        seed=4,
    )
    result = strat.start(grid, arrays, num_rounds=2)
    (rec,) = result.deletions
    assert (rec.request_id, rec.node_id, rec.outcome) == ("mpu-101-r1", 101, "flagged")
    trained = [m.metadata.dst_node_id for m in grid.pushed if m.metadata.message_type == "train"]
    assert sorted(trained[:3]) == [100, 101, 102] and sorted(trained[3:]) == [100, 102]  # round 2: without it
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    rows = pd.read_csv(tmp_path / "mpu.csv")
    assert list(rows.outcome) == ["flagged"] and list(rows.node_id) == [101] and rows.bytes_sent[0] > 0


@pytest.mark.parametrize("name", sorted(MPU_CHEATS))
def test_cheats_run_on_a_uint64_node_id(name):
    """Node ids are uint64 (Flower's simulation draws them up to 2**64 - 1); a cheat's seed must still fit."""
    ctx = Context(run_id=1, node_id=2**64 - 5, node_config={}, state=RecordDict(), run_config={})
    copies = [{"w": torch.ones(3, 2)}, {"w": torch.ones(3, 2) * 2}]
    req = MPUTrainRequest("r", "n" * 32, "ga", 1, 1e-3, 8, 1, 1, 2, 1, "adam")
    out = MPU_CHEATS[name](copies, req, ctx)
    assert len(out) == 2 and out[0]["w"].shape == (3, 2)
