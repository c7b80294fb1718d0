"""The per-example membership attack (RMIA) and the data each quality metric reads.

The attack must see membership where there is some and none where there is none; and every metric must
read its own split: D_f (forget accuracy, members), never-trained non-members, the client's held-out
data (personalization), with no sample shared between roles that must stay apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zkapex_flwr.data.images import image_splits
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.membership import MembershipAudit, tpr_at_fpr
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.training import train


def _rows(data: TensorData) -> set[bytes]:
    """One hashable key per sample (its input tensor's bytes), to test roles for overlap."""
    return {x.numpy().tobytes() for x in data.tensors[0]}


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def test_rmia_sees_membership_and_not_its_absence():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    members, non_members, rest = order[:150], order[150:300], order[300:900]
    task = ImageTask()

    def data(idx):
        return TensorData((x[idx], y[idx]))

    def fit(idx, seed):  # long training on a small pool: the model memorises its members
        return train(_mlp(seed), task, data(idx), epochs=60, lr=3e-3, seed=seed)

    refs = [fit(rest, 10 + r) for r in range(2)]  # OUT for both members and non-members
    audit = MembershipAudit.calibrate(refs, task, data(members), data(non_members))
    trained_on_members = audit.score(fit(torch.cat([rest, members]), 0), task)
    never_saw_them = audit.score(fit(rest, 0), task)
    assert trained_on_members["auc"] > 0.6
    assert abs(never_saw_them["auc"] - 0.5) < 0.06
    assert trained_on_members["auc"] > never_saw_them["auc"] + 0.08
    assert trained_on_members["tpr_at_1pct_fpr"] > never_saw_them["tpr_at_1pct_fpr"]


def test_tpr_at_fpr_and_bad_input():
    labels = np.array([1, 1, 1, 0, 0, 0])
    assert tpr_at_fpr(labels, np.array([3, 2, 1, 0.5, 0.4, 0.3])) == 1.0  # perfectly separated
    assert tpr_at_fpr(labels, np.array([0.1, 0.2, 0.3, 3, 2, 1])) == 0.0  # inverted
    with pytest.raises(ValueError, match="at least one reference model"):
        MembershipAudit.calibrate([], ImageTask(), TensorData((torch.zeros(5, 1),)), TensorData((torch.zeros(5, 1),)))


@pytest.mark.parametrize("mode", ["class", "samples"])
def test_image_metric_roles_do_not_leak(mode):
    s = image_splits(
        "digits",
        client_id=0,
        num_clients=2,
        forget_mode=mode,
        forget_count=60,
        seed=0,
        shift_kind="none",
        client_keeps_forget=False,
    )
    forget, unseen = _rows(s.client_forget), _rows(s.client_unseen)
    trained = _rows(s.provider_train) | _rows(s.client_train)
    assert _rows(s.forget) == forget  # members are D_f itself (no shift here)
    assert forget <= _rows(s.provider_train)  # ...which the provider trained on
    assert not forget & _rows(s.provider_retain)  # retain = provider data minus D_f
    assert not unseen & trained  # non-members were never trained on
    assert not _rows(s.client_test) & trained  # personalization accuracy on held-out data
    assert len(unseen) >= 0.9 * len(forget) or mode == "class"
    holdout = _rows(s.provider_holdout)  # the provider's own never-trained data, which sizes the mask
    assert len(holdout) >= 0.9 * len(unseen) or mode == "class"
    assert holdout and not holdout & (trained | unseen | _rows(s.client_test) | forget)
    if mode == "class":
        assert (s.forget.tensors[1] == 3).all() and (s.client_unseen.tensors[1] == 3).all()
        assert not (s.client_test.tensors[1] == 3).any()  # forget class excluded from personalization acc
        assert not (s.client_retain.tensors[1] == 3).any()  # the request covers the client's own class-3 samples
        assert (s.client_train.tensors[1] == 3).any()  # ...which θp (and its committed Fisher) did see


def test_code_package_request_covering_the_federation_roles():
    from zkapex_flwr.data.code import code_splits

    s, _ = code_splits(
        client_id=0, num_clients=2, max_provider_seqs=300, max_client_seqs=120, seed=0, client_keeps_forget=False
    )
    forget, unseen = _rows(s.client_forget), _rows(s.client_unseen)
    held = _rows(s.client_train) - _rows(s.client_retain)
    assert held and not held & forget and not held & unseen  # the client's own share of the package
    assert not unseen & (_rows(s.provider_train) | _rows(s.client_train))
    assert not forget & _rows(s.provider_retain) and forget <= _rows(s.provider_train)
    assert not _rows(s.client_test) & _rows(s.client_train)
    assert s.meta["client_forget_package_seqs"] == len(held)
