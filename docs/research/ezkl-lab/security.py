"""Cheater matrix for one circuit shape: every behaviour must map to its reason code.
usage: security.py form d K B S irc rc"""
import json, os, sys, copy, numpy as np
import zkblock as z

form, d, K, B, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
irc, rc = sys.argv[6] == '1', sys.argv[7] == '1'
P = z.load_circuit(form, d, K, B, S, irc, rc)
os.makedirs("runs/sec", exist_ok=True)
k = max(1, K - 1) if form != "dense" else max(1, round(0.04 * d))
nreal = min(B, 2)
blocks = [z.make_block(d, k, seed=77 + b) for b in range(nreal)]
W = [z.honest_update(b, S) for b in blocks]
reg = {b: z.Registry.register_block(P, blocks[b], S, form) for b in range(nreal)}
zero = z.commit_bytes(P, [0.0] * d, S)
claims = [(b, blocks[b]["M"]) for b in range(nreal)] + [None] * (B - nreal)
other = z.make_block(d, k, seed=999)                      # another client / model
results = []

def run(name, per_block_inputs, expect, claims=claims, tamper=None):
    inputs = []
    for b in range(B):
        inputs += per_block_inputs[b] if b < len(per_block_inputs) else z.pad_block_inputs(form, d, K)
    wit = f"runs/sec/{P['name']}_{name}.wit.json"; pf = f"runs/sec/{P['name']}_{name}.proof.json"
    try:
        z.gen_witness(P, inputs, wit)
    except BaseException as e:
        results.append((name, "witness-failed", expect)); print(name, "witness-failed", str(e)[:100]); return
    z.prove(P, wit, pf)
    if tamper: tamper(pf)
    code, det, _ = z.verify_bundle(P, pf, form, d, K, B, S, reg, claims, zero)
    res = np.abs(z.residuals(pf, S)).max() if code != "invalid-proof" else float("nan")
    print(f"{name:28s} -> {code:16s} expect {expect:16s} {'OK' if code == expect else 'MISMATCH'}  max|r|={res:.3g} {det}")
    results.append((name, code, expect))

H = lambda b: z.block_inputs(form, K, W[b], blocks[b])
honest = [H(b) for b in range(nreal)]
run("honest", honest, "compliant")

# mask-only: zero the masked weights, no compensation
def mask_only(b, keep_y):
    w = W[b]; tu = w["tp"].copy(); tu[blocks[b]["M"]] = 0
    if form == "dense":
        return z.block_inputs(form, K, w, blocks[b], tu=tu, lam=np.zeros(d))
    return z.block_inputs(form, K, w, blocks[b], tu=tu, y=(w["y"] if keep_y else np.zeros(len(blocks[b]["M"]))))
run("mask-only", [mask_only(0, False)] + honest[1:], "kkt-violation")
if form != "dense":
    run("mask-only(y honest)", [mask_only(0, True)] + honest[1:], "kkt-violation")

# fake fisher: identity instead of the committed Fisher; internally consistent certificate
def fake_fisher(b):
    blk = blocks[b]; w = W[b]; M = blk["M"]; I = np.eye(d)
    tu = w["tp"].copy(); tu[M] = 0
    if form == "dense":
        lam = np.zeros(d); lam[M] = -(tu - w["tp"])[M]          # I*delta + m*lam = 0
        return z.block_inputs(form, K, w, blk, tu=tu, lam=lam, C=I)
    return z.block_inputs(form, K, w, blk, tu=tu, y=w["tp"][M], H=I)
run("fake-fisher(identity)", [fake_fisher(0)] + honest[1:], "fisher-mismatch")

# stale model: honest proof over another theta_p (same Fisher and mask)
blk_s = dict(blocks[0]); blk_s["tp"] = other["tp"]
run("stale-model", [z.block_inputs(form, K, z.honest_update(blk_s, S), blk_s)] + honest[1:], "stale-model")

# wrong mask: honest proof for another mask
blk_w = dict(blocks[0]); blk_w["M"] = np.sort((blocks[0]["M"] + 1) % d)
exp_wm = "wrong-mask" if form in ("dense", "col") else "fisher-mismatch"
if form == "col":
    exp_wm = "fisher-mismatch"   # column commitments are checked before the mask commitment
run("wrong-mask", [z.block_inputs(form, K, z.honest_update(blk_w, S), blk_w)] + honest[1:], exp_wm)

# partial mask: only the first k-1 masked weights handled
if k >= 2:
    blk_p = dict(blocks[0]); blk_p["M"] = blocks[0]["M"][:-1]
    run("partial-mask", [z.block_inputs(form, K, z.honest_update(blk_p, S), blk_p)] + honest[1:],
        "fisher-mismatch" if form != "dense" else "wrong-mask")

# honest + noise on the unmasked weights (a cheater keeping a bit of the old model)
for eps in [2.0 ** -(S + 1), 4 * 2.0 ** -S, 1e-3]:
    w = W[0]; tu = (w["tu_col"] if form != "dense" else w["tu_dense"]).copy()
    off = np.setdiff1d(np.arange(d), blocks[0]["M"])
    tu[off] = z.quant(tu[off] + eps * np.sign(np.random.default_rng(3).standard_normal(len(off))), S)
    exp = "compliant" if eps <= 2.0 ** -(S + 1) + 1e-12 and form != "dense" else "kkt-violation"
    if form == "dense": exp = "kkt-violation" if eps > 1e-4 else "?"
    run(f"noise eps={eps:.2g}", [z.block_inputs(form, K, w, blocks[0], tu=tu)] + honest[1:], exp)

# tamper with a valid proof's public instances / commitments
def tamper_inst(pf):
    pj = json.load(open(pf)); v = pj["instances"][0]
    v[d + 1] = "0000000000000000000000000000000000000000000000000000000000000000" if v[d + 1][0] != "0" or v[d+1] != "0"*64 else "01" + "0" * 62
    json.dump(pj, open(pf, "w"))
run("tamper-instance", honest, "invalid-proof", tamper=tamper_inst)
def tamper_commit(pf):   # swap in the registered commitment of another client's theta_p
    pj = json.load(open(pf)); raw = bytearray(pj["proof"])
    raw[0:64] = z.commit_bytes(P, list(z.quant(other["tp"], S)), S)
    pj["proof"] = list(raw); pj["hex_proof"] = "0x" + bytes(raw).hex(); json.dump(pj, open(pf, "w"))
run("tamper-commitment", honest, "invalid-proof", tamper=tamper_commit)

# replay: another client's valid bundle (its own theta_p) presented for this client
run("replay(other client)", [z.block_inputs(form, K, z.honest_update(blk_s, S), blk_s)] + honest[1:], "stale-model")

if B >= 2:
    # hide a real block in a slot declared as padding
    cl = [claims[0]] + [None] * (B - 1)
    run("real-block-in-padding", honest, "malformed", claims=cl)
    # drop a block: only block 0 proven, block 1 slot padded, but the claim lists it
    run("drop-block", honest[:1], "stale-model")

bad = [r for r in results if r[1] != r[2] and r[2] != "?"]
print("SUMMARY", P["name"], f"{len(results) - len(bad)}/{len(results)} as expected", bad)
json.dump(results, open(f"runs/sec/{P['name']}.json", "w"))
