"""Unlearning quality metrics (docs/protocol.md §6): accuracy, recovery, forget accuracy, membership inference.

The membership attack that counts is the per-example RMIA of :mod:`zkapex_flwr.membership` (AUC and
TPR at 1 % FPR); the loss/entropy-threshold attack here is kept as a cheap extra column.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data.splits import UnlearningSplits
from .data.tensors import TensorData
from .training import accuracy, per_sample_stats


def loss_mia_auc(model: nn.Module, task, members: TensorData, non_members: TensorData, seed: int = 0) -> float:
    """Membership-inference AUC of a loss/entropy attack: forget samples (members) vs never-seen ones.

    A logistic-regression attacker is trained and scored with stratified 5-fold cross-validation on
    balanced classes; 0.5 means the attacker cannot tell forget samples from unseen ones.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(members), len(non_members))
    if n < 5:
        raise ValueError(f"MIA needs at least 5 members and 5 non-members, got {len(members)} and {len(non_members)}")
    rng = np.random.default_rng(seed)

    def features(data: TensorData) -> np.ndarray:
        data = data.subset(torch.as_tensor(np.sort(rng.choice(len(data), size=n, replace=False))))
        s = per_sample_stats(model, task, data)
        return torch.stack([s["loss"], s["entropy"], s["correct"] / s["total"]], 1).double().numpy()

    x = np.concatenate([features(members), features(non_members)])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    attacker = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    proba = cross_val_predict(
        attacker, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba"
    )[:, 1]
    return float(roc_auc_score(y, proba))


def quality(model: nn.Module, task, splits: UnlearningSplits, audit, seed: int = 0) -> dict[str, float]:
    """Personalization accuracy, forget accuracy and both membership attacks of one model on a client's data.

    Each metric reads its own split: held-out client data without the forget classes (personalization),
    D_f in the client's domain (forget accuracy, members), never-trained samples drawn like D_f
    (non-members). ``audit`` is a :class:`~zkapex_flwr.membership.MembershipAudit` on those members and
    non-members.
    """
    rmia = audit.score(model, task)
    return {
        "personalization_acc": accuracy(model, task, splits.client_test),
        "forget_acc": accuracy(model, task, splits.client_forget),
        "mia_auc": rmia["auc"],
        "mia_tpr_at_1pct_fpr": rmia["tpr_at_1pct_fpr"],
        "loss_mia_auc": loss_mia_auc(model, task, splits.client_forget, splits.client_unseen, seed),
    }
