"""Post-hoc local unlearning algorithms: a few optimiser steps on the forget set (and the retain set).

These are the gradient-based unlearning methods of the LLM-unlearning literature, written against the
:class:`~zkapex_flwr.tasks.Task` protocol so that each runs on any model a task can drive — the small
timm ViT of :func:`~zkapex_flwr.models.build_vit` with :class:`~zkapex_flwr.tasks.ImageTask` and the OPT
causal LM of :func:`~zkapex_flwr.models.create_lm` with :class:`~zkapex_flwr.tasks.LMTask` alike. They
carry no certificate of their own: unlike ZK-APEX's Group-OBS update they are not proven. MPU
(:mod:`zkapex_flwr.mpu`) runs them on perturbed copies of a model the client never sees in the clear.

Notation: for a sample x, ``nll(x)`` is its summed negative log-likelihood (an image: the cross entropy
of its label; a token window: the sum over its next tokens, i.e. ``task.per_sample_loss`` times the
number of scored units ``task.per_sample_correct(...)[1]``); ``mean_nll(x)`` is the task's per-sample loss
(the per-token mean for a window). θ_ref is a frozen copy of the model before unlearning.

==========  ======================================================================  ======  =========
name        loss minimised per step (forget batch F, retain batch R)                retain  reference
==========  ======================================================================  ======  =========
ga          −mean_F mean_nll                                                        no      no
graddiff    −γ·mean_F mean_nll + α·mean_R mean_nll                                  yes     no
kl-ga       −γ·mean_F mean_nll + α·KL(θ_ref ‖ θ) on R (per scored position)         yes     yes
npo         (2/β)·mean_F −log σ(β·(nll_θ − nll_ref)) [+ α·mean_R mean_nll]          opt.    yes
simnpo      γ·(2/β)·mean_F −log σ(β·(mean_nll_θ − δ)) [+ α·mean_R mean_nll]         opt.    no
rmu         γ·‖h_θ(F) − c·u‖² + α·‖h_θ(R) − h_ref(R)‖² at one block's output        yes     yes
undial      CE(softmax(z_ref − β·1[target]), θ) on F [+ α·mean_R mean_nll]          opt.    yes
dpo         (2/β)·mean_F −log σ(β·(Δ_win − Δ_lose)) + α·mean_R mean_nll             yes     yes
==========  ======================================================================  ======  =========

Defaults follow locuslab/open-unlearning's trainer configs: GradDiff γ = α = 1; NPO β = 0.1;
SimNPO β = 4.5, δ = 0, γ = 0.125; UNDIAL β = 10 with no retain term (α = 0); RMU steering
coefficient 2 with α = 1, the control vector u a uniform [0, 1) draw normalised to unit length; DPO
β = 0.1. In ``dpo`` Δ = log p_θ − log p_ref of a whole sample, "lose" is the forget sample and "win"
its *refusal*: for the LM the window's first half followed by refusal tokens (default: the model's
end-of-sequence id repeated — "stop here"; pass ``refusal_ids`` to use a tokenised refusal string); for
images the uniform distribution over classes (log p_win = the mean log-probability over classes), i.e.
"don't know" rather than a designated class that the model would then be taught to output.
The RMU layer defaults to the middle block of the model's transformer stack (``blocks.{depth//2}`` of a
timm ViT, ``model.decoder.layers.{n//2}`` of an OPT model); name another module with ``layer=``.

Extend the registry with :func:`register_algorithm` (any object with ``name``, ``needs_retain``,
``needs_reference`` and ``loss(model, reference, task, batch)``), then pass its name to :func:`unlearn`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.tensors import TensorData


@dataclass(frozen=True)
class UnlearnBatch:
    """What one local step sees: a batch of the forget set and, where used, one of the retain set."""

    forget: tuple[Tensor, ...]
    retain: tuple[Tensor, ...] | None = None


@runtime_checkable
class Algorithm(Protocol):
    """A post-hoc unlearning objective: :func:`unlearn` minimises ``loss`` with Adam for a few steps.

    ``needs_retain``: refuses to run without retain data. ``uses_retain`` (optional, default
    ``needs_retain``): adds a retain term when retain data is given. ``needs_reference``: ``loss`` reads
    ``reference``, a frozen copy of the model as it was before the first step.
    """

    name: str
    needs_retain: bool
    needs_reference: bool

    def loss(self, model: nn.Module, reference: nn.Module | None, task, batch: UnlearnBatch) -> Tensor: ...


# ---------------------------------------------------------------------------------------------------
# task views: what the algorithms need beyond per_sample_loss


def sample_nll(task, out: Tensor, batch: tuple[Tensor, ...]) -> Tensor:
    """Summed negative log-likelihood per sample: the task's per-sample loss × its scored units."""
    _, total = task.per_sample_correct(out, batch)
    return task.per_sample_loss(out, batch) * total.to(out.dtype)


