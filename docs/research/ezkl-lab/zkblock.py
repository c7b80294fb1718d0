"""Prototype EZKL circuits for the ZK-APEX Group-OBS certificate (per Fisher block).

Forms (all: inputs = polycommit, outputs = public residuals, S = input_scale = param_scale,
scale_rebase_multiplier = 10 so every residual is an exact integer at scale 2S, no lookups):

  dense  : inputs per block  tp(d), tu(d), lam(d), m(d), C(d,d)
           outputs per block [ m*tu , C(tu-tp) + m*lam ]                      (2d)
  col    : inputs per block  tp(d), tu(d), m(d), y(K), h_0..h_{K-1}(d)        (K column slots)
           outputs per block [ tu - tp + sum_j y_j h_j , m*tu ]               (2d)
  colaug : inputs per block  tp(d), tu(d), y(K), a_0..a_{K-1}(2d)  with a_j = [H[:,i_j] ; e_{i_j}]
           outputs per block [ tu - tp + sum_j y_j h_j , <e_j, tu> for each slot ]   (d+K)
           -> the mask is bound by the registered per-column commitments; no mask input at all.

Optional `rc` = explicit range check of the free witnesses (tu, y / lam) inside the graph
(clamp -> ezkl decomposition) for use with ignore_range_check_inputs_outputs=True.

Padding: an unused column slot carries a zero column (its commitment is commit(0)); an unused
block slot carries all-zero tensors.  The verifier demands the zero commitment there.
"""
import json, os, time, hashlib
import numpy as np

LAB = os.path.dirname(os.path.abspath(__file__))
SRS_DIR = os.path.join(LAB, "srs")


# ----------------------------------------------------------------------------- problem data
def quant(x, S):
    return np.round(np.asarray(x, dtype=np.float64) * 2.0 ** S) / 2.0 ** S


def make_block(d, k, seed=0, w_std=0.05, damp=0.1):
    """Random block: theta_p, damped Fisher C (normalised max|C|=1), H = C^-1 (normalised max|H|=1),
    sorted mask of k indices, exact Group-OBS update (float64)."""
    rng = np.random.default_rng(seed)
    m = 2 * d
    G = rng.standard_normal((m, d)) * (1 + rng.random(d))  # heterogeneous columns
    C = G.T @ G / m
    C += damp * np.trace(C) / d * np.eye(d)
    C /= np.abs(C).max()
    H = np.linalg.inv(C)
    H /= np.abs(H).max()
    tp = rng.standard_normal(d) * w_std
    M = np.sort(rng.choice(d, size=k, replace=False))
    return dict(d=d, k=k, tp=tp, C=C, H=H, M=M)


def honest_update(blk, S):
    """Quantised honest witness for both forms (uses the quantised committed values)."""
    d, M = blk["d"], blk["M"]
    tp, C, H = quant(blk["tp"], S), quant(blk["C"], S), quant(blk["H"], S)
    # column form: y solves H[M,M] y = tp[M]; tu = tp - H[:,M] y ; tu[M] = 0
    y = np.linalg.solve(H[np.ix_(M, M)], tp[M])
    yq = quant(y, S)
    tu_col = quant(tp - H[:, M] @ yq, S)
    tu_col[M] = 0.0
    # dense form with the quantised C: delta = -C^-1 E (E^T C^-1 E)^-1 tp_M
    Ci = np.linalg.inv(C)
    lam = np.linalg.solve(Ci[np.ix_(M, M)], tp[M])       # delta = -Ci[:,M] lam
    delta = -Ci[:, M] @ lam
    tu_dense = quant(tp + delta, S)
    tu_dense[M] = 0.0
    lam_full = np.zeros(d)
    lam_full[M] = -(C @ (tu_dense - tp))[M]              # absorb masked rows exactly up to rounding
    return dict(tp=tp, C=C, H=H, y=yq, tu_col=tu_col, tu_dense=tu_dense, lam=quant(lam_full, S),
                tu_exact_col=tp - H[:, M] @ y)


