import sys, time, torch
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model
torch.set_num_threads(2)
ge, pe, hid, nprov, lr = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
cfg = preset("opt", "stdlib-code", client_keeps_forget=False, max_provider_seqs=nprov, max_client_seqs=600, global_epochs=ge, personal_epochs=pe, global_lr=lr, model_kwargs=dict(hidden=hid, layers=4, ffn=4*hid, heads=4))
seed_everything(0)
sp, margs = build_splits(cfg); task = task_for(sp.task); print(sp.sizes(), flush=True)
t=time.time(); g = train(build_model(cfg, margs, 0), task, sp.provider_train, epochs=ge, lr=lr, batch_size=32, seed=0); tg=time.time()-t
t=time.time(); p = train(clone_model(g), task, sp.client_train, epochs=pe, lr=1e-3, batch_size=32, seed=0); tp=time.time()-t
t=time.time(); r = train(build_model(cfg, margs, 0), task, sp.provider_retain, epochs=ge, lr=lr, batch_size=32, seed=0); r = train(r, task, sp.client_retain, epochs=pe, lr=1e-3, batch_size=32, seed=0)
print(sys.argv[1:], f"global {tg:.0f}s pers {tp:.0f}s; g test {accuracy(g,task,sp.client_test):.3f} p test {accuracy(p,task,sp.client_test):.3f} p forget {accuracy(p,task,sp.client_forget):.3f} retrain forget {accuracy(r,task,sp.client_forget):.3f} retrain test {accuracy(r,task,sp.client_test):.3f}", flush=True)
