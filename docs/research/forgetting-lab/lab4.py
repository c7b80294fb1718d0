"""forgetting variants on saved models (federation-wide class or samples)"""
import sys, time, torch, itertools, json
sys.path.insert(0, "/tmp/lab"); import aug
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model
from zkapex_flwr.unlearning import *
torch.set_num_threads(int(sys.argv[8]) if len(sys.argv) > 8 else 2)
ds, ge, pe, ed, shift, patch, glr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), float(sys.argv[7])
tag = "_".join(sys.argv[1:8])
mode = "class"
kw = dict(embed_dim=ed, depth=4, num_heads=4, mlp_ratio=2.0, patch_size=patch)
cfg = preset("vit", ds, seed=0, client_id=0, domain_shift=shift, client_keeps_forget=False, global_epochs=ge, personal_epochs=pe, model_kwargs=kw, global_lr=glr)
seed_everything(0)
sp, margs = build_splits(cfg); task = task_for(sp.task)
m = torch.load(f"/tmp/lab/m_{tag}.pt", weights_only=False); g, p = m["g"], m["p"]
import os
rp = f"/tmp/lab/r_{tag}.pt"
if os.path.exists(rp): r = torch.load(rp, weights_only=False)
else:
    rg = train(build_model(cfg, margs, 0), task, sp.provider_retain, epochs=ge, lr=glr, seed=0)
    r = train(clone_model(rg), task, sp.client_retain, epochs=pe, lr=cfg.personal_lr, seed=0); torch.save(r, rp)
def ev(mod): return accuracy(mod, task, sp.client_test), accuracy(mod, task, sp.client_forget)
b = ev(p); print("noop", b, "retrain", ev(r), flush=True)
for scope in [r"(^|\.)fc1\.weight$", r"(^|\.)fc1\.weight$|^head\.weight$", r"(^|\.)(fc1|fc2)\.weight$"]:
    layout = BlockLayout.from_model(p, 64, scope)
    fis = {k: BlockFisher.estimate(p, task, src, layout, num_grads=1024) for k, src in (("train", sp.client_train), ("retain", sp.client_retain))}
    scores = saliency_scores(g, task, sp.forget, sp.provider_retain, layout)
    for frac, fk, damp in itertools.product([0.04, 0.08, 0.16], ["train", "retain"], [0.01, 1.0]):
        mask = select_mask(scores, layout, frac)
        up = compute_update(p, mask, fis[fk], damp); u = clone_model(p); write_update(u, up, layout)
        mo = clone_model(p); mask_only(mo, mask)
        a = ev(u); print(f"{scope[:20]:20s} f={frac} F={fk} λ={damp}: rec {a[0]/b[0]:.3f} forget {a[1]:.3f} | mask-only rec {ev(mo)[0]/b[0]:.3f} forget {ev(mo)[1]:.3f}", flush=True)
