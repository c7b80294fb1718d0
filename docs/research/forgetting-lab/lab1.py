"""Lab: model strength + forgetting variants on the federation-wide class setting."""
import sys, time, json, torch
from dataclasses import replace
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model
from zkapex_flwr.unlearning import *
torch.set_num_threads(2)
ds = sys.argv[1]; ge=int(sys.argv[2]); pe=int(sys.argv[3]); ed=int(sys.argv[4]); shift=sys.argv[5]
kw = dict(embed_dim=ed, depth=4, num_heads=4, mlp_ratio=2.0)
cfg = preset("vit", ds, seed=0, client_id=0, domain_shift=shift, client_keeps_forget=False, global_epochs=ge, personal_epochs=pe, model_kwargs=kw)
seed_everything(0)
sp, margs = build_splits(cfg); task = task_for(sp.task)
print(sp.sizes())
t=time.time(); g = train(build_model(cfg, margs, 0), task, sp.provider_train, epochs=ge, lr=cfg.global_lr, seed=0); tg=time.time()-t
t=time.time(); p = train(clone_model(g), task, sp.client_train, epochs=pe, lr=cfg.personal_lr, seed=0); tp=time.time()-t
print(f"global {tg:.0f}s pers {tp:.0f}s; g on client test {accuracy(g,task,sp.client_test):.3f}; p test {accuracy(p,task,sp.client_test):.3f} forget {accuracy(p,task,sp.client_forget):.3f}")
torch.save({"g": g, "p": p}, f"/tmp/lab/models_{ds}_{ge}_{pe}_{ed}_{shift}.pt")
