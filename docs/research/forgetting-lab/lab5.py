"""sample-level: RMIA sanity and variants"""
import sys, time, torch, itertools, os
sys.path.insert(0, "/tmp/lab")
useaug = "aug" in sys.argv
if useaug: import aug; sys.argv.remove("aug")
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model
from zkapex_flwr.membership import MembershipAudit
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.unlearning import *
torch.set_num_threads(2)
ds, ge, pe, ed, patch, cnt, R = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
kw = dict(embed_dim=ed, depth=4, num_heads=4, mlp_ratio=2.0, patch_size=patch)
cfg = preset("vit", ds, seed=0, client_id=0, domain_shift="none", forget_mode="samples", forget_count=cnt, global_epochs=ge, personal_epochs=pe, model_kwargs=kw, global_lr=3e-3)
seed_everything(0)
sp, margs = build_splits(cfg); task = task_for(sp.task)
print(sp.sizes(), flush=True)
def pipeline(data, seed):
    g = train(build_model(cfg, margs, seed), task, data, epochs=ge, lr=3e-3, seed=seed)
    return g, train(clone_model(g), task, sp.client_train, epochs=pe, lr=cfg.personal_lr, seed=seed)
t = time.time()
g, p = pipeline(sp.provider_train, 0)
_, r = pipeline(sp.provider_retain, 0)
refs = [pipeline(sp.provider_retain, 1000 + i)[1] for i in range(R)]
print(f"trained in {time.time()-t:.0f}s", flush=True)
from zkapex_flwr.data.images import load_images
audit = MembershipAudit.calibrate(refs, task, sp.client_forget, sp.client_unseen)
def ev(m):
    s = audit.score(m, task); return f"test {accuracy(m, task, sp.client_test):.3f} forget {accuracy(m, task, sp.client_forget):.3f} auc {s['auc']:.3f} tpr1 {s['tpr_at_1pct_fpr']:.3f}"
print("g  ", ev(g)); print("noop", ev(p)); print("retrain", ev(r), flush=True)
b = accuracy(p, task, sp.client_test)
for scope in [r"(^|\.)fc1\.weight$"]:
    layout = BlockLayout.from_model(p, 64, scope)
    fis = BlockFisher.estimate(p, task, sp.client_train, layout, num_grads=1024)
    scores = saliency_scores(g, task, sp.forget, sp.provider_retain, layout)
    for frac, damp in itertools.product([0.08, 0.12, 0.16, 0.24], [1.0, 3.0]):
        mask = select_mask(scores, layout, frac)
        up = compute_update(p, mask, fis, damp); u = clone_model(p); write_update(u, up, layout)
        mo = clone_model(p); mask_only(mo, mask)
        print(f"{scope[:20]:20s} f={frac} λ={damp}: {ev(u)} | mask-only {ev(mo)}", flush=True)
