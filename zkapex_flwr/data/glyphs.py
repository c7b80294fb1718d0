"""Rendered Latin letters: a pretraining corpus for the image backbone that ships inside a package.

The paper's ViT starts from ImageNet weights; the hub cannot be reached here, and a tiny ViT trained from
scratch on a few thousand digits tops out near 0.91 accuracy. So the provider pretrains its backbone on
letters (A–Z, a–z) drawn from the fonts matplotlib ships (DejaVu, STIX, Computer Modern), with random
size, stroke weight and rotation, framed like MNIST (glyph fitted in 20×20 of 28×28, centre of mass
centred) or, for 8×8 scikit-learn digits, rendered at 32×32 and averaged over 4×4 cells as that dataset
was made.

No digit is ever drawn, so a class request on digits still has a retrain that forgets: a model
retrained without class 3 from this backbone has never been taught what a 3 is.
"""

from __future__ import annotations

import glob
import os
import string

import numpy as np
import torch

LETTERS = string.ascii_uppercase + string.ascii_lowercase
# font families with Latin letters at their usual code points (the STIX size/symbol fonts and cmex/cmsy are not)
FAMILIES = ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmss10", "cmtt10", "cmti10", "cmb10")


def font_files() -> list[str]:
    """The matplotlib font files the letters are drawn from (sorted, so a seed fixes the corpus)."""
    import matplotlib

    root = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    files = [f for f in sorted(glob.glob(os.path.join(root, "*.ttf"))) if os.path.basename(f).startswith(FAMILIES)]
    if not files:
        raise RuntimeError(f"no letter fonts found under {root}: matplotlib's font data is missing")
    return files


def _place(glyph: np.ndarray, size: int, box: int) -> np.ndarray:
    """Fit ``glyph`` (float, [0, 1]) into a ``box``×``box`` square and put its centre of mass at the centre
    of a ``size``×``size`` image (MNIST's framing)."""
    from PIL import Image

    h, w = glyph.shape
    s = box / max(h, w)
    img = Image.fromarray((glyph * 255).astype(np.uint8)).resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS
    )
    a = np.asarray(img, np.float32) / 255.0
    ys, xs = np.nonzero(a > 0.1)
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else (a.shape[0] / 2, a.shape[1] / 2)
    out = np.zeros((size, size), np.float32)
    oy, ox = int(round(size / 2 - cy)), int(round(size / 2 - cx))
    y0, x0 = max(0, oy), max(0, ox)
    y1, x1 = min(size, oy + a.shape[0]), min(size, ox + a.shape[1])
    out[y0:y1, x0:x1] = a[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


def render_letters(n: int, image_size: int = 28, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` letter images shaped (n, 1, image_size, image_size) in [0, 1] (white on black) and their labels
    (0–51, an index into :data:`LETTERS`).

    ``image_size`` 28 frames them like MNIST; 8 renders at 32×32 and averages 4×4 cells like scikit-learn's
    digits; any other size fits the glyph in 5/7 of the side."""
    from PIL import Image, ImageDraw, ImageFont

    if n < 1:
        raise ValueError(f"render_letters needs n >= 1, got {n}")
    if image_size < 8:
        raise ValueError(f"glyph images must be at least 8 pixels wide, got {image_size}")
    rng = np.random.default_rng(seed)
    files = font_files()
    fonts: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}
    frame = 32 if image_size == 8 else image_size
    canvas = 4 * frame
    xs = np.zeros((n, image_size, image_size), np.float32)
    ys = np.zeros(n, np.int64)
    i = 0
    while i < n:
        label = int(rng.integers(len(LETTERS)))
        path = files[int(rng.integers(len(files)))]
        key = (path, int(rng.integers(int(canvas * 0.55), int(canvas * 0.8))))
        if key not in fonts:
            fonts[key] = ImageFont.truetype(key[0], key[1])
        img = Image.new("L", (canvas, canvas), 0)
        ImageDraw.Draw(img).text(
            (canvas / 2, canvas / 2),
            LETTERS[label],
            fill=255,
            font=fonts[key],
            anchor="mm",
            stroke_width=int(rng.integers(0, 4)),
            stroke_fill=255,
        )
        img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        bbox = img.getbbox()
        if bbox is None or (bbox[2] - bbox[0]) * (bbox[3] - bbox[1]) < 64:  # a font without this glyph
            continue
        glyph = np.asarray(img.crop(bbox), np.float32) / 255.0
        if image_size == 8:  # scikit-learn's digits: 32×32 bitmaps, counts over 4×4 cells
            big = _place(glyph, 32, 28)
            xs[i] = big.reshape(8, 4, 8, 4).mean(axis=(1, 3))
            xs[i] /= max(float(xs[i].max()), 1e-6)
        else:
            xs[i] = _place(glyph, image_size, round(image_size * 20 / 28))
        ys[i] = label
        i += 1
    return torch.from_numpy(xs).unsqueeze(1), torch.from_numpy(ys)
