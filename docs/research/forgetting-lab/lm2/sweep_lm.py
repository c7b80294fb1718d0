import sys, json, time, torch
torch.set_num_threads(1)
from zkapex_flwr.pipeline import preset, run_local, RunCache
client = int(sys.argv[1]); seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
cache = RunCache()
for f in (0.08, 0.04, 0.05, 0.06):
    cfg = preset("opt", "stdlib-code", seed=seed, client_id=client, client_keeps_forget=False, num_clients=3, max_client_seqs=500, mia_references=1, mask_fraction=f,
                 baselines=("no-op", "retrain", "mask-finetune"))
    t = time.time(); r = run_local(cfg, cache=cache)
    b = r["baselines"]
    print(f"SWEEP seed {seed} client {client} f={f}: pers {r['personalization_acc_before']:.3f} recovery {r['recovery']:.3f} forget {r['forget_acc_before']:.3f}->{r['forget_acc_after']:.3f} "
          f"retrain {b['retrain']['forget_acc_after']:.3f} (rec {b['retrain']['recovery']:.3f}) mft {b['mask-finetune']['forget_acc_after']:.3f} (rec {b['mask-finetune']['recovery']:.3f}) "
          f"rmia {r['mia_auc_after']:.3f} retrain rmia {b['retrain']['mia_auc_after']:.3f} noop rmia {b['no-op']['mia_auc_after']:.3f} ({time.time()-t:.0f}s)", flush=True)
