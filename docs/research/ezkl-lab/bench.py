"""Benchmark driver: build circuit, honest witness for B blocks, prove in a child process (peak RSS),
verify, record a row in results.jsonl.   usage: bench.py form d K B S irc rc [nreal]"""
import json, os, sys, time, subprocess, resource, numpy as np
import zkblock as z

def child_prove(cdir, wit, proof):
    import ezkl
    P = z.load_circuit(*json.load(open(os.path.join(cdir, 'args.json'))))
    t = z.prove(P, wit, proof)
    print(json.dumps({"prove_s": t}))

def main(form, d, K, B, S, irc, rc, nreal=None, seed=0):
    t0 = time.time()
    try:
        P = z.load_circuit(form, d, K, B, S, irc, rc)
    except FileNotFoundError:
        P = z.build_circuit(form, d, K, B, S, irc, rc)
    cdir = os.path.dirname(P["onnx"])
    json.dump([form, d, K, B, S, irc, rc], open(os.path.join(cdir, 'args.json'), 'w'))
    info = dict(P["info"])
    nreal = B if nreal is None else nreal
    rng = np.random.default_rng(seed)
    inputs, masked = [], 0
    for b in range(B):
        if b >= nreal:
            inputs += z.pad_block_inputs(form, d, K); continue
        k = K if form != "dense" else max(1, round(0.04 * d))
        blk = z.make_block(d, k, seed=seed * 1000 + b)
        masked += k
        inputs += z.block_inputs(form, K, z.honest_update(blk, S), blk)
    os.makedirs("runs", exist_ok=True)
    wit = f"runs/{P['name']}.wit.json"; pf = f"runs/{P['name']}.proof.json"
    info["witness_s"] = round(z.gen_witness(P, inputs, wit), 3)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, __file__, "child", cdir, wit, pf], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-2000:]); raise SystemExit(1)
    info["prove_s"] = round(json.loads(out.stdout.strip().splitlines()[-1])["prove_s"], 2)
    info["prove_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    ok, vt = z.verify(P, pf); vts = [vt]
    for _ in range(2):
        vts.append(z.verify(P, pf)[1])
    info["verify_ok"] = ok; info["verify_ms"] = round(1000 * min(vts), 1)
    info["proof_raw_bytes"] = z.raw_proof_len(pf); info["proof_json_bytes"] = os.path.getsize(pf)
    info["masked"] = masked
    res = z.residuals(pf, S)
    info["max_abs_residual_x2S"] = float(np.abs(res).max())
    info["prove_ms_per_masked"] = round(1000 * info["prove_s"] / max(masked, 1), 1)
    info["proof_bytes_per_masked"] = round(info["proof_raw_bytes"] / max(masked, 1), 1)
    # registration cost: commit one d-vector (and a d*d matrix for dense)
    t = time.time(); cb = z.commit_bytes(P, list(np.zeros(d) + 0.01), S); info["commit_vec_ms"] = round(1000 * (time.time() - t), 1)
    # check proof commitments = kzg_commit of the inputs
    pc = z.proof_input_commitments(pf, len(inputs))
    info["commitments_match"] = all(pc[i] == z.commit_bytes(P, inputs[i], S) for i in range(min(len(inputs), 12)))
    info["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(info))
    with open("results.jsonl", "a") as f:
        f.write(json.dumps(info) + "\n")

if __name__ == "__main__":
    if sys.argv[1] == "child":
        child_prove(*sys.argv[2:5])
    else:
        a = sys.argv[1:]
        main(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5] == '1', a[6] == '1',
             int(a[7]) if len(a) > 7 else None)
