"""Probe: can the provider size a sample request's mask on θg alone?

For each seed (client 0 of the vit-mnist-samples setting) and mask fraction f: the client's RMIA AUC of
θu (what the benchmark scores) beside two provider-side statistics computed on θg only, after the
provider applies the same mask and Group-OBS update to θg with a Fisher of its own retain data:
the loss-threshold AUC of D_f against a provider holdout (half of the never-trained pool, the other half
kept as the attack's non-members), and the mean-loss ratio D_f / holdout.
"""

import sys
from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, ".")
from benchmarks.unlearning_quality import FULL, _cfg  # noqa: E402
from zkapex_flwr.models import clone_model  # noqa: E402
from zkapex_flwr.pipeline import RunCache, _keys, run_local  # noqa: E402
from zkapex_flwr.tasks import task_for  # noqa: E402
from zkapex_flwr.training import per_sample_stats  # noqa: E402
from zkapex_flwr.unlearning import BlockFisher, compute_update, saliency_scores, select_mask, write_update  # noqa: E402
from zkapex_flwr.unlearning.scope import BlockLayout  # noqa: E402

FRACTIONS = (0.04, 0.08, 0.12, 0.16, 0.20, 0.24, 0.32)
setting = next(s for s in FULL.settings if s.name == "vit-mnist-samples")
seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2]
for seed in seeds:
    cache = RunCache()
    cfg = _cfg(setting, seed, 0)
    base = run_local(replace(cfg, baselines=("retrain", "no-op")), cache=cache)
    keys = _keys(cfg)
    theta_g = cache._store[keys["global"]][0]
    splits, _ = cache._store[keys["data"]]
    task = task_for("image")
    n = len(splits.client_unseen)
    hold = splits.client_unseen.subset(torch.arange(0, n, 2))
    layout = BlockLayout.from_model(theta_g, cfg.block_size, cfg.scope)
    fisher = BlockFisher.estimate(theta_g, task, splits.provider_retain, layout, num_grads=cfg.num_grads)
    scores = saliency_scores(theta_g, task, splits.forget, splits.provider_retain, layout, method=cfg.saliency, gamma=cfg.saliency_gamma)

    def stats(model):
        lf = per_sample_stats(model, task, splits.forget)["loss"].numpy()
        lh = per_sample_stats(model, task, hold)["loss"].numpy()
        auc = roc_auc_score(np.r_[np.ones(len(lf)), np.zeros(len(lh))], -np.r_[lf, lh])
        return auc, lf.mean() / lh.mean()

    g0 = stats(theta_g)
    r = base["baselines"]["retrain"]
    print(f"seed {seed}: θg loss-AUC {g0[0]:.3f} ratio {g0[1]:.3f}; retrain RMIA {r['mia_auc_after']:.3f} "
          f"TPR {r['mia_tpr_at_1pct_fpr_after']:.3f}; no-op RMIA {base['baselines']['no-op']['mia_auc_after']:.3f}", flush=True)
    for f in FRACTIONS:
        res = run_local(replace(cfg, mask_fraction=f, baselines=()), cache=cache)
        mask = select_mask(scores, layout, f, cfg.max_blocks, None, cfg.mask_exclude)
        m = clone_model(theta_g)
        write_update(m, compute_update(theta_g, mask, fisher, cfg.damping), layout)
        auc, ratio = stats(m)
        print(f"  f={f:.2f}: client RMIA {res['mia_auc_after']:.3f} TPR {res['mia_tpr_at_1pct_fpr_after']:.3f} "
              f"recovery {res['recovery']:.3f} | provider θg' loss-AUC {auc:.3f} ratio {ratio:.3f}", flush=True)
