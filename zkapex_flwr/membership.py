"""A per-example membership-inference attack with reference models (RMIA, offline).

Zarifzadeh et al., "Low-Cost High-Power Membership Inference Attacks" (ICML 2024). For a target model
θ and a sample x, let Pr(x|θ) be the model's likelihood of x: the softmax probability of the true
label (images) or the geometric-mean probability of the true next tokens (code), i.e. exp(−loss).
Reference models θ'_1…θ'_R are trained by the same pipeline on data that holds *neither* the forget
set D_f nor the non-members (OUT models). The offline attack approximates the average over IN and OUT
models as Pr(x) = ½((1 + a)·mean_r Pr(x|θ'_r) + (1 − a)) and scores

    LR(x) = Pr(x|θ) / Pr(x).

RMIA compares LR(x) with LR(z) over population samples z at γ = 1; that score is monotone in LR(x),
so its ROC over members (D_f) against non-members is the ROC of LR itself, computed here directly.
Reported: AUC and the TPR at 1 % FPR (interpolated on the ROC), members against non-members.
The per-example calibration is what lets the attack see membership a loss threshold cannot: a sample
that is hard for every reference model is not flagged just because the target finds it hard too.

The retrain-from-scratch baseline is itself an OUT model for D_f; its score is the target an
unlearning method must match (not 0.5), and it is scored with the same references (it is never one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data.tensors import TensorData
from .training import per_sample_stats

RMIA_A = 0.33  # offline mixing coefficient a (Zarifzadeh et al. use 0.2–0.6; results here move little within it)


def likelihood(model: nn.Module, task, data: TensorData) -> np.ndarray:
    """Pr(x|θ) per sample: exp(−per-sample loss), float64."""
    return torch.exp(-per_sample_stats(model, task, data)["loss"].double()).numpy()


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 0.01) -> float:
    """The largest true-positive rate at a false-positive rate of at most ``fpr`` (ROC interpolated)."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(labels, scores)
    return float(np.interp(fpr, f, t))


@dataclass
class MembershipAudit:
    """The attack, calibrated once on reference models, scoring any number of target models."""

    members: TensorData  # D_f as the target model sees it
    non_members: TensorData  # never-trained samples drawn like D_f
    ref_members: np.ndarray  # (R, n_members) reference likelihoods
    ref_non_members: np.ndarray
    a: float = RMIA_A

    @staticmethod
    def calibrate(
        models: Sequence[nn.Module], task, members: TensorData, non_members: TensorData, a: float = RMIA_A
    ) -> MembershipAudit:
        if not models:
            raise ValueError("the membership attack needs at least one reference model")
        if len(members) < 5 or len(non_members) < 5:
            raise ValueError(
                f"the membership attack needs at least 5 members and 5 non-members, got "
                f"{len(members)} and {len(non_members)}"
            )
        if not 0 <= a <= 1:
            raise ValueError(f"RMIA's a must be within [0, 1], got {a}")
        return MembershipAudit(
            members,
            non_members,
            np.stack([likelihood(m, task, members) for m in models]),
            np.stack([likelihood(m, task, non_members) for m in models]),
            a,
        )

    def _ratio(self, p: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return p / (0.5 * ((1 + self.a) * ref.mean(0) + (1 - self.a)))

    def score(self, model: nn.Module, task) -> dict[str, float]:
        """``{"auc", "tpr_at_1pct_fpr"}`` of the attack on ``model``: D_f (members) against non-members."""
        from sklearn.metrics import roc_auc_score

        s = np.concatenate(
            [
                self._ratio(likelihood(model, task, self.members), self.ref_members),
                self._ratio(likelihood(model, task, self.non_members), self.ref_non_members),
            ]
        )
        y = np.concatenate([np.ones(len(self.members)), np.zeros(len(self.non_members))])
        return {"auc": float(roc_auc_score(y, s)), "tpr_at_1pct_fpr": tpr_at_fpr(y, s, 0.01)}
