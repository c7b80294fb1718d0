"""A node may not register another node's commitments and answer with that node's proofs.

A colluding node that copies a victim's commit reply verbatim, then forwards the victim's bundles,
used to be judged compliant for every request without ever proving anything itself. Now the registry
refuses commitments (θ or Fisher) that another node registered, and the copier is quarantined with
``duplicate-commitment``. Real ClientApp, prover and verifier, in process.
"""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from strategies.registry import DuplicateCommitments
from zkapex_flwr.data.images import load_images
from zkapex_flwr.protocol import COMMIT, CONFIG, UNLEARN
from zkapex_flwr.testing import SyncGrid, digits_client_app, digits_global_model, digits_provider

pytestmark = [
    pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS"),
    pytest.mark.usefixtures("task_identity"),
]
VICTIM, COPIER = 100, 101


class CollusionGrid(SyncGrid):
    """Node 101 answers every commit and unlearning message with node 100's reply to the same message
    (node 100 is asked first: the grid delivers in node order)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.victim_replies: dict[str, Message] = {}  # message type -> node 100's latest reply

    def push_messages(self, messages):
        ids = []
        for m in messages:
            kind = m.metadata.message_type
            mid = super().push_messages([m])[0]
            if m.metadata.dst_node_id == VICTIM and mid in self.replies:
                self.victim_replies[kind] = self.replies[mid]
            if m.metadata.dst_node_id == COPIER and kind in (COMMIT, UNLEARN) and kind in self.victim_replies:
                content = self.victim_replies[kind].content  # 101's own answer is dropped for the victim's ...
                if kind == COMMIT:  # ... under its own identity (the victim's would be refused as a duplicate)
                    config = ConfigRecord(dict(content.config_records[CONFIG]))
                    config["identity"] = "partition-1"
                    content = RecordDict({**{k: v for k, v in content.items() if k != CONFIG}, CONFIG: config})
                self.replies[mid] = Message(content, reply_to=m)
            ids.append(mid)
        return ids


def test_copied_commitments_are_refused_and_the_copier_quarantined(tmp_path):
    x, y = load_images("digits")
    strat = digits_provider(tmp_path, x=x, y=y)
    grid = CollusionGrid(digits_client_app(x, y), 3)
    strat.start(grid, digits_global_model(x, y), num_rounds=0)
    out = strat.ledger.outcomes().set_index("node_id")
    assert out.loc[VICTIM, "reason"] == out.loc[102, "reason"] == "compliant"
    assert out.loc[COPIER, "reason"] == "duplicate-commitment", out.loc[COPIER, "detail"]
    assert COPIER not in strat.registry and strat.quarantined() == {COPIER}
    # the registry refuses the copy when asked directly, too
    entry, (spec, _) = strat.registry.get(VICTIM), strat.registry.circuit_of(VICTIM)
    with pytest.raises(DuplicateCommitments, match=f"node {VICTIM} registered"):
        strat.registry.register(COPIER, entry, spec)
