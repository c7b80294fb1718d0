"""The letter-pretrained image backbone: the rendered corpus, the on-disk cache and how models start from it."""

from __future__ import annotations

import functools

import pytest
import torch

from zkapex_flwr import backbone as bb
from zkapex_flwr.data import glyphs
from zkapex_flwr.models import build_vit

TINY = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0)
SMALL = bb.GlyphPretraining(letters=256, epochs=1, batch_size=64)


def test_letters_are_framed_like_the_datasets_and_fixed_by_the_seed():
    x, y = glyphs.render_letters(64, image_size=28, seed=3)
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,)
    assert x.min() >= 0 and x.max() <= 1 and (x.flatten(1).max(1).values > 0.5).all()  # no blank image
    assert 0 <= int(y.min()) and int(y.max()) < len(glyphs.LETTERS)
    # MNIST's framing: the centre of mass near the image centre
    grid = torch.arange(28, dtype=torch.float32)
    mass = x[:, 0].sum((1, 2))
    cy = (x[:, 0].sum(2) * grid).sum(1) / mass
    cx = (x[:, 0].sum(1) * grid).sum(1) / mass
    assert (cy - 13.5).abs().max() < 2.0 and (cx - 13.5).abs().max() < 2.0
    again, labels = glyphs.render_letters(64, image_size=28, seed=3)
    assert torch.equal(again, x) and torch.equal(labels, y)
    assert not torch.equal(glyphs.render_letters(64, image_size=28, seed=4)[0], x)
    small, _ = glyphs.render_letters(16, image_size=8)
    assert small.shape == (16, 1, 8, 8) and torch.allclose(small.flatten(1).max(1).values, torch.ones(16))


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        glyphs.render_letters(0)
    with pytest.raises(ValueError, match="at least 8 pixels"):
        glyphs.render_letters(4, image_size=4)
    with pytest.raises(ValueError, match="1 channel"):
        bb.glyph_backbone((3, 8, 8), TINY, SMALL)


def test_backbone_is_built_once_cached_and_rebuilt_when_torn(tmp_path, monkeypatch):
    monkeypatch.setenv("ZKAPEX_CACHE", str(tmp_path))
    first = bb.glyph_backbone((1, 8, 8), TINY, SMALL)
    path = bb.backbone_path((1, 8, 8), TINY, SMALL)
    assert path.exists() and not any(k.startswith("head.") for k in first)
    fresh = build_vit((1, 8, 8), 52, seed=SMALL.seed, **TINY).state_dict()
    assert any(not torch.equal(first[k], fresh[k]) for k in first)  # it was trained

    calls = []
    real = glyphs.render_letters
    monkeypatch.setattr(glyphs, "render_letters", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = bb.glyph_backbone((1, 8, 8), TINY, SMALL)
    assert not calls and all(torch.equal(first[k], again[k]) for k in first)  # loaded, not retrained
    # another shape or recipe is another file
    assert bb.backbone_path((1, 8, 8), dict(TINY, embed_dim=32), SMALL) != path
    assert bb.backbone_path((1, 8, 8), TINY, bb.GlyphPretraining(letters=512)) != path

    path.write_bytes(b"not a checkpoint")  # a torn file is rebuilt, never loaded as weights
    rebuilt = bb.glyph_backbone((1, 8, 8), TINY, SMALL)
    assert calls and all(torch.equal(first[k], rebuilt[k]) for k in first)  # same seed, same weights


def test_models_start_from_the_backbone_with_their_own_head(tmp_path, monkeypatch):
    from zkapex_flwr import pipeline

    monkeypatch.setenv("ZKAPEX_CACHE", str(tmp_path))
    monkeypatch.setattr(pipeline, "glyph_backbone", functools.partial(bb.glyph_backbone, recipe=SMALL))
    cfg = pipeline.preset("vit", "digits", model_kwargs=TINY)
    assert cfg.backbone == "glyphs"  # the image presets start from the pretrained backbone
    state = bb.glyph_backbone((1, 8, 8), TINY, SMALL)
    model = pipeline.build_model(cfg, {"image_shape": (1, 8, 8), "num_classes": 10}, seed=5)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert own["head.weight"].shape == (10, 16)  # a fresh 10-class head, not the 52 letters'
    plain = pipeline.build_model(
        pipeline.preset("vit", "digits", model_kwargs=TINY, backbone="none"),
        {"image_shape": (1, 8, 8), "num_classes": 10},
        5,
    )
    assert not torch.equal(plain.state_dict()["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc1.weight"])
    with pytest.raises(ValueError, match="does not fit the model"):
        bb.load_backbone(build_vit((1, 8, 8), 10, **dict(TINY, embed_dim=32)), state)


def test_backbone_setting_is_checked():
    from zkapex_flwr.pipeline import preset

    with pytest.raises(ValueError, match="unknown backbone 'imagenet'"):
        preset("vit", "digits", backbone="imagenet")
    with pytest.raises(ValueError, match="image backbone"):
        preset("opt", "stdlib-code", backbone="glyphs")
