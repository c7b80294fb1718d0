"""The EZKL proof against the real prover and verifier: honest accepted, every cheat rejected with its reason."""

import numpy as np
import pytest
import torch
from torch import nn

from zkapex_flwr.proof import BlockCommitments, CircuitSpec, ClientProver, ProofBundle, Verifier
from zkapex_flwr.proof.cheats import cheat_bundle
from zkapex_flwr.unlearning import BlockFisher, BlockLayout, UnlearningMask

pytestmark = pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")


class Tiny(nn.Module):
    """Two fc1 layers: 8 Fisher blocks of d=16."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Sequential()
        self.a.fc1 = nn.Linear(16, 4, bias=False)
        self.b = nn.Sequential()
        self.b.fc1 = nn.Linear(16, 4, bias=False)


def fisher_for(layout, seed):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(48, layout.n_blocks, layout.block_size, generator=g, dtype=torch.float64)
    return BlockFisher(torch.einsum("mbi,mbj->bij", grads, grads) / 48, 48, layout)


@pytest.fixture(
    scope="module", params=[(1, 1), (3, 1), (1, 4)], ids=["1-step-per-proof", "3-steps-per-proof", "4-block-units"]
)
def world(request):
    steps, group = request.param
    model_a, model_b = Tiny(0), Tiny(1)
    layout = BlockLayout.from_model(model_a, 16)
    a = ClientProver.register(
        model_a,
        layout,
        fisher_for(layout, 0),
        damping=0.05,
        spec=CircuitSpec(d=layout.block_size, slots=2, steps=steps, group=group),
    )
    b = ClientProver.register(
        model_b,
        layout,
        fisher_for(layout, 1),
        damping=0.05,
        spec=CircuitSpec(d=layout.block_size, slots=2, steps=steps, group=group),
    )
    # blocks 0, 2 (one masked weight each), 5 (five masked weights: a chain of 3 steps with K=2)
    mask = UnlearningMask(
        torch.tensor([3, 2 * 16 + 7, 5 * 16 + 1, 5 * 16 + 4, 5 * 16 + 8, 5 * 16 + 9, 5 * 16 + 15]), layout
    )
    return model_a, layout, a, b, mask


def test_honest_bundle_is_compliant_and_moves_registry(world):
    model, layout, a, _, mask = world
    before = layout.flatten(model).clone()
    data = cheat_bundle(a, mask, "r1", "honest")
    verdict = Verifier(a.circuit).verify(data, a.registry, mask)
    assert verdict.reason == "compliant", verdict.detail
    g = a.circuit.spec.group
    assert set(verdict.new_theta) == {b // g for b in (0, 2, 5)}
    # the registry after the round holds θu's commitments; re-registering θu gives the same bytes
    honest_model = Tiny(0)
    bundle, report = a.copy().unlearn(honest_model, mask, "r1")
    units, _, _, masks = a.unit_arrays(mask)
    expected_steps = sum(-(-int(m.any(0).sum()) // a.circuit.spec.slots) for m in masks)
    assert report.masked_weights == 7 and report.steps == expected_steps
    assert report.proofs == -(-report.steps // a.circuit.spec.steps)
    after = layout.flatten(honest_model)
    assert torch.all(after[mask.indices] == 0)
    assert not torch.equal(after, before)
    # θu is the Group-OBS update: compare with the float64 math on the same quantised inputs
    from zkapex_flwr.proof.statement import quantize
    from zkapex_flwr.unlearning import group_obs

    blocks = mask.touched_blocks()
    c = torch.linalg.inv(torch.as_tensor(a.h_hat[blocks.numpy()]))
    exact = group_obs(torch.as_tensor(quantize(a.theta[blocks.numpy()], 16)), c, mask.local_masks()).theta_u
    assert torch.allclose(after.reshape(-1, 16)[blocks].double(), exact, atol=1e-3)


@pytest.mark.parametrize(
    "behaviour,reason",
    [
        ("ignore", "incomplete"),
        ("garbage-proof", "invalid-proof"),
        ("mask-only", "kkt-violation"),
        ("partial-mask", "wrong-mask"),
        ("stale-model", "stale-model"),
        ("fake-fisher", "fisher-mismatch"),
        ("tamper-instances", "invalid-proof"),
        ("wrong-mask", "wrong-mask"),
        ("drop-blocks", "incomplete"),
        ("duplicate-block", "incomplete"),
        ("hide-in-padding", "incomplete"),
    ],
)
def test_cheat_is_rejected_with_its_reason(world, behaviour, reason):
    _, _, a, _, mask = world
    verdict = Verifier(a.circuit).verify(cheat_bundle(a, mask, "r1", behaviour), a.registry, mask)
    assert verdict.reason == reason, verdict.detail


def test_replayed_bundle_of_another_client_is_stale(world):
    _, _, a, b, mask = world
    theirs = cheat_bundle(b, mask, "r1", "honest")
    assert Verifier(b.circuit).verify(theirs, b.registry, mask).reason == "compliant"
    assert (
        Verifier(a.circuit).verify(cheat_bundle(a, mask, "r1", "replay", other=theirs), a.registry, mask).reason
        == "stale-model"
    )


def test_old_bundle_is_stale_after_the_registry_moves(world):
    _, _, a, _, mask = world
    old = cheat_bundle(a, mask, "r1", "honest")
    verifier = Verifier(a.circuit)
    verdict = verifier.verify(old, a.registry, mask)
    moved = a.registry.with_theta(verdict.new_theta)
    assert verifier.verify(old, moved, mask).reason == "stale-model"


def test_proof_for_another_mask_and_malformed_inputs(world):
    _, layout, a, _, mask = world
    other = UnlearningMask(torch.tensor([3, 2 * 16 + 7]), layout)
    data = cheat_bundle(a, other, "r1", "honest")
    assert Verifier(a.circuit).verify(data, a.registry, mask).reason == "incomplete"
    rng = np.random.default_rng(0)
    verifier = Verifier(a.circuit)
    for junk in (rng.bytes(3000), b"", b"ZKAPEXB1" + b"\xff\xff\xff\x7f", b"ZKAPEXB1\x02\x00\x00\x00{}"):
        verdict = verifier.verify(junk, a.registry, mask)
        assert verdict.reason == "malformed"
        assert verdict.detail


def test_registry_entry_round_trips(world):
    _, _, a, _, _ = world
    entry = BlockCommitments.from_bytes(a.registry.to_bytes())
    assert entry.digest() == a.registry.digest()
    units = 8 // a.circuit.spec.group
    assert entry.theta.shape == (units, 64) and entry.columns.shape == (units, 16, 64)


def test_bundle_carries_no_weights(world):
    _, _, a, _, mask = world
    data = cheat_bundle(a, mask, "r1", "honest")
    bundle = ProofBundle.from_bytes(data)
    assert set(bundle.to_bytes()) and bundle.proof_bytes > 0
    # no registered weight value appears in the bundle as float32/float64 bytes
    for t in mask.touched_blocks().numpy():
        for v in a.theta[t]:
            if v != 0:
                assert np.float32(v).tobytes() not in data and np.float64(v).tobytes() not in data
