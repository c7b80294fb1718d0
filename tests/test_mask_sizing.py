"""The provider sizing a sample request's mask on θg: the rule, its inputs, and its place in a run."""

import pytest
import torch

from zkapex_flwr.pipeline import preset
from zkapex_flwr.unlearning import BlockFisher, BlockLayout, saliency_scores, select_mask, size_mask
from zkapex_flwr.unlearning.sizing import loss_auc

FRACTIONS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


@pytest.fixture(scope="module")
def provider(digits_setup):
    task, splits, theta_g, _ = digits_setup
    layout = BlockLayout.from_model(theta_g, 16)
    fisher = BlockFisher.estimate(theta_g, task, splits.provider_retain, layout, num_grads=128)
    scores = saliency_scores(theta_g, task, splits.forget, splits.provider_retain, layout)
    return task, splits, theta_g, layout, fisher, scores


def _size(provider, target, **kw):
    task, splits, theta_g, layout, fisher, scores = provider
    return size_mask(
        theta_g, task, scores, layout, fisher, splits.forget, splits.provider_holdout, damping=1.0, target=target, **kw
    )


def test_the_smallest_fraction_that_reaches_the_target_is_chosen(provider):
    task, splits, theta_g, layout, *_ = provider
    before = loss_auc(theta_g, task, splits.forget, splits.provider_holdout)
    everything = _size(provider, 1e-6, fractions=FRACTIONS)  # unreachable: every candidate scored, the largest sent
    aucs = [row["loss_auc"] for row in everything.table]
    assert [row["fraction"] for row in everything.table] == list(FRACTIONS) and everything.fraction == FRACTIONS[-1]
    # the larger masks make D_f look unseen, then worse than unseen
    assert aucs[-1] < 0.5 and aucs[-1] < before - 0.2 and aucs[0] > aucs[-1] + 0.1
    # a target set at a middle candidate's score: the rule sends the first candidate at or below it, and stops
    target = aucs[len(aucs) // 2] + 1e-9
    i = next(k for k, a in enumerate(aucs) if a <= target)
    sized = _size(provider, target, fractions=FRACTIONS)
    assert aucs[0] > target and 0 < i <= len(aucs) // 2  # the smallest candidate was not enough
    assert sized.fraction == FRACTIONS[i] and len(sized.table) == i + 1
    expected = select_mask(provider[5], layout, FRACTIONS[i])
    assert torch.equal(sized.mask.indices, expected.indices)
    assert _size(provider, 0.999, fractions=FRACTIONS).fraction == FRACTIONS[0]


def test_sizing_refuses_bad_input(provider):
    task, splits, theta_g, layout, fisher, scores = provider
    with pytest.raises(ValueError, match="increasing"):
        _size(provider, 0.5, fractions=(0.2, 0.1))
    with pytest.raises(ValueError, match="increasing"):
        _size(provider, 0.5, fractions=(0.1, 1.5))
    with pytest.raises(ValueError, match="target"):
        _size(provider, 1.5)
    with pytest.raises(ValueError, match="holdout"):
        size_mask(theta_g, task, scores, layout, fisher, splits.forget, None, damping=1.0)


def test_presets_size_sample_requests_only_when_asked_or_by_default():
    assert preset("vit", "mnist", forget_mode="samples").mask_sizing == "membership"
    assert preset("vit", "mnist", forget_mode="samples", mask_fraction=0.1).mask_sizing == "fixed"
    assert preset("vit", "mnist", forget_mode="samples", method="zk-apex-paper").mask_sizing == "fixed"
    assert preset("vit", "mnist").mask_sizing == "fixed"  # class requests keep their fixed mask
    with pytest.raises(ValueError, match="provider holdout"):
        preset("opt", "stdlib-code", mask_sizing="membership")
    with pytest.raises(ValueError, match="mask_sizing"):
        preset("vit", "digits", mask_sizing="guess")
    with pytest.raises(ValueError, match="sizing_fractions"):
        preset("vit", "digits", mask_sizing="membership", sizing_fractions=(0.3, 0.1))
