"""The chain length comes from the mask, never from the bundle.

A unit whose masked positions fit ⌈k_u/K⌉ steps could be proven in more, shorter steps: each extra
link adds a rounding to the residual bound, and the verifier used to derive the tolerance from the
number of steps the bundle chose, so splitting bought the prover slack (6.9e-5 → 8.4e-5 in one
measured block). On the old verifier the one-column chain built here was ``compliant``. Now the steps
must be the mask's canonical ones (its positions in order, K per step) and the tolerance uses their
count.
"""

import dataclasses

import pytest
import torch

from zkapex_flwr.proof import ClientProver, Verifier
from zkapex_flwr.proof.cheats import _prove
from zkapex_flwr.proof.circuit import CircuitSpec
from zkapex_flwr.proof.statement import honest_unit_steps, residual_tolerance
from zkapex_flwr.unlearning import UnlearningMask

pytestmark = pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")

MASK = [16 + 2, 16 + 9, 5 * 16 + 4, 5 * 16 + 11]  # blocks 1 and 5, two masked weights each: one step at K = 2


def _one_column_steps(theta, h_hat, masks, spec):
    """Honest arithmetic, one column per step: twice the canonical chain length."""
    return honest_unit_steps(theta, h_hat, masks, dataclasses.replace(spec, slots=1))


@pytest.fixture(scope="module", params=[1, 4], ids=["block-units", "4-block-units"])
def world(request, two_layers):
    model, layout, fisher = two_layers
    prover = ClientProver.register(
        model, layout, fisher, damping=0.05, spec=CircuitSpec(d=layout.block_size, slots=2, group=request.param)
    )
    return prover, UnlearningMask(torch.tensor(MASK), layout)


def _verdict(prover, mask, steps_fn):
    blocks, theta, h_hat, local = prover.unit_arrays(mask)
    bundle = _prove(prover, blocks, local, theta, h_hat, "r1", None, steps_fn=steps_fn)
    return Verifier(prover.circuit).verify(bundle.to_bytes(), prover.registry, mask)


def test_canonical_chain_is_compliant(world):
    verdict = _verdict(*world, None)
    assert verdict.reason == "compliant", verdict.detail


def test_longer_chain_is_refused(world):
    prover, mask = world
    s = prover.circuit.spec.scale
    assert residual_tolerance(s, 2, 2) > residual_tolerance(s, 2, 1)  # what the split would have bought
    verdict = _verdict(prover, mask, _one_column_steps)
    assert verdict.reason == "wrong-mask", verdict.detail
    assert "2 per step" in verdict.detail
