"""Render Latin letters from matplotlib's fonts as MNIST-like images (white on black, [0,1])."""
import glob, os, string, numpy as np, torch, matplotlib
from PIL import Image, ImageDraw, ImageFont, ImageFilter

FONT_DIR = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
NAMES = [f for f in sorted(glob.glob(FONT_DIR + "/*.ttf")) if any(k in os.path.basename(f) for k in ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10", "cmss10", "cmtt10", "cmti10", "cmb10"))]
LETTERS = string.ascii_uppercase + string.ascii_lowercase

def render(n, size=28, seed=0):
    rng = np.random.default_rng(seed)
    fonts = {}
    xs = np.zeros((n, size, size), np.float32); ys = np.zeros(n, np.int64)
    big = 4 * size
    bad = set(); i = -1
    while i < n - 1:
        i += 1
        c = int(rng.integers(len(LETTERS))); f = NAMES[int(rng.integers(len(NAMES)))]
        fs = int(rng.integers(int(big * 0.55), int(big * 0.8)))
        key = (f, fs)
        if key not in fonts: fonts[key] = ImageFont.truetype(f, fs)
        im = Image.new("L", (big, big), 0); d = ImageDraw.Draw(im)
        sw = int(rng.integers(0, 4))
        d.text((big / 2, big / 2), LETTERS[c], fill=255, font=fonts[key], anchor="mm", stroke_width=sw, stroke_fill=255)
        im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        bbox = im.getbbox()
        if not bbox or (bbox[2]-bbox[0]) * (bbox[3]-bbox[1]) < 64:
            bad.add(f); i -= 1; continue
        if bbox:  # MNIST-like: fit the glyph in a 20x20 box, centre of mass at the centre of 28x28
            g = im.crop(bbox); w, h = g.size; s = 20 * size / 28 / max(w, h)
            g = g.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
            a = np.asarray(g, np.float32) / 255
            cy, cx = np.array(np.nonzero(a > 0.1)).mean(1) if (a > 0.1).any() else (a.shape[0] / 2, a.shape[1] / 2)
            out = np.zeros((size, size), np.float32)
            oy = int(round(size / 2 - cy)); ox = int(round(size / 2 - cx))
            ys0, xs0 = max(0, oy), max(0, ox)
            ye, xe = min(size, oy + a.shape[0]), min(size, ox + a.shape[1])
            out[ys0:ye, xs0:xe] = a[ys0 - oy:ye - oy, xs0 - ox:xe - ox]
            xs[i] = out
        ys[i] = c
    return torch.from_numpy(xs).unsqueeze(1), torch.from_numpy(ys)
