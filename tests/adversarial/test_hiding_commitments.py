"""A provider cannot confirm a guess of a client's weights or Fisher from its commitments.

KZG commitments of the raw values are deterministic: a provider who can guess a low-entropy vector
(θp is θg plus a short personalization; a Fisher block of a known model on public data) commits to
the guess and compares. Every committed vector now ends in salt cells that the circuit ignores, filled
from a keyed PRF of the values with a secret that never leaves the client, so a guess — even the exact
values — no longer matches; the client reproduces its own commitments, and proofs open them as before.
Real registration, prover and verifier, the smallest circuit (d = 16, K = 2).
"""

import pytest
import torch

from zkapex_flwr.proof import ClientProver, Verifier
from zkapex_flwr.proof.commitments import commit_vectors
from zkapex_flwr.unlearning import UnlearningMask

pytestmark = pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")


def test_even_the_exact_values_do_not_open_a_registered_commitment(two_layers):
    model, layout, fisher = two_layers
    prover = ClientProver.register(model, layout, fisher, damping=0.1)
    circuit, entry = prover.circuit, prover.registry
    guess = prover.theta  # the provider guesses θp exactly (G = 1: one block per unit)
    assert all(c != entry.theta_of(u) for u, c in enumerate(commit_vectors(circuit, list(guess))))
    stripes = [prover.h_hat[0][:, j] for j in range(layout.block_size)]
    assert all(c != entry.column_of(0, j) for j, c in enumerate(commit_vectors(circuit, stripes)))
    # the client, with its key, reproduces them exactly: that is what its proofs open
    assert commit_vectors(circuit, [guess[0]], salt_key=prover.salt_key)[0] == entry.theta_of(0)
    assert commit_vectors(circuit, stripes[:1], salt_key=prover.salt_key)[0] == entry.column_of(0, 0)
    # two clients with the same weights and Fisher commit to different bytes
    twin = ClientProver.register(model, layout, fisher, damping=0.1)
    assert not (twin.registry.theta == entry.theta).all(axis=1).any()
    assert not (twin.registry.columns == entry.columns).all(axis=2).any()


def test_salted_proofs_verify_and_a_proof_without_the_key_opens_nothing(two_layers):
    model, layout, fisher = two_layers
    prover = ClientProver.register(model, layout, fisher, damping=0.1)
    mask = UnlearningMask(torch.tensor([3, 40, 41]), layout)
    verifier = Verifier(prover.circuit)
    bundle, _ = prover.copy().unlearn(model.__class__(0), mask, "r1")
    assert verifier.verify(bundle.to_bytes(), prover.registry, mask).reason == "compliant"
    keyless = ClientProver(prover.circuit, layout, prover.theta.copy(), prover.h_hat, prover.registry, None)
    bundle, _ = keyless.unlearn(model.__class__(0), mask, "r1")
    assert verifier.verify(bundle.to_bytes(), prover.registry, mask).reason == "stale-model"
