import sys, time, math, torch
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import accuracy, seed_everything
torch.set_num_threads(1)
ep, nprov, lr, bs, warm, hid, layers = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
wd = float(sys.argv[8]) if len(sys.argv) > 8 else 0.01
cfg = preset("opt", "stdlib-code", seed=0, client_keeps_forget=False, num_clients=3, max_provider_seqs=nprov, max_client_seqs=500, model_kwargs=dict(hidden=hid, layers=layers, ffn=4*hid, heads=4))
seed_everything(0)
sp, margs = build_splits(cfg); task = task_for(sp.task)
m = build_model(cfg, margs, 0)
opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd, betas=(0.9, float(sys.argv[9]) if len(sys.argv) > 9 else 0.98))
steps = ep * math.ceil(len(sp.provider_train) / bs); nw = int(warm * steps)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(nw, 1) if s < nw else 0.5 * (1 + math.cos(math.pi * (s - nw) / max(steps - nw, 1))))
gen = torch.Generator().manual_seed(0); t = time.time()
for e in range(ep):
    m.train()
    for b in sp.provider_train.batches(bs, shuffle=True, generator=gen):
        loss = task.per_sample_loss(task.forward(m, b), b).mean()
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step(); sched.step()
    m.eval()
    print(sys.argv[1:], f"epoch {e+1} {time.time()-t:.0f}s loss {loss.item():.3f} g test {accuracy(m,task,sp.client_test):.3f}", flush=True)
