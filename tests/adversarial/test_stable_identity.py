"""A quarantined node cannot start afresh under a new node id.

Registry entries were keyed by the node id the transport reports and nothing else. A node quarantined
for a request could leave and come back under a new node id: it registered as new, was never asked
that request again, and was judged compliant on the next one. Entries now carry the node's stable
identity from its node config (``zkapex-identity``, else ``partition-<id>``), and one identity registers
under one node id: the newcomer is refused with ``duplicate-identity`` and quarantined. (In a deployment
with SuperNode authentication the node id itself is stable per key: ``tests/test_deployment.py``.)
Real ClientApp, prover and verifier, in process.
"""

import pytest
from flwr.app import Context, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies import DeletionRequest
from zkapex_flwr.data.images import load_images
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.proof.cheats import cheat_bundle
from zkapex_flwr.testing import SyncGrid, digits_client_app, digits_global_model, digits_provider

pytestmark = [
    pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS"),
    pytest.mark.usefixtures("task_identity"),
]
CHEATER, NEW_ID = 102, 105


def cheat_on_r1(prover, mask, req, context):
    if req.request_id == "r1":
        return cheat_bundle(prover, mask, req.request_id, "mask-only", binding=req.binding(context.node_id))
    return None


class RejoinGrid(SyncGrid):
    """After the first request, node 102 leaves and the same device (same node config) returns as node 105."""

    def rejoin(self) -> None:
        old = self.contexts.pop(CHEATER)
        self.contexts[NEW_ID] = Context(
            run_id=old.run_id, node_id=NEW_ID, node_config=dict(old.node_config), state=RecordDict(), run_config={}
        )

    def send_and_receive(self, messages, *, timeout=None):
        if CHEATER in self.contexts and any(m.metadata.message_type == "train" for m in messages):
            self.rejoin()  # the first training round after r1
            messages = [m for m in messages if m.metadata.dst_node_id != CHEATER]
        return super().send_and_receive(messages, timeout=timeout)


def test_a_quarantined_node_returning_under_a_new_id_stays_quarantined(tmp_path):
    x, y = load_images("digits")
    forget = TensorData((x[:300][y[:300] == 3], y[:300][y[:300] == 3]))
    requests = [DeletionRequest("r1", forget, after_round=0), DeletionRequest("r2", forget, after_round=1)]
    strat = digits_provider(
        tmp_path,
        x=x,
        y=y,
        requests=requests,
        makeup=False,
        strategy=FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1),
    )
    grid = RejoinGrid(digits_client_app(x, y, hooks={2: cheat_on_r1}), 3)
    strat.start(grid, digits_global_model(x, y), num_rounds=1)

    ledger = strat.ledger.frame()
    reason = {(r.request_id, int(r.node_id)): r.reason for r in ledger.itertuples()}
    assert reason[("r1", CHEATER)] == "kkt-violation"
    assert strat.registry.record(CHEATER)["identity"] == "partition-2"
    assert NEW_ID in set(grid.get_node_ids()) and NEW_ID not in strat.registry
    assert reason[("r2", NEW_ID)] == "duplicate-identity", ledger[["request_id", "node_id", "reason", "detail"]]
    assert f"node {CHEATER}'s" in ledger[ledger["node_id"] == NEW_ID]["detail"].iloc[0]
    assert {CHEATER, NEW_ID} <= strat.quarantined()
    assert reason[("r2", 100)] == reason[("r2", 101)] == "compliant"
