"""MUNKEY: a memory-augmented ViT that forgets a training instance by deleting its key.

After "Rethinking Machine Unlearning: Models Designed to Forget via Key Deletion" (arXiv 2603.15033). This
variant is built so that deletion is *exactly* retraining (docs/munkey.md):

* the **backbone** is a timm ViT (:func:`zkapex_flwr.models.create_image_model`) trained only on the
  provider's *base pool*, data that is never subject to deletion; after training it is frozen, so its
  weights do not depend on any deletable instance;
* the **memory** (:class:`~zkapex_flwr.munkey.memory.KeyValueMemory`) holds one row per training instance:
  key = a feature of the instance from the frozen backbone, L2-normalised — by default (``keys="tokens"``)
  the final-norm patch tokens, concatenated in patch order (``[N_tokens · D]``: *where* a feature is, not
  only *what*), or (``keys="pooled"``, the first variant) the pooled pre-logit embedding — value = its label
  one-hot (both functions of that instance alone);
* **prediction**: ``logits(x) = head(e) + λ · Σ_{i ∈ top-k} softmax_i(⟨q, key_i⟩ / τ) · value_i`` with
  ``e`` the backbone's pooled embedding of ``x`` and ``q`` its key: temperature-scaled attention over the k
  most similar keys;
* **forgetting** ``S`` = deleting the rows of ``S``; no weight changes, no access to the original data.

λ, k and τ are chosen by :func:`tune_retrieval` on a held-out part of the base pool, never on deletable
data. Keys are encoded in fixed-shape chunks of :data:`ENCODE_CHUNK` rows (zero padded), so a key does not
depend on which other instances were encoded beside it: the memory after ``forget(S)`` is, bit for bit, the
memory built without ``S`` (tests/test_munkey_model.py checks it; the benchmark checks it on every run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensors import TensorData
from ..models import create_image_model
from ..training import random_translate
from .memory import KeyValueMemory

ENCODE_CHUNK = 64  # keys are computed in zero-padded chunks of exactly this many rows
KEY_KINDS = ("tokens", "pooled")  # what a memory key is (MunkeyViT(keys=...)); "tokens" is the default


@dataclass(frozen=True)
class Retrieval:
    """How the memory is read: top-``k`` keys, softmax temperature ``temperature``, weight ``lam``."""

    k: int = 10
    temperature: float = 0.05
    lam: float = 4.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")


class MunkeyViT(nn.Module):
    """A frozen timm ViT ``backbone`` plus a deletable key/value ``memory``; ``forward(x)`` returns logits.

    ``keys`` (one of :data:`KEY_KINDS`): ``"tokens"`` — a key is the backbone's final-norm token sequence
    flattened (width ``num_tokens · embed_dim``); ``"pooled"`` — its pooled pre-logit embedding (width
    ``num_features``)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        retrieval: Retrieval | None = None,
        arch: dict | None = None,
        keys: str = "tokens",
    ):
        super().__init__()
        if keys not in KEY_KINDS:
            raise ValueError(f"keys must be one of {KEY_KINDS}, got {keys!r}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.retrieval = retrieval or Retrieval()
        self.arch = dict(arch or {})
        self.keys = keys
        dim = getattr(backbone, "num_features", None) or getattr(backbone, "embed_dim", None)
        if dim is None:
            raise ValueError("the backbone must be a timm model exposing num_features (the pre-logit width)")
        if keys == "tokens":
            patches = getattr(getattr(backbone, "patch_embed", None), "num_patches", None)
            if patches is None:
                raise ValueError('keys="tokens" needs a timm ViT backbone (patch_embed.num_patches)')
            dim = (int(patches) + int(getattr(backbone, "num_prefix_tokens", 0))) * int(backbone.embed_dim)
        self.memory = KeyValueMemory(int(dim), self.num_classes)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        kind: str = "vit",
        seed: int = 0,
        retrieval: Retrieval | None = None,
        keys: str = "tokens",
        **vit_kwargs,
    ) -> MunkeyViT:
        """A MUNKEY model around a fresh backbone from :func:`create_image_model` (empty memory)."""
        backbone = create_image_model(kind, tuple(image_shape), num_classes, seed=seed, **vit_kwargs)
        arch = {"image_shape": list(image_shape), "num_classes": num_classes, "kind": kind, "seed": seed, **vit_kwargs}
        return cls(backbone, num_classes, retrieval, arch, keys=keys)

    def config(self) -> dict:
        """What :meth:`from_state` needs besides the tensors: the backbone's build arguments, the retrieval and
        the key kind."""
        return {"arch": dict(self.arch), "retrieval": asdict(self.retrieval), "keys": self.keys}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], config: dict) -> MunkeyViT:
        """Rebuild from ``state_dict()`` and :meth:`config` (memory rows included)."""
        arch = dict(config["arch"])
        model = cls.build(
            tuple(arch.pop("image_shape")),
            arch.pop("num_classes"),
            kind=arch.pop("kind", "vit"),
            seed=arch.pop("seed", 0),
            retrieval=Retrieval(**config["retrieval"]),
            keys=config.get("keys", "pooled"),  # configs written before key kinds existed used pooled keys
            **arch,
        )
        model.load_state_dict(state)
        return model.freeze()

    def freeze(self) -> MunkeyViT:
        """Freeze the backbone (no gradients, eval mode): after this only the memory changes."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        return self.eval()

    def copy(self) -> MunkeyViT:
        """Another model on the same (frozen, shared) backbone with a copy of this memory."""
        other = MunkeyViT(self.backbone, self.num_classes, self.retrieval, self.arch, keys=self.keys)
        other.memory = KeyValueMemory.from_state(self.memory.state())
        return other.eval()

    # -- the backbone's view --------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's pre-logit embedding of ``x`` (timm ``forward_head(..., pre_logits=True)``)."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled embedding [B, num_features], normalised key [B, key_dim])`` of ``x``, one backbone pass."""
        tokens = self.backbone.forward_features(x)
        emb = self.backbone.forward_head(tokens, pre_logits=True)
        key = tokens.flatten(1) if self.keys == "tokens" else emb
        return emb, F.normalize(key, dim=-1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Memory keys of ``x``: normalised embeddings, computed in zero-padded chunks of :data:`ENCODE_CHUNK`
        rows so that each key is a function of its own instance only (same shapes, same kernels)."""
        was_training = self.training
        self.eval()
        on = next(self.backbone.parameters()).device
        out = []
        for start in range(0, x.shape[0], ENCODE_CHUNK):
            chunk = x[start : start + ENCODE_CHUNK].to(on)
            n = chunk.shape[0]
            if n < ENCODE_CHUNK:
                chunk = torch.cat([chunk, chunk.new_zeros((ENCODE_CHUNK - n, *chunk.shape[1:]))])
            out.append(self.features(chunk)[1][:n].float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.memory.key_dim)

    def value_of(self, y: torch.Tensor) -> torch.Tensor:
        """Memory values of labels ``y``: one-hot rows."""
        return F.one_hot(torch.as_tensor(y, dtype=torch.int64), self.num_classes).float()

    # -- memory ---------------------------------------------------------------------------------------
    def add_instances(self, ids, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add one memory row per instance (``ValueError`` naming a duplicate id)."""
        ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        y = torch.as_tensor(y, dtype=torch.int64).reshape(-1)
        if not (ids.shape[0] == x.shape[0] == y.shape[0]):
            raise ValueError(f"{ids.shape[0]} ids, {x.shape[0]} images and {y.shape[0]} labels")
        if ids.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}")
        # validate ids before the (costly) encoding so a duplicate fails fast
        KeyValueMemory(1, 1).add(ids, torch.zeros(len(ids), 1), torch.zeros(len(ids), 1), y)
        held = torch.isin(ids, self.memory.ids.cpu())
        if bool(held.any()):
            raise ValueError(f"duplicate instance ids, already in the memory: {ids[held].tolist()}")
        self.memory.add(ids, self.encode(x), self.value_of(y), y)

    def forget(self, ids) -> float:
        """Delete the rows of ``ids`` (``KeyError`` naming ids not held); returns the seconds it took."""
        t = time.perf_counter()
        self.memory.delete(ids)
        return time.perf_counter() - t

    def forget_class(self, label: int) -> torch.Tensor:
        """Delete every row of class ``label``; returns the deleted ids."""
        return self.memory.delete_class(label)

    # -- prediction -----------------------------------------------------------------------------------
    def retrieve(self, queries: torch.Tensor, retrieval: Retrieval | None = None) -> torch.Tensor:
        """Attention read of the memory for normalised ``queries`` [B, D]: [B, V] (zeros when empty)."""
        r = retrieval or self.retrieval
        keys, values = self.memory.keys, self.memory.values
        if keys.shape[0] == 0:
            return queries.new_zeros(queries.shape[0], self.memory.value_dim)
        sims = queries @ keys.T / r.temperature
        top, idx = sims.topk(min(r.k, keys.shape[0]), dim=-1)
        weights = top.softmax(-1)
        return (weights.unsqueeze(-1) * values[idx]).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, query = self.features(x)
        logits = self.backbone.head(emb)
        if self.retrieval.lam == 0:
            return logits
        return logits + self.retrieval.lam * self.retrieve(query)


