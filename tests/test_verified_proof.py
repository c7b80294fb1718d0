"""The shipped verified update through the real EZKL prover and verifier.

The verified default differs from the paper's update in what it asks, not in what is proven: the scope
adds the classifier head to every block's fc1, the mask is larger and the damping is 1. The same
column-form certificate proves it (docs/proof-design.md §7). Here a real ViT's class request — a mask
that takes the forget class's head row — is proven honestly and accepted, the proven model forgets like
the float64 update, and every cheat is refused with its reason code.
"""

from __future__ import annotations

import pytest

from zkapex_flwr.data.images import image_splits
from zkapex_flwr.models import build_vit, clone_model
from zkapex_flwr.proof import ClientProver, Verifier
from zkapex_flwr.proof.cheats import cheat_bundle
from zkapex_flwr.proof.circuit import CircuitSpec
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.training import accuracy, train
from zkapex_flwr.unlearning import BlockFisher, BlockLayout, compute_update, saliency_scores, select_mask, write_update
from zkapex_flwr.unlearning.scope import CLASSIFIER_HEAD, VERIFIED_SCOPE

pytestmark = pytest.mark.filterwarnings("ignore:zkapex-flwr is using an INSECURE test SRS")


@pytest.fixture(scope="module")
def world():
    task = ImageTask()
    s = image_splits("digits", client_id=0, num_clients=2, seed=0, shift_kind="none", client_keeps_forget=False)
    model = build_vit((1, 8, 8), 10, embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, seed=0)
    theta_g = train(model, task, s.provider_train, epochs=25, lr=3e-3)
    theta_p = train(clone_model(theta_g), task, s.client_train, epochs=5, lr=1e-3)
    layout = BlockLayout.from_model(theta_p, 16, VERIFIED_SCOPE)
    fisher = BlockFisher.estimate(theta_p, task, s.client_train, layout, num_grads=256)
    scores = saliency_scores(theta_g, task, s.forget, s.provider_retain, layout)
    mask = select_mask(scores, layout, 0.08, max_blocks=6)
    prover = ClientProver.register(theta_p, layout, fisher, damping=1.0, spec=CircuitSpec(d=layout.block_size, slots=8))
    return task, s, theta_p, layout, fisher, mask, prover


def test_class_mask_takes_the_head_row_and_is_proven_compliant(world):
    task, s, theta_p, layout, fisher, mask, prover = world
    head = layout.tensor_mask(CLASSIFIER_HEAD)
    assert head[mask.indices].any()  # the saliency put part of the mask on the classifier head
    proven = clone_model(theta_p)
    bundle, _ = prover.copy().unlearn(proven, mask, "verified")
    verdict = Verifier(prover.circuit).verify(bundle.to_bytes(), prover.registry, mask)
    assert verdict.reason == "compliant", verdict.detail
    # the proven fixed-point model is the float64 verified update up to the grid, and forgets as it does
    update = compute_update(theta_p, mask, fisher, 1.0)
    exact = clone_model(theta_p)
    write_update(exact, update, layout)
    assert (layout.flatten(proven) - layout.flatten(exact)).abs().max() < 1e-3
    assert layout.flatten(proven)[mask.indices].abs().max() == 0
    assert abs(accuracy(proven, task, s.client_forget) - accuracy(exact, task, s.client_forget)) <= 0.02


@pytest.mark.parametrize(
    "behaviour,reason",
    [
        ("mask-only", "kkt-violation"),
        ("partial-mask", "wrong-mask"),
        ("fake-fisher", "fisher-mismatch"),
        ("stale-model", "stale-model"),
        ("drop-blocks", "incomplete"),
        ("wrong-mask", "wrong-mask"),
    ],
)
def test_cheats_on_the_verified_mask_are_refused(world, behaviour, reason):
    *_, mask, prover = world
    verdict = Verifier(prover.circuit).verify(cheat_bundle(prover, mask, "verified", behaviour), prover.registry, mask)
    assert verdict.reason == reason, verdict.detail
