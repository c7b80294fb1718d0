"""A deletion lasts: later requests, the global model and late joiners all keep it.

Each request's proof used to constrain only its own mask, so an honest compensation for a later
request in the same block could re-grow weights an earlier request had zeroed, and θg — untouched by
any deletion — was aggregated, re-personalized and handed to new nodes with everything still in it.
Now a request's mask is the union of every active deletion (each proof shows all of them still zero),
the provider zeroes the deleted weights in θg after the request and after every later aggregate, and
a node that joins later personalizes from that θg and keeps the deleted weights at zero. Real
ClientApp, prover and verifier, in process.
"""

import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from torch import nn

from strategies import DeletionRequest, SaliencyMasker, UnlearningConfig, VerifiedUnlearning
from zkapex_flwr.client.state import NodeState
from zkapex_flwr.data.images import load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.testing import DigitsMLP, SyncGrid, digits_client_app
from zkapex_flwr.training import accuracy, train
from zkapex_flwr.unlearning import BlockLayout

pytestmark = [
    pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS"),
    pytest.mark.usefixtures("task_identity"),
]
SCOPE = r"(^|\.)fc1\.weight$|^head\.weight$"
LATE = 103


class LateGrid(SyncGrid):
    """Node 103 connects only once ``joined`` is set (after the first request)."""

    joined = False

    def get_node_ids(self):
        return [n for n in self.contexts if n != LATE or self.joined]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    x, y = load_images("digits")
    pool_x, pool_y = x[:300], y[:300]
    forget3 = TensorData((pool_x[pool_y == 3], pool_y[pool_y == 3]))
    forget5 = TensorData((pool_x[pool_y == 5], pool_y[pool_y == 5]))
    retain = TensorData((pool_x[(pool_y != 3) & (pool_y != 5)], pool_y[(pool_y != 3) & (pool_y != 5)]))
    masker = SaliencyMasker(DigitsMLP, ImageTask(), retain, scope=SCOPE, block_size=16, mask_fraction=0.02, slots=2)
    strat = VerifiedUnlearning(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        masker=masker,
        requests=[
            DeletionRequest("forget-3", forget3, after_round=0),
            DeletionRequest("forget-5", forget5, after_round=3),
        ],
        state_dir=tmp_path_factory.mktemp("provider"),
        config=UnlearningConfig(personal_epochs=2, damping=1.0, deadline_s=30.0),
    )
    theta_g = DigitsMLP()
    train(theta_g, ImageTask(), TensorData((pool_x, pool_y)), epochs=30, lr=3e-3)
    grid = LateGrid(
        digits_client_app(
            x,
            y,
            samples=150,
            stride=150,
            train_kwargs=dict(epochs=2, lr=3e-3, seed=lambda ctx: int(ctx.node_config["partition-id"])),
        ),
        4,
    )  # every node holds class 3
    rounds: dict[int, ArrayRecord] = {}
    aggregate = strat.strategy.aggregate_train

    def recorded(rnd, replies):  # θg as each round leaves the wrapped strategy, before anything else
        arrays, metrics = aggregate(rnd, replies)
        rounds[rnd] = strat.forget_in_global(arrays)
        if rnd == 1:
            grid.joined = True  # node 103 connects during round 1, after the first request
        return arrays, metrics

    strat.strategy.aggregate_train = recorded
    result = strat.start(grid, ArrayRecord(theta_g.state_dict()), num_rounds=3)
    return strat, grid, theta_g, rounds, result, forget3


def _model(arrays: ArrayRecord) -> nn.Module:
    m = DigitsMLP()
    m.load_state_dict(arrays.to_torch_state_dict())
    return m.eval()


def test_every_proof_compliant_and_later_masks_hold_earlier_deletions(run):
    strat, grid, *_ = run
    out = strat.ledger.outcomes()
    assert set(out["reason"]) == {"compliant"}, out[["request_id", "node_id", "reason", "detail"]]
    m3, m5 = strat.masks["forget-3"], strat.masks["forget-5"]
    assert set(m3.indices.tolist()) < set(m5.indices.tolist())  # the second mask is the union
    layout = BlockLayout.from_model(DigitsMLP(), 16, SCOPE)
    for node in (100, 101, 102, LATE):
        model = DigitsMLP()
        model.load_state_dict(NodeState.load(grid.contexts[node]).model)
        flat = layout.flatten(model)
        assert (flat[m5.indices] == 0).all(), node  # θu keeps both deletions


def test_global_model_keeps_the_deletion_for_three_rounds(run):
    strat, _, theta_g, rounds, result, forget3 = run
    layout = BlockLayout.from_model(DigitsMLP(), 16, SCOPE)
    m3 = strat.masks["forget-3"]
    task = ImageTask()
    before = accuracy(theta_g, task, forget3)
    after = [accuracy(_model(rounds[r]), task, forget3) for r in (1, 2, 3)]
    for r in (1, 2, 3):
        assert (layout.flatten(_model(rounds[r]))[m3.indices] == 0).all(), r
    assert (layout.flatten(_model(result.arrays))[strat.masks["forget-5"].indices] == 0).all()
    print(f"θg forget accuracy on class 3: {before:.3f} before, {after} after rounds 1-3")
    assert before > 0.8 and max(after) < before - 0.5


def test_late_joiner_inherits_the_deletion(run):
    strat, grid, _, _, _, forget3 = run
    assert strat.registry.registration(LATE)[0] > strat.ledger.broadcast("forget-3")[0]  # joined after it
    assert (LATE, "train.unlearn") in grid.seen  # asked forget-5 only
    rows = strat.ledger.frame()
    assert set(rows.loc[rows["node_id"] == LATE, "request_id"]) == {"forget-5"}
    layout = BlockLayout.from_model(DigitsMLP(), 16, SCOPE)
    model = DigitsMLP()
    model.load_state_dict(NodeState.load(grid.contexts[LATE]).model)
    assert (layout.flatten(model)[strat.masks["forget-3"].indices] == 0).all()
    acc = accuracy(model.eval(), ImageTask(), forget3)
    print(f"late joiner's forget accuracy on class 3: {acc:.3f}")
    assert acc < 0.3
