import sys, time, torch, copy
sys.path.insert(0, "/work/main")
import glyphs_probe as glyphs
import vit
from zkapex_flwr.pipeline import preset, build_splits, build_model
from zkapex_flwr.tasks import task_for
from zkapex_flwr.training import accuracy
from zkapex_flwr.models import clone_model
from zkapex_flwr.data.tensors import TensorData
torch.set_num_threads(2)
N, EP = int(sys.argv[1]), int(sys.argv[2])
t = time.time(); x, y = glyphs.render(N, seed=123); print("render", time.time() - t, flush=True)
cfg = preset("vit", "mnist", client_keeps_forget=False)
splits, margs = build_splits(cfg); task = task_for(splits.task)
m = build_model(cfg, dict(margs, num_classes=52), 0)
t = time.time()
vit.fit(m, task, TensorData((x, y)), EP, 3e-3, "t")
print("pretrain", time.time() - t, "letter acc", accuracy(m, task, TensorData(glyphs.render(1000, seed=9))), flush=True)
torch.save(m.state_dict(), f"pre_{N}_{EP}.pt")
for ge in (40,):
    g = build_model(cfg, margs, 0)
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith("head")}
    print(g.load_state_dict(sd, strict=False))
    t = time.time(); vit.fit(g, task, splits.provider_train, ge, 3e-3 if len(sys.argv) < 4 else float(sys.argv[3]), "t")
    ga = accuracy(g, task, splits.client_test)
    p = vit.fit(clone_model(g), task, splits.client_train, 30, 1e-3, "t")
    print(f"ge={ge}: global acc {ga:.3f} personal {accuracy(p, task, splits.client_test):.3f} ({time.time()-t:.0f}s)", flush=True)
