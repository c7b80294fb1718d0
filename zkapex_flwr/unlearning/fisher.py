"""Per-sample gradients (torch.func) and the client's block-wise empirical Fisher.

For Fisher block b (``d`` scope weights) and ``m`` per-sample gradients G_b (m×d) the client's
curvature is C_b = λ_b·I + G_bᵀG_b / m, with damping λ_b = ``damping`` × mean(diag(G_bᵀG_b / m))
(relative to the block's mean diagonal, as in OBS/SparseGPT practice).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..data.tensors import TensorData
from .scope import BlockLayout


def per_sample_grads(
    model: nn.Module,
    task,
    data: TensorData,
    layout: BlockLayout,
    *,
    chunk_size: int = 64,
    max_samples: int | None = None,
    objective: str = "loss",
) -> Iterator[torch.Tensor]:
    """Yield ``(c, layout.size)`` float32 per-sample gradients of the scope, ``chunk_size`` samples at a time.

    Gradients are of each sample's own loss (``objective='loss'``, ``task.per_sample_loss``) or of its
    margin (``'margin'``, ``task.per_sample_margin``), with the model in eval mode, computed with
    ``torch.func.vmap(grad(...))`` over a functional call.
    """
    if objective not in ("loss", "margin"):
        raise ValueError(f"objective must be 'loss' or 'margin', got '{objective}'")
    if len(data) == 0:
        raise ValueError("cannot compute per-sample gradients on an empty dataset")
    layout.check_model(model)
    was_training = model.training
    model.eval()
    names = set(layout.names())
    scope = {n: p.detach() for n, p in model.named_parameters() if n in names}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    frozen.update(dict(model.named_buffers()))

    def sample_loss(params, *sample):
        batch = tuple(t.unsqueeze(0) for t in sample)
        out = task.forward(_Functional(model, {**params, **frozen}), batch)
        fn = task.per_sample_loss if objective == "loss" else task.per_sample_margin
        return fn(out, batch).squeeze(0)

    per_sample = vmap(grad(sample_loss), in_dims=(None,) + (0,) * len(data.tensors))
    n = len(data) if max_samples is None else min(len(data), max_samples)
    try:
        for batch in data.head(n).batches(chunk_size):
            yield layout.flatten_grads(per_sample(scope, *batch)).float()
    finally:
        model.train(was_training)


class _Functional(nn.Module):
    """Calls ``model`` with substituted parameters, so a task's ``forward`` works unchanged."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self._model = model
        self._params = params

    def forward(self, *args, **kwargs):
        return functional_call(self._model, self._params, args=args, kwargs=kwargs)


def diag_fisher(
    model: nn.Module,
    task,
    data: TensorData,
    layout: BlockLayout,
    *,
    chunk_size: int = 64,
    max_samples: int | None = None,
) -> torch.Tensor:
    """Diagonal empirical Fisher E[g²] over the scope, float64 ``(layout.size,)``."""
    total, m = torch.zeros(layout.size, dtype=torch.float64), 0
    for g in per_sample_grads(model, task, data, layout, chunk_size=chunk_size, max_samples=max_samples):
        total += (g.double() ** 2).sum(0)
        m += g.shape[0]
    return total / m


class BlockFisher:
    """Undamped Gram statistics G_bᵀG_b / m of every Fisher block; damped blocks on demand."""

    def __init__(self, gram: torch.Tensor, num_samples: int, layout: BlockLayout):
        d = layout.block_size
        if gram.shape != (layout.n_blocks, d, d):
            raise ValueError(f"Fisher gram has shape {tuple(gram.shape)}, expected ({layout.n_blocks}, {d}, {d})")
        if num_samples < 1:
            raise ValueError("a Fisher needs at least one per-sample gradient")
        self.gram = gram  # (n_blocks, d, d) float64, already divided by m
        self.num_samples = num_samples
        self.layout = layout

    @staticmethod
    def estimate(
        model: nn.Module,
        task,
        data: TensorData,
        layout: BlockLayout,
        *,
        num_grads: int | None = None,
        chunk_size: int = 64,
    ) -> BlockFisher:
        d, nb = layout.block_size, layout.n_blocks
        gram = torch.zeros(nb, d, d, dtype=torch.float64)
        m = 0
        for g in per_sample_grads(model, task, data, layout, chunk_size=chunk_size, max_samples=num_grads):
            gb = g.double().reshape(g.shape[0], nb, d)
            gram += torch.einsum("mbi,mbj->bij", gb, gb)
            m += g.shape[0]
        return BlockFisher(gram / m, m, layout)

    def damped(self, blocks: torch.Tensor, damping: float) -> torch.Tensor:
        """C_b = G_bᵀG_b/m + λ_b I for the given blocks, float64 ``(T, d, d)``."""
        if damping < 0:
            raise ValueError(f"damping must be non-negative, got {damping}")
        blocks = torch.as_tensor(blocks, dtype=torch.long)
        if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= self.layout.n_blocks):
            raise ValueError(f"Fisher block index out of range 0..{self.layout.n_blocks - 1}")
        c = self.gram[blocks].clone()
        if damping > 0:
            diag_mean = torch.diagonal(c, dim1=-2, dim2=-1).mean(-1)
            fallback = torch.diagonal(self.gram, dim1=-2, dim2=-1).mean().clamp_min(1e-12)
            lam = damping * torch.where(diag_mean > 0, diag_mean, fallback)
            c += lam[:, None, None] * torch.eye(self.layout.block_size, dtype=c.dtype)
        return c
