import sys, time, torch
sys.path.insert(0, "/work/main")
import vit
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import accuracy
from zkapex_flwr.models import clone_model
torch.set_num_threads(2)
ck = torch.load(sys.argv[1])
for spec in sys.argv[2:]:
    seed, client, ge, glr, pe, plr = spec.split(":")
    cfg = preset("vit", "mnist", client_keeps_forget=False, seed=int(seed), client_id=int(client))
    splits, margs = build_splits(cfg); task = task_for(splits.task)
    g = build_model(cfg, margs, int(seed))
    g.load_state_dict({k: v for k, v in ck.items() if not k.startswith("head")}, strict=False)
    t = time.time(); vit.fit(g, task, splits.provider_train, int(ge), float(glr), "t", seed=int(seed))
    ga = accuracy(g, task, splits.client_test)
    p = vit.fit(clone_model(g), task, splits.client_train, int(pe), float(plr), "t", seed=int(seed))
    print(f"{spec}: test n={len(splits.client_test)} global {ga:.3f} personal {accuracy(p, task, splits.client_test):.3f} forget-client {accuracy(p, task, splits.client_forget):.3f} ({time.time()-t:.0f}s)", flush=True)
