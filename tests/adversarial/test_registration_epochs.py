"""Registration after the mask is known: refused, remembered across restarts, and judged as such.

The registry used to replace an entry whenever a node committed again, commit failures lived only in
the provider's memory, and a request was judged against whatever entry was latest. A node whose
commit was lost could register after a restart, with the mask already public, and be judged against
commitments chosen after it had seen what to forget. Now every entry carries its registration epoch
(the provider's event clock), commit failures and each request's first broadcast are persisted, a
second registration is refused, and a request is judged only against entries older than its
broadcast — except after an explicit, logged re-personalization, which must prove every active
deletion again. Runs the real ClientApp, prover and verifier in process (``zkapex_flwr.testing``).
"""

import pytest
from flwr.app import Message

from strategies import VerifiedUnlearning
from strategies.dispatch import Outcome
from strategies.registry import RegistryError
from zkapex_flwr.data.images import load_images
from zkapex_flwr.protocol import COMMIT
from zkapex_flwr.testing import SyncGrid, digits_client_app, digits_global_model, digits_provider

pytestmark = [
    pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS"),
    pytest.mark.usefixtures("task_identity"),
]


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


def _provider(digits, state_dir) -> VerifiedUnlearning:
    return digits_provider(state_dir, x=digits[0], y=digits[1], deadline_s=2.0, max_attempts=1)


@pytest.fixture(scope="module")
def arrays(digits):
    return digits_global_model(*digits)


def test_second_registration_is_refused_and_changes_nothing(digits, arrays, tmp_path):
    grid = SyncGrid(digits_client_app(*digits, train_kwargs=dict(epochs=1, lr=1e-3)), 2)
    strat = _provider(digits, tmp_path)
    strat.commit_round(grid, arrays)
    before = strat.registry.versions(100), strat.registry.record(100)["digest"]
    entry, (spec, _) = strat.registry.get(101), strat.registry.circuit_of(101)
    with pytest.raises(RegistryError, match="already registered.*replacing an entry is refused"):
        strat.registry.register(100, entry, spec)  # node 100 tries to take node 101's commitments
    assert (strat.registry.versions(100), strat.registry.record(100)["digest"]) == before


def test_lost_commit_is_remembered_and_a_late_registration_is_not_judged(digits, arrays, tmp_path):
    grid = SyncGrid(
        digits_client_app(*digits, train_kwargs=dict(epochs=1, lr=1e-3)), 3, drop_first={(102, COMMIT)}
    )  # node 102's commit is lost
    strat = _provider(digits, tmp_path)
    strat.start(grid, arrays, num_rounds=0)  # commit round, then r1
    out = strat.ledger.outcomes().set_index("node_id")
    assert out.loc[100, "reason"] == out.loc[101, "reason"] == "compliant"
    assert out.loc[102, "reason"] == "no-response"
    mask = strat.masks["r1"]

    # the provider restarts: it remembers the failure and the broadcast mask, and does not ask 102 to commit again
    restarted = _provider(digits, tmp_path)
    assert restarted.commit_failures[102][0] == "no-response"
    grid.seen.clear()
    restarted.commit_round(grid, arrays)
    assert (102, COMMIT) not in grid.seen
    # 102 registers anyway, with commitments made after the mask went out (here: an honest personalization)
    reply = grid.app(
        Message(restarted._commit_request().to_content(arrays), dst_node_id=102, message_type=COMMIT),
        grid.contexts[102],
    )
    accepted = restarted._commit_reply(Outcome(102, 1, reply))
    restarted.registry.register(102, accepted.entry, accepted.spec)
    restarted.unlearn_round(grid, arrays, restarted.requests[0], 1, nodes=[102])
    rows = restarted.ledger.frame()
    late = rows[(rows["node_id"] == 102)].iloc[-1]
    assert late["reason"] == "late-commit", late["detail"]
    assert (102, "train.unlearn") not in grid.seen  # never asked: nothing to judge it against
    assert 102 in restarted.quarantined()
    assert restarted.masks["r1"].to_bytes() == mask.to_bytes()  # the same mask after a restart


def test_repersonalization_must_prove_every_active_deletion(digits, arrays, tmp_path):
    grid = SyncGrid(digits_client_app(*digits, train_kwargs=dict(epochs=1, lr=1e-3)), 2)
    strat = _provider(digits, tmp_path)
    strat.start(grid, arrays, num_rounds=0)
    assert set(strat.ledger.outcomes()["reason"]) == {"compliant"}
    first_epoch = strat.registry.registration(100)[0]
    grid.seen.clear()
    assert strat.repersonalize(grid, arrays, 100, reason="the device was reset")
    epoch, kind = strat.registry.registration(100)
    assert kind == "repersonalize" and epoch > first_epoch
    assert grid.seen == [(100, COMMIT), (100, "train.unlearn")]  # r1 asked again, judged on the new entry
    rows = strat.ledger.frame()
    mine = rows[rows["node_id"] == 100]
    assert list(mine["reason"]) == ["compliant", "compliant"] and mine["nonce"].nunique() == 2
    # a restarted provider counts the re-proof as the pair's decision: it does not ask again
    again = _provider(digits, tmp_path)
    grid.seen.clear()
    again.unlearn_round(grid, arrays, again.requests[0], 1)
    assert grid.seen == []