def train_steps(
    model: nn.Module,
    task,
    data: TensorData,
    *,
    steps: int,
    lr: float,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    seed: int = 0,
    augment: int = 0,
    progress=None,
    desc: str = "train",
) -> nn.Module:
    """Train in place for exactly ``steps`` optimiser steps (AdamW, cosine schedule, reshuffled epochs), like
    :func:`zkapex_flwr.training.train` but budgeted in steps, so models trained on pools of different sizes
    can be given the same training cost."""
    if len(data) == 0:
        raise ValueError(f"{desc}: no training data")
    if steps < 0:
        raise ValueError(f"{desc}: steps must be non-negative, got {steps}")
    on = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    task_id = progress.add_task(desc, total=steps) if progress is not None else None
    model.train()
    done = 0
    while done < steps:
        for batch in data.batches(batch_size, shuffle=True, generator=gen):
            if done == steps:
                break
            if augment:
                batch = (random_translate(batch[0], augment, gen),) + tuple(batch[1:])
            batch = tuple(t.to(on) for t in batch)
            loss = task.per_sample_loss(task.forward(model, batch), batch).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if task_id is not None:
                progress.advance(task_id)
    if task_id is not None:
        progress.remove_task(task_id)
    model.eval()
    return model


DEFAULT_GRID = {
    "k": (1, 5, 10, 25, 50),
    "temperature": (0.02, 0.05, 0.1, 0.2),
    "lam": (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
}


@torch.no_grad()
def tune_retrieval(
    model: MunkeyViT,
    val: TensorData,
    fit: TensorData | None = None,
    grid: dict[str, Sequence] | None = None,
) -> tuple[Retrieval, list[dict]]:
    """Pick ``(k, τ, λ)`` on base-pool data only, by accuracy on ``val`` (ties broken by mean cross entropy).

    ``val`` is base-pool data the backbone did not train on. By default the memory is ``val`` itself read
    leave-one-out (each instance's own key excluded): memory and queries are then both unseen by the
    backbone, as deletable instances and test queries are. With ``fit`` the memory is ``fit`` instead.
    Returns the choice and every grid point's ``{k, temperature, lam, accuracy, loss}``; ``model`` is
    left unchanged."""
    grid = {**DEFAULT_GRID, **(grid or {})}
    xs, ys = val.tensors[0], val.tensors[1]
    feats = [model.features(xs[i : i + 256]) for i in range(0, len(xs), 256)]
    emb, q = torch.cat([f[0] for f in feats]), torch.cat([f[1] for f in feats])
    base = model.backbone.head(emb)
    if fit is None:
        keys, values, self_mask = model.encode(xs), model.value_of(ys), True
    else:
        keys, values, self_mask = model.encode(fit.tensors[0]), model.value_of(fit.tensors[1]), False
    sims = q @ keys.T
    if self_mask:
        sims.fill_diagonal_(-math.inf)
    table = []
    for k in grid["k"]:
        kk = min(int(k), keys.shape[0] - int(self_mask))
        for temperature in grid["temperature"]:
            top, idx = (sims / float(temperature)).topk(kk, dim=-1)
            read = (top.softmax(-1).unsqueeze(-1) * values[idx]).sum(1)
            for lam in grid["lam"]:
                logits = base + float(lam) * read
                table.append(
                    {
                        "k": int(k),
                        "temperature": float(temperature),
                        "lam": float(lam),
                        "accuracy": float((logits.argmax(-1) == ys).float().mean()),
                        "loss": float(F.cross_entropy(logits, ys)),
                    }
                )
    best = max(table, key=lambda r: (r["accuracy"], -r["loss"] if math.isfinite(r["loss"]) else -math.inf))
    return Retrieval(best["k"], best["temperature"], best["lam"]), table


def build_munkey(
    backbone: nn.Module,
    num_classes: int,
    retrieval: Retrieval,
    ids,
    data: TensorData,
    arch: dict | None = None,
    keys: str = "tokens",
) -> MunkeyViT:
    """A MUNKEY model sharing ``backbone`` (frozen) with a memory holding ``data`` under ``ids``: what
    "rebuild the memory without S" means (``keys`` must be the model's own key kind)."""
    model = MunkeyViT(backbone, num_classes, retrieval, arch, keys=keys).freeze()
    model.add_instances(ids, data.tensors[0], data.tensors[1])
    return model
