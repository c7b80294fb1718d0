"""Model factories: small models built from config (trained here on CPU) and the paper's sizes.

* ``vit-tiny``: a timm ``VisionTransformer`` sized for 8×8 digits or 28×28 MNIST.
* ``vit_base_patch16_224``: the paper's ViT-B/16 through ``timm.create_model`` (weights from the hub).
* ``opt-tiny``: a transformers ``OPTForCausalLM`` built from an ``OPTConfig``.
* ``facebook/opt-125m``: the paper's code model through ``from_pretrained`` (weights from the hub).

Attention runs in the explicit (non-fused) path so ``torch.func.vmap`` can take per-sample gradients.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGE_MODELS = ("vit-tiny", "vit_base_patch16_224")
LM_MODELS = ("opt-tiny", "facebook/opt-125m")


def _unfuse_attention(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def build_vit(image_shape: tuple[int, int, int] = (1, 8, 8), num_classes: int = 10, *, embed_dim: int = 64,
              depth: int = 4, num_heads: int = 4, mlp_ratio: float = 2.0, patch_size: int | None = None,
              global_pool: str = "token", seed: int = 0) -> nn.Module:
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
    model = VisionTransformer(img_size=height, patch_size=patch_size, in_chans=chans, num_classes=num_classes,
                              embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                              drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, global_pool=global_pool,
                              class_token=global_pool == "token")
    return _unfuse_attention(model)


def build_opt(vocab_size: int, seq_len: int = 64, *, hidden: int = 128, layers: int = 4, ffn: int = 512,
              heads: int = 4, seed: int = 0) -> nn.Module:
    """A small transformers OPTForCausalLM built from an OPTConfig (random init, seeded)."""
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, ffn_dim=ffn,
                    num_attention_heads=heads, max_position_embeddings=max(seq_len, 64) + 2,
                    word_embed_proj_dim=hidden, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                    layerdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return OPTForCausalLM._from_config(cfg, attn_implementation="eager")


def load_pretrained(name: str) -> nn.Module:
    """The paper's models through the real loading code (needs the Hugging Face Hub)."""
    if name == "vit_base_patch16_224":
        import timm

        return _unfuse_attention(timm.create_model(name, pretrained=True))
    if name == "facebook/opt-125m":
        from transformers import OPTForCausalLM

        return OPTForCausalLM.from_pretrained(name, attn_implementation="eager")
    raise ValueError(f"unknown pretrained model '{name}'; choose one of vit_base_patch16_224, facebook/opt-125m")


def clone_model(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
