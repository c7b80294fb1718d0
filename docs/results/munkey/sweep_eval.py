"""Sweep step 2: from sweep_embed.py dumps, tune (k, tau, lambda) leave-one-out on base_val for each key kind
and value kind, then score the test pool with the deletable pool as memory (sweep.csv holds the results)."""

import math
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
d = torch.load(sys.argv[1])
K = (1, 5, 10, 25, 50, 100)
T = (0.02, 0.05, 0.1, 0.2)
L = (0, 0.5, 1, 2, 4, 8, 16)


def keyf(r, kind):
    if kind == "pre":
        f = r["pre"]
    elif kind == "tokmean":
        f = r["tok"].mean(1)
    elif kind == "tokflat":
        f = r["tok"].flatten(1)
    elif kind == "b2":
        f = r["b2"].mean(1)
    elif kind == "pre+b2":
        f = torch.cat([F.normalize(r["pre"], dim=-1), F.normalize(r["b2"].mean(1), dim=-1)], -1)
    elif kind == "pre+tokflat":
        f = torch.cat([F.normalize(r["pre"], dim=-1), F.normalize(r["tok"].flatten(1), dim=-1)], -1)
    return F.normalize(f, dim=-1)


def val_of(r, kind):
    oh = F.one_hot(r["y"], 10).float()
    if kind == "onehot":
        return oh
    if kind == "resid":
        return oh - r["logits"].softmax(-1)
    if kind == "resid_logit":
        return oh * 0 + (oh - r["logits"].softmax(-1))  # same


def scores(q, base, keys, vals, ys, self_mask):
    sims = q @ keys.T
    if self_mask:
        sims.fill_diagonal_(-math.inf)
    res = {}
    for k in K:
        for t in T:
            top, idx = (sims / t).topk(min(k, keys.shape[0] - 1), -1)
            read = (top.softmax(-1).unsqueeze(-1) * vals[idx]).sum(1)
            for l in L:
                lg = base + l * read
                res[(k, t, l)] = ((lg.argmax(-1) == ys).float().mean().item(), F.cross_entropy(lg, ys).item())
    return res


V, Te, D, Fi = d["base_val"], d["test"], d["deletable"], d["base_fit"]
print("backbone test", (Te["logits"].argmax(-1) == Te["y"]).float().mean().item(), "sizes", len(V["y"]), len(D["y"]))
for kk in ("pre", "tokmean", "b2", "tokflat", "pre+b2", "pre+tokflat"):
    for vk in ("onehot", "resid"):
        tv = scores(keyf(V, kk), V["logits"], keyf(V, kk), val_of(V, vk), V["y"], True)
        best = max(tv, key=lambda c: (tv[c][0], -tv[c][1]))
        te = scores(keyf(Te, kk), Te["logits"], keyf(D, kk), val_of(D, vk), Te["y"], False)
        oracle = max(v[0] for v in te.values())
        # memory with base pool too
        mk = torch.cat([keyf(D, kk), keyf(V, kk), keyf(Fi, kk)])
        mv = torch.cat([val_of(D, vk), val_of(V, vk), val_of(Fi, vk)])
        te2 = scores(keyf(Te, kk), Te["logits"], mk, mv, Te["y"], False)
        print(
            f"{kk:12s} {vk:7s} tuned={best} val={tv[best][0]:.4f} test={te[best][0]:.4f} oracle={oracle:.4f} +base={te2[best][0]:.4f} +base_oracle={max(v[0] for v in te2.values()):.4f}",
            flush=True,
        )