# ----------------------------------------------------------------------------- torch models
def _model(form, d, K, B, rc):
    import torch
    import torch.nn as nn

    class Dense(nn.Module):
        def forward(self, *xs):
            outs = []
            for b in range(B):
                tp, tu, lam, m, C = xs[5 * b:5 * b + 5]
                if rc:
                    tu = torch.clamp(tu, -1.0, 1.0)
                r2 = torch.matmul(tu - tp, C) + m * lam  # C symmetric
                outs += [m * tu, r2]
            return torch.cat(outs, dim=1)

    class Col(nn.Module):
        def forward(self, *xs):
            outs = []
            n = 4 + K
            for b in range(B):
                tp, tu, m, y = xs[n * b:n * b + 4]
                Hs = torch.cat(xs[n * b + 4:n * b + 4 + K], dim=0)  # (K,d)
                if rc:
                    tu = torch.clamp(tu, -1.0, 1.0)
                    y = torch.clamp(y, -1.0, 1.0)
                outs += [tu - tp + torch.matmul(y, Hs), m * tu]
            return torch.cat(outs, dim=1)

    class ColAug(nn.Module):
        def forward(self, *xs):
            outs = []
            n = 3 + K
            for b in range(B):
                tp, tu, y = xs[n * b:n * b + 3]
                A = torch.cat(xs[n * b + 3:n * b + 3 + K], dim=0)  # (K,2d)
                if rc:
                    tu = torch.clamp(tu, -1.0, 1.0)
                    y = torch.clamp(y, -1.0, 1.0)
                Hs, E = A[:, :d], A[:, d:]
                outs += [tu - tp + torch.matmul(y, Hs), torch.matmul(tu, E.transpose(0, 1))]
            return torch.cat(outs, dim=1)

    return {"dense": Dense, "col": Col, "colaug": ColAug}[form]()


def input_shapes(form, d, K, B):
    if form == "dense":
        per = [(1, d), (1, d), (1, d), (1, d), (d, d)]
    elif form == "col":
        per = [(1, d), (1, d), (1, d), (1, K)] + [(1, d)] * K
    else:
        per = [(1, d), (1, d), (1, K)] + [(1, 2 * d)] * K
    return per * B


def shape_name(form, d, K, B, S, irc, rc):
    return f"{form}_d{d}_K{K}_B{B}_S{S}_irc{int(irc)}_rc{int(rc)}"


def srs_path(logrows):
    import ezkl
    os.makedirs(SRS_DIR, exist_ok=True)
    p = os.path.join(SRS_DIR, f"kzg{logrows}.srs")
    if not os.path.exists(p):
        ezkl.gen_srs(p, logrows)
    return p


