"""Model factories: small models built from config (trained here on CPU) and any timm / transformers model.

* :func:`build_vit`: a small timm ``VisionTransformer`` sized for 8×8 digits or 28×28 MNIST (the default).
* :func:`create_image_model`: ``"vit"`` (the above), ``"timm:<name>"`` through ``timm.create_model``,
  e.g. the paper's ``timm:vit_base_patch16_224`` (``pretrained=True`` needs the Hugging Face Hub), or
  ``"hf:<name>"``, a transformers image classifier (``AutoModelForImageClassification``) that returns logits.
* :func:`build_opt`: a small transformers ``OPTForCausalLM`` built from an ``OPTConfig``.
* :func:`create_lm`: ``"opt"`` (the above) or ``"hf:<name>"`` through ``AutoModelForCausalLM``, e.g. the
  paper's ``hf:facebook/opt-125m`` (weights from the hub).

Attention runs in the explicit (non-fused) path so ``torch.func.vmap`` can take per-sample gradients.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_MODELS = ("vit", "timm:<name>", "hf:<name>")
LM_MODELS = ("opt", "hf:<name>")


def _unfuse_attention(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def build_vit(
    image_shape: tuple[int, int, int] = (1, 8, 8),
    num_classes: int = 10,
    *,
    embed_dim: int = 64,
    depth: int = 4,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
    patch_size: int | None = None,
    global_pool: str = "token",
    seed: int = 0,
) -> nn.Module:
    """A small timm VisionTransformer built from config (random init, seeded).

    ``global_pool='avg'`` averages the patch tokens instead of reading a class token (no class token),
    which trains better from scratch on a few thousand images."""
    from timm.models.vision_transformer import VisionTransformer

    chans, height, width = image_shape
    if height != width:
        raise ValueError(f"square images only, got {height}x{width}")
    patch_size = patch_size or (2 if height <= 8 else 4)
    if height % patch_size:
        raise ValueError(f"patch size {patch_size} does not divide image size {height}")
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=height,
        patch_size=patch_size,
        in_chans=chans,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        global_pool=global_pool,
        class_token=global_pool == "token",
    )
    return _unfuse_attention(model)


def build_opt(
    vocab_size: int,
    seq_len: int = 64,
    *,
    hidden: int = 128,
    layers: int = 4,
    ffn: int = 512,
    heads: int = 4,
    seed: int = 0,
) -> nn.Module:
    """A small transformers OPTForCausalLM built from an OPTConfig (random init, seeded)."""
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        ffn_dim=ffn,
        num_attention_heads=heads,
        max_position_embeddings=max(seq_len, 64) + 2,
        word_embed_proj_dim=hidden,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return OPTForCausalLM._from_config(cfg, attn_implementation="eager")


def timm_model_known(name: str) -> bool:
    """Whether timm has an architecture called ``name`` (no download)."""
    import timm

    return bool(timm.is_model(name))


class LogitsOnly(nn.Module):
    """A transformers classifier seen as ``images -> logits`` (what the tasks and the Fisher call)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def create_image_model(
    kind: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int = 0,
    pretrained: bool = False,
    options: dict | None = None,
    **vit_kwargs,
) -> nn.Module:
    """An image classifier: ``"vit"`` (:func:`build_vit` with ``vit_kwargs``), ``"timm:<name>"`` or ``"hf:<name>"``.

    A timm model gets the data's channels and classes (``in_chans``, ``num_classes``) and, for
    architectures that take one (ViTs), the image size; ``options`` are further ``timm.create_model``
    keyword arguments. Attention runs unfused either way (per-sample gradients)."""
    if kind == "vit":
        return build_vit(image_shape, num_classes, seed=seed, **vit_kwargs)
    if kind.startswith("hf:"):
        # a transformers classifier: the hub's weights (pretrained) or its config alone, with this data's classes
        from transformers import AutoConfig, AutoModelForImageClassification

        name = kind.removeprefix("hf:")
        torch.manual_seed(seed)
        extra = {"num_labels": num_classes, "num_channels": image_shape[0], **(options or {})}
        if pretrained:
            model = AutoModelForImageClassification.from_pretrained(
                name, ignore_mismatched_sizes=True, attn_implementation="eager", **extra
            )
        else:
            config = AutoConfig.from_pretrained(name, **extra)
            model = AutoModelForImageClassification.from_config(config, attn_implementation="eager")
        return LogitsOnly(model)
    if not kind.startswith("timm:"):
        raise ValueError(f"unknown image model '{kind}'; choose 'vit', 'timm:<model name>' or 'hf:<model name>'")
    import timm

    name = kind.removeprefix("timm:")
    chans, height, width = image_shape
    kwargs = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": chans}
    if "vit" in name or "deit" in name or "eva" in name:  # ViT-family models take the input size
        kwargs["img_size"] = (height, width)
    kwargs.update(options or {})
    torch.manual_seed(seed)
    return _unfuse_attention(timm.create_model(name, **kwargs))


def create_lm(kind: str, *, vocab_size: int | None = None, seq_len: int = 64, seed: int = 0, **opt_kwargs) -> nn.Module:
    """A causal language model: ``"opt"`` (:func:`build_opt`) or ``"hf:<name>"`` (transformers, from the hub)."""
    if kind == "opt":
        if vocab_size is None:
            raise ValueError("model 'opt' is built from config: give vocab_size")
        return build_opt(vocab_size, seq_len, seed=seed, **opt_kwargs)
    if not kind.startswith("hf:"):
        raise ValueError(f"unknown language model '{kind}'; choose 'opt' or 'hf:<model name>'")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_pretrained(kind.removeprefix("hf:"), attn_implementation="eager")


def clone_model(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
