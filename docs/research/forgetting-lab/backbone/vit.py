import sys, time, math, torch, torch.nn.functional as F
sys.path.insert(0, "/work/main")
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import accuracy, random_translate
from zkapex_flwr.models import clone_model
torch.set_num_threads(2)

def affine(x, gen, rot=15, scale=0.1, shift=0.12):
    n = x.shape[0]
    a = (torch.rand(n, generator=gen) * 2 - 1) * rot * math.pi / 180
    s = 1 + (torch.rand(n, generator=gen) * 2 - 1) * scale
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * shift * 2
    th = torch.zeros(n, 2, 3)
    th[:, 0, 0] = torch.cos(a) / s; th[:, 0, 1] = -torch.sin(a) / s
    th[:, 1, 0] = torch.sin(a) / s; th[:, 1, 1] = torch.cos(a) / s
    th[:, :, 2] = t
    g = F.affine_grid(th, x.shape, align_corners=False)
    return F.grid_sample(x, g, align_corners=False, padding_mode="zeros")

def fit(model, task, data, epochs, lr, aug, ls=0.0, wd=0.01, bs=64, seed=0):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * ((len(data) + bs - 1) // bs)
    warm = min(steps // 10, 200) if ls >= 0 else 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(warm, 1)) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for b in data.batches(bs, shuffle=True, generator=gen):
            x = b[0]
            if aug == "t": x = random_translate(x, 2, gen)
            elif aug == "a": x = affine(x, gen)
            out = task.forward(model, (x,) + tuple(b[1:]))
            loss = F.cross_entropy(out, b[1], label_smoothing=ls)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    model.eval(); return model

def run(name, mk=None, ge=40, glr=3e-3, pe=30, plr=1e-3, aug="t", paug=None, ls=0.0, setting="class", wd=0.01):
    cfg = preset("vit", sys.argv[1] if len(sys.argv) > 1 else "mnist", client_keeps_forget=False)
    if setting == "samples": cfg = preset("vit", "mnist", forget_mode="samples", forget_count=100)
    if mk: cfg.model_kwargs = {**cfg.model_kwargs, **mk}
    splits, margs = build_splits(cfg)
    task = task_for(splits.task)
    t = time.time()
    torch.manual_seed(0)
    g = fit(build_model(cfg, margs, 0), task, splits.provider_train, ge, glr, aug, ls, wd)
    tg = time.time() - t
    ga = accuracy(g, task, splits.client_test)
    p = fit(clone_model(g), task, splits.client_train, pe, plr, paug or aug, ls, wd)
    pa = accuracy(p, task, splits.client_test)
    print(f"{name}: sizes prov={len(splits.provider_train)} client={len(splits.client_train)} test={len(splits.client_test)} | global acc {ga:.3f} personal acc {pa:.3f} | global {tg:.0f}s total {time.time()-t:.0f}s", flush=True)

exps = {
 "R0": dict(),
 "R1-affine": dict(aug="a"),
 "R2-affine-ls": dict(aug="a", ls=0.1),
 "R3-affine-p4": dict(aug="a", mk=dict(patch_size=4)),
 "R4-affine-80ep": dict(aug="a", ge=80),
 "R5-affine-128w": dict(aug="a", mk=dict(embed_dim=128)),
}
if __name__ == "__main__":
  for n in sys.argv[2].split(","):
    run(n, **exps[n])