def logits_and_targets(task, out: Tensor, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """``(logits (N, V), targets (N,), sample (N,))``: every scored position, its target and its sample.

    Built in for :class:`~zkapex_flwr.tasks.ImageTask` (one position per image) and
    :class:`~zkapex_flwr.tasks.LMTask` (each next token); a task of your own provides a method
    ``logits_and_targets(out, batch)`` returning the same."""
    own = getattr(task, "logits_and_targets", None)
    if callable(own):
        return own(out, batch)
    if task.name == "image":
        return out, batch[1], torch.arange(out.shape[0], device=out.device)
    if task.name == "lm":
        logits, target = out[:, :-1], batch[0][:, 1:]
        sample = torch.arange(out.shape[0], device=out.device)[:, None].expand_as(target)
        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1), sample.reshape(-1)
    raise TypeError(
        f"task '{task.name}' has no per-position logits view: give it a method logits_and_targets(out, batch) "
        "returning (logits (N, V), targets (N,), sample index (N,))"
    )


def _mean_nll(model, task, batch) -> Tensor:
    return task.per_sample_loss(task.forward(model, batch), batch).mean()


def _retain_term(alg, model, task, batch: UnlearnBatch) -> Tensor | float:
    if batch.retain is None or getattr(alg, "alpha", 0.0) == 0:
        return 0.0
    return alg.alpha * _mean_nll(model, task, batch.retain)


def _frozen(reference: nn.Module | None, name: str) -> nn.Module:
    if reference is None:
        raise ValueError(f"algorithm '{name}' needs a reference model (a frozen copy of the starting model)")
    return reference


# ---------------------------------------------------------------------------------------------------
# the algorithms


@dataclass(frozen=True)
class GradientAscent:
    """Ascend the forget loss."""

    name: str = "ga"
    needs_retain: bool = False
    needs_reference: bool = False
    uses_retain: bool = False

    def loss(self, model, reference, task, batch):
        return -_mean_nll(model, task, batch.forget)


@dataclass(frozen=True)
class GradDiff:
    """Ascend the forget loss, descend the retain loss."""

    gamma: float = 1.0
    alpha: float = 1.0
    name: str = "graddiff"
    needs_retain: bool = True
    needs_reference: bool = False

    def loss(self, model, reference, task, batch):
        return -self.gamma * _mean_nll(model, task, batch.forget) + _retain_term(self, model, task, batch)


@dataclass(frozen=True)
class KLGradientAscent:
    """Gradient ascent on the forget set, KL(θ_ref ‖ θ) per scored position on the retain set."""

    gamma: float = 1.0
    alpha: float = 1.0
    name: str = "kl-ga"
    needs_retain: bool = True
    needs_reference: bool = True

    def loss(self, model, reference, task, batch):
        ref = _frozen(reference, self.name)
        forget = -self.gamma * _mean_nll(model, task, batch.forget)
        out = task.forward(model, batch.retain)
        with torch.no_grad():
            ref_out = task.forward(ref, batch.retain)
        logits, _, _ = logits_and_targets(task, out, batch.retain)
        ref_logits, _, _ = logits_and_targets(task, ref_out, batch.retain)
        kl = F.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), reduction="batchmean", log_target=True)
        return forget + self.alpha * kl


