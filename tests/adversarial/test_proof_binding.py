"""A proof answers one request, one round and one node: a forwarded or replayed proof does not verify.

Before, a proof attested only the weights and the Fisher it used. A node holding the same registry entry
as its victim (copied commitments) could forward the victim's bundle, and a bundle captured in one round
verified in any other. Every proof now carries the binding (request, round nonce, node) as public values
that the verifier supplies itself, so the SNARK of a proof made for another binding fails. Real prover
and verifier, the smallest circuit (d = 16, K = 2).
"""

import pytest
import torch

from zkapex_flwr.proof import ClientProver, Verifier
from zkapex_flwr.proof.cheats import prove_steps
from zkapex_flwr.proof.statement import Binding, honest_unit_steps
from zkapex_flwr.unlearning import UnlearningMask

pytestmark = pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")


@pytest.fixture(scope="module")
def victim(two_layers):
    model, layout, fisher = two_layers
    prover = ClientProver.register(model, layout, fisher, damping=0.1)
    mask = UnlearningMask(torch.tensor([3, 40, 41]), layout)
    bound = Binding("r1", "nonce-a", "100")
    data = prover.copy().unlearn(model.__class__(0), mask, "r1", binding=bound)[0].to_bytes()
    return prover, mask, bound, data


def test_a_proof_verifies_only_for_its_own_request_round_and_node(victim):
    prover, mask, bound, data = victim
    verifier = Verifier(prover.circuit)
    assert verifier.verify(data, prover.registry, mask, binding=bound).reason == "compliant"
    for other, what in (
        (Binding("r1", "nonce-a", "101"), "forwarded to another node"),
        (Binding("r1", "nonce-b", "100"), "replayed in another round"),
    ):
        verdict = verifier.verify(data, prover.registry, mask, binding=other)
        assert verdict.reason == "invalid-proof", what
        assert "request, round and node" in verdict.detail


def test_a_local_run_binds_the_request_alone_and_the_provider_never_accepts_it(victim):
    prover, mask, bound, _ = victim
    chains = {int(u): honest_unit_steps(t, h, m, prover.circuit.spec) for u, t, h, m in zip(*prover.unit_arrays(mask))}
    local = prove_steps(prover, chains, "r1").to_bytes()  # no binding given: the request id alone
    verifier = Verifier(prover.circuit)
    assert verifier.verify(local, prover.registry, mask).reason == "compliant"
    assert verifier.verify(local, prover.registry, mask, binding=bound).reason == "invalid-proof"
    with pytest.raises(ValueError, match="binding names request 'r2'"):
        verifier.verify(local, prover.registry, mask, request_id="r1", binding=Binding("r2", "n", "1"))
