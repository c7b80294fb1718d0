"""How much a second torch thread speeds up a training epoch (why the quality bench runs two one-thread processes)."""

import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.training import train
from zkapex_flwr.tasks import task_for
model, ds = sys.argv[2], sys.argv[3]
kw = dict(max_provider_seqs=300) if model=="opt" else {}
cfg = preset(model, ds, backbone="none", **kw)
splits, args = build_splits(cfg)
m = build_model(cfg, args, 0)
t=time.perf_counter()
train(m, task_for(splits.task), splits.provider_train, epochs=2, lr=1e-3, batch_size=cfg.batch_size)
print(model, sys.argv[1], "threads", round(time.perf_counter()-t,2), "s")