@dataclass(frozen=True)
class NPO:
    """Negative preference optimisation: a bounded, reference-relative push of the forget likelihood down."""

    beta: float = 0.1
    alpha: float = 1.0
    name: str = "npo"
    needs_retain: bool = False
    needs_reference: bool = True
    uses_retain: bool = True

    def loss(self, model, reference, task, batch):
        ref = _frozen(reference, self.name)
        nll = sample_nll(task, task.forward(model, batch.forget), batch.forget)
        with torch.no_grad():
            ref_nll = sample_nll(task, task.forward(ref, batch.forget), batch.forget)
        forget = -(2.0 / self.beta) * F.logsigmoid(self.beta * (nll - ref_nll)).mean()
        return forget + _retain_term(self, model, task, batch)


@dataclass(frozen=True)
class SimNPO:
    """Reference-free NPO on the length-normalised loss, with margin δ."""

    beta: float = 4.5
    delta: float = 0.0
    gamma: float = 0.125
    alpha: float = 1.0
    name: str = "simnpo"
    needs_retain: bool = False
    needs_reference: bool = False
    uses_retain: bool = True

    def loss(self, model, reference, task, batch):
        mean_nll = task.per_sample_loss(task.forward(model, batch.forget), batch.forget)
        forget = -(2.0 / self.beta) * F.logsigmoid(self.beta * (mean_nll - self.delta)).mean()
        return self.gamma * forget + _retain_term(self, model, task, batch)


@dataclass(frozen=True)
class UNDIAL:
    """Self-distillation to the reference's logits with the target's logit lowered by β."""

    beta: float = 10.0
    alpha: float = 0.0
    name: str = "undial"
    needs_retain: bool = False
    needs_reference: bool = True
    uses_retain: bool = True  # only when alpha > 0

    def loss(self, model, reference, task, batch):
        ref = _frozen(reference, self.name)
        logits, target, _ = logits_and_targets(task, task.forward(model, batch.forget), batch.forget)
        with torch.no_grad():
            ref_logits, _, _ = logits_and_targets(task, task.forward(ref, batch.forget), batch.forget)
            soft = (ref_logits - self.beta * F.one_hot(target, ref_logits.shape[-1]).to(ref_logits.dtype)).softmax(-1)
        forget = F.cross_entropy(logits, soft)
        return forget + _retain_term(self, model, task, batch)


def middle_layer(model: nn.Module) -> str:
    """The name of the middle block of the longest ``blocks``/``layers`` stack of ``model``."""
    stacks = [
        (len(m), name)
        for name, m in model.named_modules()
        if isinstance(m, (nn.ModuleList, nn.Sequential))
        and len(m)
        and name.split(".")[-1] in ("blocks", "layers", "h", "layer")
    ]
    if not stacks:
        raise ValueError(
            "no transformer block stack (a ModuleList/Sequential named blocks/layers) found: name the RMU layer explicitly"
        )
    n, name = max(stacks)
    return f"{name}.{n // 2}"


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"RMU layer '{name}' is not a module of {type(model).__name__}")
    return modules[name]


def _activations(model: nn.Module, layer: str, task, batch) -> Tensor:
    """The output of ``layer`` (first element when it returns a tuple) on ``batch``."""
    cache: list[Tensor] = []

    def hook(_module, _inputs, output):
        cache.append(output[0] if isinstance(output, tuple) else output)

    handle = _module(model, layer).register_forward_hook(hook)
    try:
        task.forward(model, batch)
    finally:
        handle.remove()
    if not cache:
        raise RuntimeError(f"RMU layer '{layer}' was not run by the model's forward pass")
    return cache[0]


