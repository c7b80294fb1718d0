"""What a model is trained and measured on: image classification or next-token prediction.

A task turns a batch (a tuple of tensors) into model outputs, per-sample losses and per-sample
correct/total counts, so training, Fisher estimation, metrics and MIA share one code path.
:class:`Task` is the protocol a task of your own implements (any object with these members works;
nothing needs to subclass it); :class:`ImageTask` and :class:`LMTask` are the two built in.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class Task(Protocol):
    """How a model meets a batch: a batch is the tuple of tensors a :class:`TensorData` yields.

    * ``forward`` — the model's output on the batch (logits);
    * ``per_sample_loss`` — one loss per sample (training, per-sample gradients for the Fisher, the MIA);
    * ``per_sample_correct`` — (correct, total) per sample: accuracy is Σcorrect / Σtotal (an image is
      1 of 1; a token window is its right next tokens of all of them);
    * ``per_sample_entropy`` — predictive entropy per sample (membership features);
    * ``per_sample_margin`` — a confidence per sample that does not saturate (the RMIA score).
    """

    name: str

    def forward(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor: ...

    def per_sample_loss(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor: ...

    def per_sample_correct(
        self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def per_sample_entropy(self, out: torch.Tensor) -> torch.Tensor: ...

    def per_sample_margin(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor: ...


def check_task(task) -> None:
    """Raise a clear error when ``task`` lacks a member of :class:`Task`."""
    missing = [
        m
        for m in ("name", "forward", "per_sample_loss", "per_sample_correct", "per_sample_entropy", "per_sample_margin")
        if not hasattr(task, m)
    ]
    if missing:
        raise TypeError(f"{type(task).__name__} is not a zkapex_flwr.tasks.Task: it lacks {missing}")


class ImageTask:
    name = "image"

    def forward(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return model(batch[0])

    def per_sample_loss(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(out, batch[1], reduction="none")

    def per_sample_correct(
        self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        correct = (out.argmax(-1) == batch[1]).float()
        return correct, torch.ones_like(correct)

    def per_sample_entropy(self, out: torch.Tensor) -> torch.Tensor:
        logp = out.log_softmax(-1)
        return -(logp.exp() * logp).sum(-1)

    def per_sample_margin(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Logit margin of the true class over the best other class (does not saturate when confident)."""
        true = out.gather(-1, batch[1][:, None])[:, 0]
        other = out.scatter(-1, batch[1][:, None], float("-inf")).amax(-1)
        return true - other


class LMTask:
    """Causal next-token prediction; a sample is one token window, its loss the mean over positions."""

    name = "lm"

    def forward(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return model(input_ids=batch[0]).logits

    def per_sample_loss(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        logits, target = out[:, :-1], batch[0][:, 1:]
        tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        return tok.reshape(target.shape).mean(-1)

    def per_sample_correct(
        self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        correct = (out[:, :-1].argmax(-1) == batch[0][:, 1:]).float().sum(-1)
        return correct, torch.full_like(correct, batch[0].shape[1] - 1)

    def per_sample_entropy(self, out: torch.Tensor) -> torch.Tensor:
        logp = out[:, :-1].log_softmax(-1)
        return -(logp.exp() * logp).sum(-1).mean(-1)

    def per_sample_margin(self, out: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Mean log-probability of the true next tokens."""
        return -self.per_sample_loss(out, batch)


def task_for(kind: str):
    if kind == "image":
        return ImageTask()
    if kind == "lm":
        return LMTask()
    raise ValueError(f"unknown task '{kind}'; choose 'image' or 'lm'")
