import sys, json, time, torch
torch.set_num_threads(1)
from zkapex_flwr.pipeline import preset, run_local
over = json.loads(sys.argv[1]); out = sys.argv[2]
cfg = preset("opt", "stdlib-code", **{**dict(client_keeps_forget=False, num_clients=3, max_client_seqs=500, mia_references=1), **over})
t = time.time(); r = run_local(cfg, out_dir=out)
print("TIME", time.time() - t)
print(json.dumps(r.get("timings", {}), indent=0))
