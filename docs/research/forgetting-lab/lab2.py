import sys, time, torch
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model
from zkapex_flwr.data.tensors import TensorData
torch.set_num_threads(1)
import sys; sys.path.insert(0, "/tmp/lab")
if "aug" in sys.argv: import aug; sys.argv.remove("aug")
ds, ge, pe, ed, shift, patch, glr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]), float(sys.argv[7])
kw = dict(embed_dim=ed, depth=4, num_heads=4, mlp_ratio=2.0, patch_size=patch, global_pool=("avg" if "avg" in sys.argv[0:0]+[__import__("os").environ.get("POOL","token")] else "token"))
cfg = preset("vit", ds, seed=0, client_id=0, domain_shift=shift, client_keeps_forget=False, global_epochs=ge, personal_epochs=pe, model_kwargs=kw, global_lr=glr)
seed_everything(0)
sp, margs = build_splits(cfg); task = task_for(sp.task)
t=time.time(); g = train(build_model(cfg, margs, 0), task, sp.provider_train, epochs=ge, lr=cfg.global_lr, seed=0); tg=time.time()-t
t=time.time(); p = train(clone_model(g), task, sp.client_train, epochs=pe, lr=cfg.personal_lr, seed=0); tp=time.time()-t
print(sys.argv[1:], f"global {tg:.0f}s pers {tp:.0f}s; g train {accuracy(g,task,sp.provider_train):.3f} g clienttest {accuracy(g,task,sp.client_test):.3f}; p test {accuracy(p,task,sp.client_test):.3f} p forget {accuracy(p,task,sp.client_forget):.3f}", flush=True)
torch.save({"g": g, "p": p}, f"/tmp/lab/m_{'_'.join(sys.argv[1:])}.pt")
