"""The unlearning math on a real (tiny) ViT: Fisher, mask, compensation, forgetting, errors."""

import pytest
import torch

from zkapex_flwr.models import clone_model
from zkapex_flwr.training import accuracy, per_sample_stats
from zkapex_flwr.unlearning import (
    BlockFisher,
    BlockLayout,
    UnlearningMask,
    compute_update,
    mask_only,
    per_sample_grads,
    saliency_scores,
    select_mask,
    write_update,
)


def test_torch_func_per_sample_grads_match_autograd(digits_setup):
    task, splits, _, theta_p = digits_setup
    layout = BlockLayout.from_model(theta_p, 64)
    data = splits.client_train.head(3)
    grads = next(per_sample_grads(theta_p, task, data, layout))
    for i in range(3):
        model = clone_model(theta_p)
        sample = tuple(t[i : i + 1] for t in data.tensors)
        task.per_sample_loss(task.forward(model, sample), sample).sum().backward()
        expect = torch.cat([dict(model.named_parameters())[n].grad.reshape(-1) for n in layout.names()])
        assert torch.allclose(grads[i], expect, atol=1e-6)


def test_block_fisher_is_gram_of_per_sample_grads(digits_setup):
    task, splits, _, theta_p = digits_setup
    layout = BlockLayout.from_model(theta_p, 32)
    fisher = BlockFisher.estimate(theta_p, task, splits.client_train, layout, num_grads=40, chunk_size=16)
    g = torch.cat(list(per_sample_grads(theta_p, task, splits.client_train, layout, max_samples=40))).double()
    gb = g.reshape(40, layout.n_blocks, 32)[:, 7]
    assert torch.allclose(fisher.gram[7], gb.T @ gb / 40, rtol=1e-6, atol=1e-12)
    c = fisher.damped(torch.tensor([7]), 0.1)[0]
    lam = 0.1 * torch.diagonal(fisher.gram[7]).mean()
    assert torch.allclose(torch.diagonal(c) - torch.diagonal(fisher.gram[7]), lam.expand(32))


@pytest.fixture(scope="module")
def unlearned(digits_setup):
    task, splits, theta_g, theta_p = digits_setup
    layout = BlockLayout.from_model(theta_p, 16)
    fisher = BlockFisher.estimate(theta_p, task, splits.client_train, layout, num_grads=512)
    scores = saliency_scores(theta_g, task, splits.forget, splits.provider_retain, layout)
    mask = select_mask(scores, layout, 0.2)
    update = compute_update(theta_p, mask, fisher, 0.01)
    theta_u = clone_model(theta_p)
    write_update(theta_u, update, layout)
    theta_m = clone_model(theta_p)
    mask_only(theta_m, mask)
    return layout, mask, update, theta_u, theta_m


def test_masked_weights_exactly_zero_in_model(unlearned):
    layout, mask, update, theta_u, _ = unlearned
    assert torch.all(layout.flatten(theta_u)[mask.indices] == 0.0)
    assert update.max_residual() <= 1e-9


def test_compensation_beats_mask_only_on_client_loss(digits_setup, unlearned):
    task, splits, _, theta_p = digits_setup
    _, _, _, theta_u, theta_m = unlearned
    loss = {
        name: float(per_sample_stats(m, task, splits.client_train)["loss"].mean())
        for name, m in (("p", theta_p), ("u", theta_u), ("m", theta_m))
    }
    assert loss["u"] < loss["m"]
    assert loss["u"] - loss["p"] < 0.5 * (loss["m"] - loss["p"])


def test_forget_accuracy_falls(digits_setup, unlearned):
    task, splits, _, theta_p = digits_setup
    _, _, _, theta_u, _ = unlearned
    assert accuracy(theta_u, task, splits.client_forget) < accuracy(theta_p, task, splits.client_forget)
    assert accuracy(theta_u, task, splits.client_test) >= accuracy(theta_p, task, splits.client_test) - 0.02


def test_block_budget_caps_touched_blocks(digits_setup):
    task, splits, theta_g, _ = digits_setup
    layout = BlockLayout.from_model(theta_g, 64)
    scores = torch.rand(layout.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = select_mask(scores, layout, 0.04, max_blocks=25)
    assert len(mask.touched_blocks()) <= 25
    assert len(mask) == round(0.04 * layout.size)
    with pytest.raises(ValueError, match="a budget of 5 blocks of 64 weights holds at most 320"):
        select_mask(scores, layout, 0.04, max_blocks=5)


def test_mask_errors_name_the_problem(digits_setup):
    _, _, _, theta_p = digits_setup
    layout = BlockLayout.from_model(theta_p, 64)
    with pytest.raises(ValueError, match=f"outside the unlearning scope of {layout.size} weights"):
        UnlearningMask(torch.tensor([0, layout.size]), layout)
    with pytest.raises(ValueError, match="duplicate"):
        UnlearningMask(torch.tensor([4, 4]), layout)
    with pytest.raises(ValueError, match="empty"):
        UnlearningMask(torch.tensor([], dtype=torch.long), layout)
    mask = UnlearningMask(torch.tensor([9, 3, 700]), layout)
    assert torch.equal(UnlearningMask.from_bytes(mask.to_bytes(), layout).indices, mask.indices)


def test_scope_errors(digits_setup):
    _, _, _, theta_p = digits_setup
    with pytest.raises(ValueError, match="matches no parameter"):
        BlockLayout.from_model(theta_p, 64, pattern=r"no_such_layer")
    with pytest.raises(ValueError, match="not a multiple of the Fisher block size"):
        BlockLayout.from_model(theta_p, 48)


def test_empty_forget_set_is_an_error(digits_setup):
    task, splits, theta_g, _ = digits_setup
    layout = BlockLayout.from_model(theta_g, 64)
    with pytest.raises(ValueError, match="forget set is empty"):
        saliency_scores(theta_g, task, splits.forget.head(0), splits.provider_retain, layout)


def test_group_structured_mask_uses_at_most_k_positions_per_group(digits_setup):
    _, _, theta_g, _ = digits_setup
    layout = BlockLayout.from_model(theta_g, 16)
    scores = torch.rand(layout.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = select_mask(scores, layout, 0.04, group=(8, 2))
    assert len(mask) == round(0.04 * layout.size)
    local = (mask.indices % 16).reshape(-1)
    group_of = mask.indices // (16 * 8)
    for g in torch.unique(group_of):
        assert len(torch.unique(local[group_of == g])) <= 2
    with pytest.raises(ValueError, match="hold at most"):
        select_mask(scores, layout, 0.2, group=(8, 2))
    with pytest.raises(ValueError, match="do not split into groups"):
        select_mask(scores, layout, 0.04, group=(7, 2))
