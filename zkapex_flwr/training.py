"""Training and evaluation loops shared by the provider, the clients and the baselines."""

from __future__ import annotations

import torch
from torch import nn

from .data.tensors import TensorData


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): cuda when torch sees a GPU, else cpu; otherwise the device named."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but torch sees no CUDA device (use 'auto' or 'cpu')")
    return dev


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift every image of ``x`` (N, C, H, W) by its own random offset of up to ``max_shift`` pixels
    (zero padding): the standard augmentation that lets a small ViT generalise from a few thousand digits."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    di = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dj = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (torch.arange(h)[None] + di[:, None])[:, None, :, None]
    cols = (torch.arange(w)[None] + dj[:, None])[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def check_schedule(warmup: float, clip_norm: float | None, what: str) -> None:
    """Refuse a warmup share outside [0, 1) or a non-positive clipping norm (``what`` names the caller)."""
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"{what}: warmup is a share of the steps in [0, 1), got {warmup}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"{what}: clip_norm must be positive or None, got {clip_norm}")


def train(
    model: nn.Module,
    task,
    data: TensorData,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    seed: int = 0,
    frozen_zero: dict[str, torch.Tensor] | None = None,
    augment: int = 0,
    warmup: float = 0.0,
    clip_norm: float | None = None,
    progress=None,
    desc: str = "train",
    device: str | torch.device | None = None,
) -> nn.Module:
    """Train in place with AdamW and a cosine schedule, on ``device`` (None: where the model is).

    ``warmup`` is the share of the steps over which the learning rate first rises linearly to ``lr``
    (0: none); ``clip_norm`` clips the gradient's global norm (None: no clipping). The small code LM needs
    both to train at a useful learning rate (docs/research/forgetting.md §4).

    ``frozen_zero`` maps parameter names to boolean masks of entries that must stay exactly zero (used by
    the mask + fine-tune baseline). ``augment`` > 0 translates image batches by up to that many pixels.
    ``progress`` is an optional ``rich.progress.Progress``.
    """
    if len(data) == 0:
        raise ValueError(f"{desc}: no training data")
    if epochs < 0:
        raise ValueError(f"{desc}: epochs must be non-negative, got {epochs}")
    check_schedule(warmup, clip_norm, desc)
    if device is not None:
        model.to(resolve_device(device))
    on = next(model.parameters()).device
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    warm = int(warmup * steps)
    if warm:
        sched = torch.optim.lr_scheduler.SequentialLR(
            opt,
            [
                torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warm, total_iters=warm),
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps - warm, 1)),
            ],
            milestones=[warm],
        )
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    task_id = progress.add_task(desc, total=steps) if progress is not None else None
    model.train()
    for _ in range(epochs):
        for batch in data.batches(batch_size, shuffle=True, generator=gen):
            if augment:
                batch = (random_translate(batch[0], augment, gen),) + tuple(batch[1:])
            batch = tuple(t.to(on) for t in batch)
            loss = task.per_sample_loss(task.forward(model, batch), batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            opt.step()
            sched.step()
            if frozen_zero:
                with torch.no_grad():
                    for name, m in frozen_zero.items():
                        params[name].masked_fill_(m, 0.0)
            if task_id is not None:
                progress.advance(task_id)
    if task_id is not None:
        progress.remove_task(task_id)
    model.eval()
    return model


@torch.no_grad()
def per_sample_stats(model: nn.Module, task, data: TensorData, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per-sample loss, entropy, correct count and token/sample count, in data order."""
    model.eval()
    on = next(model.parameters()).device
    cols: dict[str, list[torch.Tensor]] = {"loss": [], "entropy": [], "correct": [], "total": []}
    for batch in data.batches(batch_size):
        batch = tuple(t.to(on) for t in batch)
        out = task.forward(model, batch)
        correct, total = task.per_sample_correct(out, batch)
        cols["loss"].append(task.per_sample_loss(out, batch))
        cols["entropy"].append(task.per_sample_entropy(out))
        cols["correct"].append(correct)
        cols["total"].append(total)
    return {k: torch.cat(v).cpu() for k, v in cols.items()}


def accuracy(model: nn.Module, task, data: TensorData) -> float:
    """Top-1 accuracy (images) or next-token accuracy (code), pooled over samples/tokens."""
    if len(data) == 0:
        raise ValueError("accuracy of an empty dataset is undefined")
    s = per_sample_stats(model, task, data)
    return float(s["correct"].sum() / s["total"].sum())
