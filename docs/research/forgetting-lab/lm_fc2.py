"""LM scope lab: does adding fc2 to the verified scope close the code-package gap to retrain?

Runs the headline code setting (opt-stdlib-code-package-federation, seed 0, clients 0 and 1) with the
verified update on fc1 alone and on fc1 + fc2, at 8 % and 16 % masked, damping 1, beside retrain and
no-op from the same run. Results: docs/research/forgetting.md §5.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from zkapex_flwr.pipeline import RunCache, preset, run_local  # noqa: E402

FC1 = r"(^|\.)fc1\.weight$"
FC12 = r"(^|\.)fc[12]\.weight$"
cache = RunCache()
rows = []
for client in (0, 1):
    for scope_name, scope in (("fc1", FC1), ("fc1+fc2", FC12)):
        for frac in (0.08, 0.16):
            cfg = preset("opt", "stdlib-code", client_keeps_forget=False, num_clients=3, max_provider_seqs=1200,
                         max_client_seqs=500, mia_references=1, client_id=client, seed=0, scope=scope,
                         mask_fraction=frac, damping=1.0, baselines=("retrain", "no-op"))
            r = run_local(cfg, cache=cache)
            row = {"client": client, "scope": scope_name, "mask_fraction": frac,
                   "verified_forget": r["forget_acc_after"], "verified_recovery": r["recovery"],
                   "retrain_forget": r["baselines"]["retrain"]["forget_acc_after"],
                   "retrain_recovery": r["baselines"]["retrain"]["recovery"],
                   "noop_forget": r["baselines"]["no-op"]["forget_acc_after"], "masked": r["masked_weights"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
