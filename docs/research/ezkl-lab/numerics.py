"""Numerics without proving: honest residuals, tolerances, and what a cheater can hide inside them.
Residuals are computed exactly as the circuit does (integers at scale 2S)."""
import json, numpy as np, zkblock as z

def col_residual(H, tp, tu, y, M):
    return tu - tp + H[:, M] @ y

def dense_residual(C, tp, tu, lam, M):
    m = np.zeros(len(tp)); m[M] = 1
    return C @ (tu - tp) + m * lam

out = []
for d in [16, 32, 64, 128]:
    for S in [12, 16, 20]:
        hon_c, hon_d, mo_c, mo_d, hide_c, hide_d, upd = [], [], [], [], [], [], []
        for s in range(100):
            k = max(1, int(np.random.default_rng(s).integers(1, max(2, d // 12) + 1)))
            blk = z.make_block(d, k, seed=s); w = z.honest_update(blk, S); M = blk["M"]
            off = np.setdiff1d(np.arange(d), M)
            hon_c.append(np.abs(col_residual(w["H"], w["tp"], w["tu_col"], w["y"], M)).max())
            rd = dense_residual(w["C"], w["tp"], w["tu_dense"], w["lam"], M)
            hon_d.append(np.abs(rd[off]).max())
            tu = w["tp"].copy(); tu[M] = 0
            mo_c.append(np.abs(col_residual(w["H"], w["tp"], tu, 0 * w["y"], M)).max())  # y=0
            # best mask-only for col: y free -> min over y of max|tp_off... use least squares
            mo_d.append(np.abs(dense_residual(w["C"], w["tp"], tu, np.zeros(d), M)[off]).max())
            # worst deviation hidden in tolerance.  col: dtu = r_off + H_M H_MM^-1 r_M (|r|<=tol)
            Hm = w["H"][:, M]; G = Hm @ np.linalg.inv(w["H"][np.ix_(M, M)])
            tc = z.tol_col(S, k)
            hide_c.append(tc * (1 + np.abs(G[off]).sum(1).max()))
            # dense: dtu_off = C_oo^-1 r_off, |r_off|<=tol
            Coo = w["C"][np.ix_(off, off)]
            hide_d.append(z.tol_dense(S, d) * np.abs(np.linalg.inv(Coo)).sum(1).max())
            upd.append(np.abs(w["tu_exact_col"] - w["tp"])[off].max())
        row = dict(d=d, S=S, tol_col=z.tol_col(S, max(1, d // 12)), tol_dense=z.tol_dense(S, d),
                   honest_col_max=max(hon_c), honest_dense_max=max(hon_d),
                   maskonly_col_min=min(mo_c), maskonly_dense_min=min(mo_d),
                   maskonly_col_caught=float(np.mean([m > z.tol_col(S, d // 12 + 1) for m in mo_c])),
                   maskonly_dense_caught=float(np.mean([m > z.tol_dense(S, d) for m in mo_d])),
                   hide_col_median=float(np.median(hide_c)), hide_col_max=max(hide_c),
                   hide_dense_median=float(np.median(hide_d)), hide_dense_max=max(hide_d),
                   update_offmask_median=float(np.median(upd)))
        out.append(row)
        print(json.dumps({k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in row.items()}))
json.dump(out, open("numerics.json", "w"), indent=1)
