"""Sweep step 1 (exploration, seed 0): train a MUNKEY backbone on a base-pool share of the training data
(argv: share seed val_fraction) and dump its features (pooled, patch tokens, block -2) for sweep_eval.py."""

import sys
import time

import torch

sys.path.insert(0, "/work/main")
torch.set_num_threads(1)
from dataclasses import replace

from benchmarks import munkey as mb
from zkapex_flwr.munkey.model import MunkeyViT, train_steps
from zkapex_flwr.tasks import ImageTask

frac_train = float(sys.argv[1])
seed = int(sys.argv[2])
val_fraction = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
plan = replace(mb.FULL, base_fraction=frac_train * (1 - mb.FULL.test_fraction), val_fraction=val_fraction)
bench = mb.Bench(plan)
p = bench.pools
print({k: len(getattr(p, k)) for k in ("test", "base_fit", "base_val", "deletable")}, flush=True)
model = MunkeyViT.build(bench.image_shape, 10, seed=seed, **plan.vit)
t = time.time()
train_steps(model.backbone, ImageTask(), bench.data(p.base_fit), steps=plan.steps, lr=plan.lr, batch_size=64, seed=seed)
print("train", time.time() - t, flush=True)
model.freeze()
bb = model.backbone
feats = {}


def hook(name):
    def f(m, i, o):
        feats[name] = o

    return f


bb.blocks[-2].register_forward_hook(hook("b2"))
out = {}
with torch.no_grad():
    for role in ("test", "base_fit", "base_val", "deletable"):
        ids = getattr(p, role)
        x = bench.x[ids]
        res = {k: [] for k in ("pre", "logits", "tok", "b2")}
        for i in range(0, len(x), 64):
            tok = bb.forward_features(x[i : i + 64])
            pre = bb.forward_head(tok, pre_logits=True)
            res["pre"].append(pre)
            res["logits"].append(bb.head(pre))
            res["tok"].append(tok)
            res["b2"].append(feats["b2"])
        out[role] = {k: torch.cat(v) for k, v in res.items()}
        out[role]["y"] = bench.y[ids]
print("prefix tokens", bb.num_prefix_tokens, out["test"]["tok"].shape)
torch.save(out, f"/tmp/exp/emb_{frac_train}_{seed}_{val_fraction}.pt")
print("acc backbone", (out["test"]["logits"].argmax(-1) == out["test"]["y"]).float().mean().item())
