"""The image backbone the provider starts from: a small ViT pretrained on rendered letters, cached on disk.

Tiny ViTs trained from scratch on a few thousand digits stop near 0.91 accuracy (docs/research/forgetting.md
§4). The paper starts from ImageNet weights; here the provider pretrains once on
:func:`~zkapex_flwr.data.glyphs.render_letters` (public, synthetic, no digit in it) and every model of a run
— θg, the retrained model, the membership attack's reference models — starts from those weights with a
fresh classifier head. The weights depend only on the model's shape and the pretraining recipe, so they are
built once per shape and kept in ``ZKAPEX_CACHE`` (default ``~/.cache/zkapex_flwr``), like hub weights.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .files import atomic_write, cache_dir

BACKBONES = ("none", "glyphs")


@dataclass(frozen=True)
class GlyphPretraining:
    """The pretraining recipe (part of the cache key)."""

    letters: int = 30000
    epochs: int = 6
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0


def _cache_root() -> Path:
    path = cache_dir() / "backbones"
    path.mkdir(exist_ok=True)
    return path


def backbone_path(image_shape: tuple[int, int, int], model_kwargs: dict, recipe: GlyphPretraining) -> Path:
    key = json.dumps(
        {"image_shape": list(image_shape), "model": dict(sorted(model_kwargs.items())), "recipe": asdict(recipe)},
        sort_keys=True,
    )
    return _cache_root() / f"glyphs-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def glyph_backbone(
    image_shape: tuple[int, int, int],
    model_kwargs: dict,
    recipe: GlyphPretraining = GlyphPretraining(),
    *,
    progress=None,
    log=None,
) -> dict[str, torch.Tensor]:
    """The pretrained weights (without the 52-letter head) for a ViT of this shape, built on first use."""
    from .data.glyphs import render_letters
    from .data.tensors import TensorData
    from .models import build_vit
    from .tasks import task_for
    from .training import train

    chans, height, _ = image_shape
    if chans != 1:
        raise ValueError(f"the glyph backbone is grey-scale (1 channel), got {chans} channels")
    path = backbone_path(image_shape, model_kwargs, recipe)
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: rebuild it rather than train from garbage
            if log:
                log(f"backbone cache {path} unreadable ({exc}); rebuilding it")
    if log:
        log(f"pretraining the backbone on {recipe.letters} rendered letters ({recipe.epochs} epochs), cached in {path}")
    x, y = render_letters(recipe.letters, image_size=height, seed=recipe.seed)
    model = build_vit(image_shape, num_classes=52, seed=recipe.seed, **model_kwargs)
    train(
        model,
        task_for("image"),
        TensorData((x, y)),
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        seed=recipe.seed,
        augment=2 if height > 8 else 1,
        progress=progress,
        desc="backbone pretraining (letters)",
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())
    return state


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Copy the pretrained weights into ``model``; only its classifier head keeps its own (fresh) init."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise ValueError(f"backbone does not fit the model: {str(exc).splitlines()[-1].strip()}") from exc
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(
            f"backbone does not fit the model: missing {[k for k in missing if not k.startswith('head.')]}, "
            f"unexpected {list(unexpected)}"
        )
    return model