@dataclass(frozen=True)
class RMU:
    """Representation misdirection: steer one block's activations on F to c·u, keep R's at θ_ref's.

    ``u`` is drawn once from ``vector_seed`` (a fixed direction, so that runs on several copies of a
    model steer towards the same one)."""

    steering_coeff: float = 2.0
    gamma: float = 1.0
    alpha: float = 1.0
    layer: str | None = None  # None: middle_layer(model)
    vector_seed: int = 0
    name: str = "rmu"
    needs_retain: bool = True
    needs_reference: bool = True
    _vectors: dict = field(default_factory=dict, compare=False, repr=False)

    def control_vector(self, dim: int, like: Tensor) -> Tensor:
        if dim not in self._vectors:
            u = torch.rand(dim, generator=torch.Generator().manual_seed(self.vector_seed), dtype=torch.float64)
            self._vectors[dim] = (u / u.norm() * self.steering_coeff).float()
        return self._vectors[dim].to(like.device, like.dtype)

    def loss(self, model, reference, task, batch):
        ref = _frozen(reference, self.name)
        layer = self.layer or middle_layer(model)
        h_f = _activations(model, layer, task, batch.forget)
        forget = (h_f - self.control_vector(h_f.shape[-1], h_f)).pow(2).mean()
        h_r = _activations(model, layer, task, batch.retain)
        with torch.no_grad():
            ref_r = _activations(ref, layer, task, batch.retain)
        return self.gamma * forget + self.alpha * (h_r - ref_r).pow(2).mean()


