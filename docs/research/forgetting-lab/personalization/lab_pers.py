import sys, json, time, torch
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.backbone import glyph_backbone
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.models import clone_model
torch.set_num_threads(1)
dataset = sys.argv[1]; over = json.loads(sys.argv[2]); seeds = [int(s) for s in sys.argv[3].split(",")]; clients = [int(c) for c in sys.argv[4].split(",")]
pers_aug = over.pop("pers_augment", None)
res = []
for seed in seeds:
    glob = None
    for client in clients:
        cfg = preset("vit", dataset, seed=seed, client_id=client, **over)
        seed_everything(seed)
        sp, margs = build_splits(cfg); task = task_for(sp.task)
        aug = (2 if margs["image_shape"][-1] > 8 else 1) if cfg.augment else 0
        paug = aug if pers_aug is None else ((2 if margs["image_shape"][-1] > 8 else 1) if pers_aug else 0)
        if cfg.backbone == "glyphs": glyph_backbone(tuple(margs["image_shape"]), cfg.model_kwargs)
        t = time.time()
        if glob is None:
            glob = train(build_model(cfg, margs, seed), task, sp.provider_train, epochs=cfg.global_epochs, lr=cfg.global_lr, batch_size=cfg.batch_size, seed=seed, augment=aug)
        tg = time.time() - t; t = time.time()
        p = train(clone_model(glob), task, sp.client_train, epochs=cfg.personal_epochs, lr=cfg.personal_lr, batch_size=cfg.batch_size, seed=seed, augment=paug)
        tp = time.time() - t
        a = accuracy(p, task, sp.client_test); res.append(a)
        print(dataset, sys.argv[2], seed, client, f"g {tg:.0f}s p {tp:.0f}s; g test {accuracy(glob,task,sp.client_test):.3f} p test {a:.3f} (n_test {len(sp.client_test)})", flush=True)
print("MEAN", sys.argv[2], f"{sum(res)/len(res):.4f}", flush=True)