def build_circuit(form, d, K=0, B=1, S=16, irc=False, rc=False, outdir=None, sample_inputs=None):
    """torch -> onnx -> settings -> calibrate -> compile -> setup.  Returns dict of paths + timings."""
    import torch, ezkl
    name = shape_name(form, d, K, B, S, irc, rc)
    outdir = outdir or os.path.join(LAB, "circuits", name)
    os.makedirs(outdir, exist_ok=True)
    P = {k: os.path.join(outdir, v) for k, v in dict(
        onnx="net.onnx", settings="settings.json", compiled="net.ezkl", pk="pk.key", vk="vk.key",
        cal="cal.json").items()}
    P["name"] = name
    shapes = input_shapes(form, d, K, B)
    model = _model(form, d, K, B, rc)
    xs = tuple(torch.zeros(s) for s in shapes)
    t0 = time.time()
    torch.onnx.export(model, xs, P["onnx"], opset_version=17, dynamo=False,
                      input_names=[f"x{i}" for i in range(len(xs))], output_names=["r"])
    # calibration data: honest-looking random values in range
    if sample_inputs is None:  # honest blocks (calibration must see honest-size residuals)
        sample_inputs = []
        for b in range(B):
            kk = max(1, min(K, max(1, d // 25))) if form != "dense" else max(1, d // 25)
            blk = make_block(d, kk, seed=1000 + b)
            sample_inputs += block_inputs(form, K, honest_update(blk, S), blk)
    json.dump({"input_data": sample_inputs}, open(P["cal"], "w"))
    ra = ezkl.PyRunArgs()
    ra.input_visibility = "polycommit"
    ra.param_visibility = "fixed"
    ra.output_visibility = "public"
    ra.input_scale = S
    ra.param_scale = S
    ra.scale_rebase_multiplier = 10
    ra.ignore_range_check_inputs_outputs = irc
    ezkl.gen_settings(P["onnx"], P["settings"], py_run_args=ra)
    ezkl.calibrate_settings(P["cal"], P["onnx"], P["settings"], "resources", scales=[S],
                            scale_rebase_multiplier=[10])
    ezkl.compile_circuit(P["onnx"], P["compiled"], P["settings"])
    st = json.load(open(P["settings"]))
    lr = st["run_args"]["logrows"]
    P["srs"] = srs_path(lr)
    t1 = time.time()
    ezkl.setup(P["compiled"], P["vk"], P["pk"], srs_path=P["srs"])
    t2 = time.time()
    info = dict(name=name, form=form, d=d, K=K, B=B, S=S, irc=irc, rc=rc, logrows=lr,
                rows=st.get("num_rows"), total_assignments=st.get("total_assignments"),
                num_inputs=len(shapes), compile_s=round(t1 - t0, 2), setup_s=round(t2 - t1, 2),
                pk_bytes=os.path.getsize(P["pk"]), vk_bytes=os.path.getsize(P["vk"]))
    json.dump(info, open(os.path.join(outdir, "info.json"), "w"))
    P["info"] = info
    return P


def load_circuit(form, d, K=0, B=1, S=16, irc=False, rc=False):
    name = shape_name(form, d, K, B, S, irc, rc)
    outdir = os.path.join(LAB, "circuits", name)
    P = {k: os.path.join(outdir, v) for k, v in dict(
        onnx="net.onnx", settings="settings.json", compiled="net.ezkl", pk="pk.key", vk="vk.key",
        cal="cal.json").items()}
    P["name"] = name
    P["info"] = json.load(open(os.path.join(outdir, "info.json")))
    P["srs"] = srs_path(P["info"]["logrows"])
    return P


# ----------------------------------------------------------------------------- witness layout
def onehot(d, i):
    e = np.zeros(d)
    e[i] = 1.0
    return e


def block_inputs(form, K, w, blk, tu=None, y=None, lam=None, tp=None, C=None, H=None, M=None):
    """Flat input lists for one block (honest by default; override any field to cheat)."""
    d = blk["d"]
    M = blk["M"] if M is None else M
    tp = w["tp"] if tp is None else tp
    mvec = np.zeros(d)
    mvec[M] = 1.0
    if form == "dense":
        tu = w["tu_dense"] if tu is None else tu
        lam = w["lam"] if lam is None else lam
        C = w["C"] if C is None else C
        return [list(tp), list(tu), list(lam), list(mvec), list(np.asarray(C).reshape(-1))]
    tu = w["tu_col"] if tu is None else tu
    y = w["y"] if y is None else y
    H = w["H"] if H is None else H
    assert len(M) <= K
    ypad = np.zeros(K)
    ypad[:len(M)] = y
    cols = [H[:, i] for i in M] + [np.zeros(d)] * (K - len(M))
    if form == "col":
        return [list(tp), list(tu), list(mvec), list(ypad)] + [list(c) for c in cols]
    augs = [np.concatenate([H[:, i], onehot(d, i)]) for i in M] + [np.zeros(2 * d)] * (K - len(M))
    return [list(tp), list(tu), list(ypad)] + [list(a) for a in augs]


def pad_block_inputs(form, d, K):
    return [list(np.zeros(int(np.prod(s)))) for s in input_shapes(form, d, K, 1)]


# ----------------------------------------------------------------------------- prove / verify
def gen_witness(P, inputs, path):
    import ezkl
    data = path + ".input.json"
    json.dump({"input_data": inputs}, open(data, "w"))
    t0 = time.time()
    ezkl.gen_witness(data, P["compiled"], path, vk_path=P["vk"], srs_path=P["srs"])
    return time.time() - t0


def prove(P, witness, proof):
    import ezkl
    t0 = time.time()
    ezkl.prove(witness, P["compiled"], P["pk"], proof, srs_path=P["srs"])
    return time.time() - t0


def verify(P, proof):
    """Returns (ok, seconds).  ezkl.verify raises on a bad proof."""
    import ezkl
    t0 = time.time()
    try:
        ok = bool(ezkl.verify(proof, P["settings"], P["vk"], srs_path=P["srs"]))
    except BaseException as e:  # RuntimeError or PanicException
        ok = False
    return ok, time.time() - t0


def commit(P, values, S):
    """KZG commitment(s) of one input tensor as ezkl lays it out: list of 64-byte hex (x||y)."""
    import ezkl
    felts = [ezkl.float_to_felt(float(v), S) for v in values]
    return ezkl.kzg_commit(felts, P["vk"], P["settings"], P["srs"])


def proof_commitments(proof_path):
    """Input commitments carried by the proof (polycommit): list per input of (x,y) hex."""
    pj = json.load(open(proof_path))
    return pj


def residuals(proof_path, S):
    """Public outputs (residuals) as floats at scale 2S."""
    import ezkl
    pj = json.load(open(proof_path))
    inst = pj["instances"][0]
    return np.array([ezkl.felt_to_float(f, 2 * S) for f in inst])


# ----------------------------------------------------------------------------- registry binding
def g1_bytes(g):
    """PyG1Affine (little-endian hex x,y) -> 64 bytes as laid out in the raw proof (big-endian x||y)."""
    return bytes.fromhex(g.x)[::-1] + bytes.fromhex(g.y)[::-1]


def commit_bytes(P, values, S):
    """Registry value for one vector: 64 bytes.  Depends only on the values, S, logrows and SRS
    (not on which input slot of which circuit the vector is later fed into)."""
    gs = commit(P, values, S)
    assert len(gs) == 1
    return g1_bytes(gs[0])


def proof_input_commitments(proof_path, n_inputs):
    """The first 64*n_inputs bytes of the raw proof are the polycommit input commitments, in ONNX
    input order (x||y big-endian).  The verifier compares these with the registry."""
    raw = bytes(json.load(open(proof_path))["proof"])
    return [raw[64 * i:64 * i + 64] for i in range(n_inputs)]


def raw_proof_len(proof_path):
    return len(json.load(open(proof_path))["proof"])


# ----------------------------------------------------------------------------- verifier side
def tol_col(S, K):
    """Column form tolerance on the public residual tu - tp + H_M y (real units).
    off-mask entries: only the rounding of tu  -> 2^-(S+1);
    masked entries  : rounding of y through H[M,M] (|H|<=1) -> K * 2^-(S+1);  use the max."""
    return (K + 1) * 2.0 ** -(S + 1)


def tol_dense(S, d):
    """Dense form: C (delta_q - delta*) with |C|<=1 and |rounding|<=2^-(S+1) per entry."""
    return (d + 1) * 2.0 ** -(S + 1)


class Registry:
    """What the provider keeps per client: per block the 64-byte commitments (registered before the mask)."""
    def __init__(self):
        self.blocks = {}

    @staticmethod
    def register_block(P, blk, S, form):
        """Client side registration of one block: commit(tp) and, for the column forms, d per-column
        commitments (colaug: [H[:,i]; e_i]), for dense one commitment of C (row-major)."""
        d = blk["d"]
        tp, C, H = quant(blk["tp"], S), quant(blk["C"], S), quant(blk["H"], S)
        ent = {"tp": commit_bytes(P, list(tp), S)}
        if form == "dense":
            ent["C"] = commit_bytes(P, list(C.reshape(-1)), S)
        elif form == "col":
            ent["cols"] = [commit_bytes(P, list(H[:, i]), S) for i in range(d)]
        else:
            ent["cols"] = [commit_bytes(P, list(np.concatenate([H[:, i], onehot(d, i)])), S) for i in range(d)]
        return ent


def verify_bundle(P, proof_path, form, d, K, B, S, registry, claims, zero_commit):
    """Provider-side check of one proof.  claims: list (len B) of (block_id, mask indices) or None for
    a padding block slot.  Returns (code, detail, new_tu_commitments)."""
    ok, _ = verify(P, proof_path)
    if not ok:
        return "invalid-proof", "", None
    n_per = {"dense": 5, "col": 4 + K, "colaug": 3 + K}[form]
    pc = proof_input_commitments(proof_path, n_per * B)
    res = residuals(proof_path, S)
    new = {}
    for b, cl in enumerate(claims):
        c = pc[n_per * b:n_per * (b + 1)]
        if cl is None:  # padding slot: every input must be the zero vector
            if any(x != zero_commit for x in c):
                return "malformed", f"padding slot {b} not zero", None
            continue
        bid, M = cl
        ent = registry[bid]
        if c[0] != ent["tp"]:
            return "stale-model", f"block {bid}", None
        if form == "dense":
            mvec = np.zeros(d); mvec[M] = 1.0
            if c[3] != commit_bytes(P, list(mvec), S):
                return "wrong-mask", f"block {bid}", None
            if c[4] != ent["C"]:
                return "fisher-mismatch", f"block {bid}", None
            r = res[2 * d * b:2 * d * (b + 1)]
            if np.any(r[:d] != 0):
                return "kkt-violation", f"block {bid}: masked weights not zero", None
            off = np.setdiff1d(np.arange(d), M)
            if np.abs(r[d:][off]).max() > tol_dense(S, d):
                return "kkt-violation", f"block {bid}: stationarity {np.abs(r[d:][off]).max():.3g}", None
        else:
            if len(M) > K:
                return "malformed", "too many masked entries for slots", None
            first_col = 4 if form == "col" else 3
            cols = c[first_col:first_col + K]
            for j in range(K):
                want = ent["cols"][M[j]] if j < len(M) else zero_commit
                if cols[j] != want:
                    return ("fisher-mismatch" if j < len(M) else "malformed"), f"block {bid} slot {j}", None
            if form == "col":
                mvec = np.zeros(d); mvec[M] = 1.0
                if c[2] != commit_bytes(P, list(mvec), S):
                    return "wrong-mask", f"block {bid}", None
                r = res[2 * d * b:2 * d * (b + 1)]
                r1, r2 = r[:d], r[d:]
            else:
                r = res[(d + K) * b:(d + K) * (b + 1)]
                r1, r2 = r[:d], r[d:]
            if np.any(r2 != 0):
                return "kkt-violation", f"block {bid}: masked weights not zero", None
            if np.abs(r1).max() > tol_col(S, K):
                return "kkt-violation", f"block {bid}: residual {np.abs(r1).max():.3g}", None
        new[bid] = c[1]
    return "compliant", "", new