@dataclass(frozen=True)
class DPORefusal:
    """DPO with the forget sample as the rejected answer and a refusal as the preferred one (see module doc)."""

    beta: float = 0.1
    alpha: float = 1.0
    refusal_ids: tuple[int, ...] | None = None  # LM: tokens of the refusal; None: the model's EOS id
    prefix_fraction: float = 0.5  # LM: share of the forget window kept before the refusal
    name: str = "dpo"
    needs_retain: bool = True
    needs_reference: bool = True

    def _win_nll(self, model, task, batch, out: Tensor, win: tuple | None) -> Tensor:
        if task.name == "image" and win is None:  # uniform target: −mean over classes of log p
            return -out.log_softmax(-1).mean(-1)
        return sample_nll(task, task.forward(model, win), win)

    def _win_batch(self, model, task, batch) -> tuple | None:
        if task.name == "image":
            return None
        if task.name != "lm":
            raise TypeError(f"dpo has no refusal for task '{task.name}' (built in: image, lm)")
        ids = batch[0]
        refusal = self.refusal_ids
        if refusal is None:
            eos = getattr(getattr(model, "config", None), "eos_token_id", None)
            if eos is None:
                raise ValueError("dpo on an LM without config.eos_token_id: pass refusal_ids")
            refusal = (int(eos),)
        keep = max(1, int(ids.shape[1] * self.prefix_fraction))
        tail = torch.tensor(refusal, dtype=ids.dtype, device=ids.device).repeat(ids.shape[1] // len(refusal) + 1)
        win = torch.cat([ids[:, :keep], tail[: ids.shape[1] - keep].expand(ids.shape[0], -1)], 1)
        return (win,) + tuple(batch[1:])

    def loss(self, model, reference, task, batch):
        ref = _frozen(reference, self.name)
        f = batch.forget
        win = self._win_batch(model, task, f)
        out = task.forward(model, f)
        lose = sample_nll(task, out, f)
        win_nll = self._win_nll(model, task, f, out, win)
        with torch.no_grad():
            ref_out = task.forward(ref, f)
            ref_lose = sample_nll(task, ref_out, f)
            ref_win = self._win_nll(ref, task, f, ref_out, win)
        margin = (ref_win - win_nll) - (ref_lose - lose)  # Δ_win − Δ_lose
        forget = -(2.0 / self.beta) * F.logsigmoid(self.beta * margin).mean()
        return forget + _retain_term(self, model, task, batch)


# ---------------------------------------------------------------------------------------------------
# registry and the loop

ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(alg: Algorithm, *, replace: bool = False) -> None:
    """Add ``alg`` under ``alg.name`` (``replace=True`` to overwrite a registered one)."""
    missing = [a for a in ("name", "needs_retain", "needs_reference", "loss") if not hasattr(alg, a)]
    if missing:
        raise TypeError(f"{type(alg).__name__} is not an unlearning Algorithm: it lacks {missing}")
    if not isinstance(alg.name, str) or not alg.name:
        raise ValueError("an algorithm needs a non-empty string name")
    if alg.name in ALGORITHMS and not replace:
        raise ValueError(f"algorithm '{alg.name}' is already registered (pass replace=True to overwrite it)")
    ALGORITHMS[alg.name] = alg


for _alg in (GradientAscent(), GradDiff(), KLGradientAscent(), NPO(), SimNPO(), RMU(), UNDIAL(), DPORefusal()):
    register_algorithm(_alg)


def get_algorithm(name: str | Algorithm) -> Algorithm:
    """The registered algorithm ``name`` (an Algorithm is returned as is)."""
    if not isinstance(name, str):
        return name
    if name not in ALGORITHMS:
        raise ValueError(f"unknown unlearning algorithm '{name}'; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def _uses_retain(alg: Algorithm) -> bool:
    return bool(getattr(alg, "uses_retain", alg.needs_retain))


def _cycle(data: TensorData, batch_size: int, generator: torch.Generator):
    while True:
        yield from data.batches(batch_size, shuffle=True, generator=generator)


def unlearn(
    model: nn.Module,
    task,
    forget: TensorData,
    retain: TensorData | None,
    algorithm: str | Algorithm,
    *,
    steps: int = 10,
    lr: float = 5e-4,
    batch_size: int = 32,
    seed: int = 0,
    reference: nn.Module | None = None,
    device: str | torch.device = "cpu",
    optimizer: str = "adam",
) -> nn.Module:
    """Run ``steps`` optimiser steps of ``algorithm`` on ``model`` in place; return it (in eval mode).

    Each step takes the next batch of a seeded shuffle of ``forget`` (and of ``retain`` where the
    algorithm uses it). ``reference``: the frozen model reference-based algorithms compare with (default:
    a copy of ``model`` taken before the first step). ``optimizer``: ``"adam"`` (default, no weight decay)
    or ``"sgd"`` (plain gradient steps; the update is then linear in the gradients).
    """
    alg = get_algorithm(algorithm)
    if len(forget) == 0:
        raise ValueError(f"algorithm '{alg.name}': the forget set is empty")
    if alg.needs_retain and (retain is None or len(retain) == 0):
        raise ValueError(
            f"algorithm '{alg.name}' needs retain data (it keeps the model close on data it must not forget); "
            f"pass retain=..., or use one that does not: {sorted(k for k, a in ALGORITHMS.items() if not a.needs_retain)}"
        )
    if steps < 0 or batch_size < 1 or lr < 0:
        raise ValueError(f"need steps ≥ 0, batch_size ≥ 1, lr ≥ 0; got {steps}, {batch_size}, {lr}")
    device = torch.device(device)
    model.to(device)
    if alg.needs_reference and reference is None:
        reference = copy.deepcopy(model)
    if reference is not None:
        reference.to(device).eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        raise ValueError(f"unknown optimizer '{optimizer}'; choose 'adam' or 'sgd'")
    gen = torch.Generator().manual_seed(seed)
    forget_batches = _cycle(forget, batch_size, gen)
    use_retain = retain is not None and len(retain) > 0 and _uses_retain(alg)
    retain_batches = _cycle(retain, batch_size, gen) if use_retain else None
    model.train()
    for _ in range(steps):
        f = tuple(t.to(device) for t in next(forget_batches))
        r = tuple(t.to(device) for t in next(retain_batches)) if retain_batches is not None else None
        loss = alg.loss(model, reference, task, UnlearnBatch(f, r))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"algorithm '{alg.name}': non-finite loss {float(loss)}; lower lr or steps")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model
