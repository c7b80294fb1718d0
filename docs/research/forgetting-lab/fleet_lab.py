"""Fleet lab: the fleet's client side in process (θg pretraining, sampled clients, float verified update, retrain).

Usage: python fleet_lab.py SCENARIO.toml PERSONAL_EPOCHS PERSONAL_LR MASK_FRACTION N_CLIENTS MAX_BLOCKS|none
(SCOPE=regex in the environment overrides the scope). Results: docs/research/forgetting.md §6.
"""
import sys, time, copy, statistics as st, dataclasses, tomllib
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import torch
from simulations.scenario import load_scenario
from simulations.fleet import FleetWorld
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.training import train, accuracy, seed_everything
from zkapex_flwr.unlearning import BlockLayout, BlockFisher, saliency_scores, select_mask
from zkapex_flwr.unlearning.apply import compute_update, write_update
import os; VERIFIED_SCOPE = os.environ.get('SCOPE', r'(^|\.)fc1\.weight$|^head\.weight$')
from zkapex_flwr.data.tensors import TensorData

path = sys.argv[1]; pe = int(sys.argv[2]); plr = float(sys.argv[3]); frac = float(sys.argv[4]); nclients = int(sys.argv[5])
mb = None if sys.argv[6] == "none" else int(sys.argv[6])
sc = load_scenario(path)
torch.set_num_threads(2)
world = FleetWorld(sc)
t = sc.training
task = ImageTask()
seed_everything(sc.seed)
t0 = time.time()
g = world.model(); train(g, task, world.provider_data(), epochs=t.pretrain_epochs, lr=t.pretrain_lr, batch_size=t.batch_size, seed=sc.seed)
r = world.model(); train(r, task, world.provider_retain(), epochs=t.pretrain_epochs, lr=t.pretrain_lr, batch_size=t.batch_size, seed=sc.seed)
print("pretrain", time.time()-t0)
rid = sc.requests[0].id; cls = torch.tensor(sc.requests[0].classes)
layout = BlockLayout.from_model(g, 16, VERIFIED_SCOPE)
scores = saliency_scores(g, task, world.forget_set(rid), world.provider_retain(), layout)
mask = select_mask(scores, layout, frac, mb)
head = layout.tensor_mask(r"^head\.weight$")
print("mask", len(mask), "blocks", len(mask.touched_blocks()), "in head", int(head[mask.indices].sum()))
rows = []
for pid in range(0, sc.clients, max(1, sc.clients // nclients))[:nclients]:
    tr, te, fo = world.client_data(pid)
    p = copy.deepcopy(g); train(p, task, tr, epochs=pe, lr=plr, batch_size=t.batch_size, seed=pid)
    p.eval()
    b_p, b_f = accuracy(p, task, te), accuracy(p, task, fo); print("theta_g on client", round(accuracy(g, task, te),2), round(accuracy(g,task,fo),2))
    fisher = BlockFisher.estimate(p, task, tr, layout, num_grads=64)
    u = copy.deepcopy(p); upd = compute_update(u, mask, fisher, 1.0); write_update(u, upd, layout); u.eval()
    a_p, a_f = accuracy(u, task, te), accuracy(u, task, fo)
    keep = ~torch.isin(tr.tensors[1], cls)
    rr = copy.deepcopy(r); trr = tr.subset(torch.nonzero(keep).flatten()); train(rr, task, trr, epochs=pe, lr=plr, batch_size=t.batch_size, seed=pid); rr.eval()
    rows.append((pid, len(tr), int((~keep).sum()), b_p, b_f, a_p, a_f, accuracy(rr, task, te), accuracy(rr, task, fo)))
    print(pid, len(tr), int((~keep).sum()), f"pers {b_p:.2f} fb {b_f:.2f} | after pers {a_p:.2f} fa {a_f:.2f} | retrain pers {rows[-1][7]:.2f} f {rows[-1][8]:.2f}", flush=True)
med = lambda i: st.median(x[i] for x in rows)
print(f"MEDIAN pers {med(3):.3f} fb {med(4):.3f} after pers {med(5):.3f} fa {med(6):.3f} retrain {med(7):.3f}/{med(8):.3f} rec {st.median(x[5]/max(x[3],1e-9) for x in rows):.3f} wall {time.time()-t0:.0f}")
