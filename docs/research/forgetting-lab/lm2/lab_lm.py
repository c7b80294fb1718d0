import sys, time, torch
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model
torch.set_num_threads(1)
ge, pe, hid, nprov, lr, layers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
seed = int(sys.argv[7]) if len(sys.argv) > 7 else 0
bs = int(sys.argv[8]) if len(sys.argv) > 8 else 32
cfg = preset("opt", "stdlib-code", seed=seed, client_keeps_forget=False, num_clients=3, max_provider_seqs=nprov, max_client_seqs=500, global_epochs=ge, personal_epochs=pe, global_lr=lr, model_kwargs=dict(hidden=hid, layers=layers, ffn=4*hid, heads=4))
seed_everything(seed)
sp, margs = build_splits(cfg); task = task_for(sp.task); print(sp.sizes(), flush=True)
t=time.time(); g = train(build_model(cfg, margs, seed), task, sp.provider_train, epochs=ge, lr=lr, batch_size=bs, seed=seed); tg=time.time()-t
t=time.time(); p = train(clone_model(g), task, sp.client_train, epochs=pe, lr=1e-3, batch_size=32, seed=seed); tp=time.time()-t
print(sys.argv[1:], f"global {tg:.0f}s pers {tp:.0f}s; g test {accuracy(g,task,sp.client_test):.3f} p test {accuracy(p,task,sp.client_test):.3f} p forget {accuracy(p,task,sp.client_forget):.3f} g forget {accuracy(g,task,sp.client_forget):.3f}", flush=True)
