"""A wide proof unit (G > 1): a block may move only along the Fisher columns it masks itself.

A unit of G blocks is proven K of its masked positions at a time, the union over its blocks. Without
a per-block selector nothing tied block g's multipliers y[g, j] to block g's own mask: a block could
put weight on a column that only a neighbour masks, and so change weights the request never touched
(for example restore one an earlier request zeroed) inside a proof the verifier accepted. On the
col-v1 circuit the bundle built here was judged ``compliant``. The col-v2 circuit multiplies y by the
selector s[g, j] = [block g masks column j], which the verifier rebuilds from the request's mask.
"""

import dataclasses

import numpy as np
import pytest
import torch

from zkapex_flwr.proof import ClientProver, Verifier
from zkapex_flwr.proof.cheats import _prove
from zkapex_flwr.proof.circuit import CircuitSpec
from zkapex_flwr.proof.statement import honest_unit_steps, quantize
from zkapex_flwr.unlearning import UnlearningMask

pytestmark = pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")

# unit 0 = blocks 0..3: block 0 masks position 3, block 1 masks position 7 → one step over columns {3, 7}
MASK = [3, 16 + 7]


def _foreign_column_steps(theta, h_hat, masks, spec, push=0.05):
    """Honest steps, then block 0 also moves along column 7, which only block 1 masks.

    The extra multiplier δ on column 7 is paired with one on column 3 that keeps block 0's masked
    weight at zero, so every residual of the old statement stays within its tolerance.
    """
    steps = honest_unit_steps(theta, h_hat, masks, spec)
    last = steps[-1]
    j3, j7 = last.columns.index(3), last.columns.index(7)
    h0 = last.h[0]  # (d, K) block 0's columns 3 and 7
    delta = np.zeros(len(last.columns))
    delta[j7] = push
    delta[j3] = -push * h0[3, j7] / h0[3, j3]
    y = last.y.copy()
    y[0] = quantize(y[0] + delta, spec.scale)
    out = last.theta_out.copy()
    out[0] = quantize(last.theta_in[0] - h0 @ y[0], spec.scale)
    out[0, masks[0]] = 0.0
    steps[-1] = dataclasses.replace(last, y=y, theta_out=out)
    return steps


def _forged_selector_steps(theta, h_hat, masks, spec):
    """The same move, with a selector that claims every block masks every column of the step."""
    steps = _foreign_column_steps(theta, h_hat, masks, spec)
    return [dataclasses.replace(s, selector=np.ones_like(s.selector)) for s in steps]


@pytest.fixture(scope="module")
def wide(two_layers):
    model, layout, fisher = two_layers
    prover = ClientProver.register(
        model, layout, fisher, damping=0.05, spec=CircuitSpec(d=layout.block_size, slots=2, group=4)
    )
    mask = UnlearningMask(torch.tensor(MASK), layout)
    return prover, mask


def unmasked_change(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> float:
    """Largest change of a weight the request does not mask."""
    return float(np.abs(np.where(mask, 0.0, after - before)).max())


def _bundle(prover, mask, steps_fn):
    blocks, theta, h_hat, local = prover.unit_arrays(mask)
    return _prove(prover, blocks, local, theta, h_hat, "r1", None, steps_fn=steps_fn), blocks, theta, local


def test_honest_wide_unit_is_compliant(wide):
    prover, mask = wide
    bundle, *_ = _bundle(prover, mask, None)
    verdict = Verifier(prover.circuit).verify(bundle.to_bytes(), prover.registry, mask)
    assert verdict.reason == "compliant", verdict.detail


def test_block_using_a_neighbours_column_is_refused(wide):
    prover, mask = wide
    honest, *_ = _bundle(prover, mask, None)
    cheat, blocks, theta, local = _bundle(prover, mask, _foreign_column_steps)
    # the cheat is real: block 0's unmasked weights move by far more than any rounding
    spec = prover.circuit.spec
    h_hat = prover.unit_arrays(mask)[2]
    honest_out = honest_unit_steps(theta[0], h_hat[0], local[0], spec)[-1].theta_out
    cheat_out = _foreign_column_steps(theta[0], h_hat[0], local[0], spec)[-1].theta_out
    assert unmasked_change(honest_out[0], cheat_out[0], local[0][0]) > 1e-3
    assert (cheat_out[local[0]] == 0).all()  # the masked weights are still zero
    verdict = Verifier(prover.circuit).verify(cheat.to_bytes(), prover.registry, mask)
    assert verdict.reason == "kkt-violation", verdict.detail


def test_forged_selector_is_refused(wide):
    prover, mask = wide
    cheat, *_ = _bundle(prover, mask, _forged_selector_steps)
    verdict = Verifier(prover.circuit).verify(cheat.to_bytes(), prover.registry, mask)
    assert verdict.reason == "wrong-mask", verdict.detail
    assert "selector" in verdict.detail
