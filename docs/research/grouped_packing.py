"""Measurement-only experiment: how much would packing G blocks into the SAME circuit inputs save?

The library's circuit (zkapex_flwr/proof/circuit.py) gives every block its own inputs, and ezkl gives
every committed input its own 2^logrows column, so packing blocks as extra inputs costs more per block
(benchmarks/proof_cost.py). Here the G blocks of a group share K+4 wide inputs instead:

    Θ_in, Θ_out (G·d), m (d, one mask pattern for the group), Y (G·K), stripes S_1..S_K (G·d each)
    r = [Θ_out − Θ_in + Σ_j Y[:, j] ⊙ S_j ,  m ⊙ Θ_out]        (per block g: the column-form certificate)

Stripe S_j = [Ĥ_1[:, i_j]; …; Ĥ_G[:, i_j]] is the same local column of every block in the group, so a
registry could commit d stripes per group before the mask is known — but only if the provider's mask
masks the same K local positions in every block of a group (a column-structured mask). Whether such
masks forget and recover as well as free masks is not measured here.

    python docs/research/grouped_packing.py   (prints one JSON line per G)
"""
import json
import os
import resource
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def measure(G: int, d: int = 16, K: int = 2, S: int = 16) -> dict:
    import ezkl
    import torch

    from zkapex_flwr.proof.circuit import srs_file
    from zkapex_flwr.proof.statement import normalized_inverse, quantize

    class Grouped(torch.nn.Module):
        def forward(self, t_in, t_out, m, y, *stripes):
            t_in, t_out, y = t_in.reshape(G, d), t_out.reshape(G, d), y.reshape(G, K)
            acc = t_out - t_in
            for j, s in enumerate(stripes):
                acc = acc + y[:, j:j + 1] * s.reshape(G, d)
            return torch.cat([acc.reshape(1, -1), (m * t_out).reshape(1, -1)], dim=1)

    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(d, size=K, replace=False))
    theta = quantize(rng.standard_normal((G, d)) * 0.05, S)
    g = rng.standard_normal((G, 2 * d, d))
    h = normalized_inverse(np.einsum("gmi,gmj->gij", g, g) / (2 * d) + 0.1 * np.eye(d), S)
    y = np.stack([quantize(np.linalg.solve(h[b][np.ix_(pos, pos)], theta[b, pos]), S) for b in range(G)])
    out = np.stack([quantize(theta[b] - h[b][:, pos] @ y[b], S) for b in range(G)])
    out[:, pos] = 0.0
    m = np.zeros(d)
    m[pos] = 1.0
    inputs = [theta.ravel().tolist(), out.ravel().tolist(), m.tolist(), y.ravel().tolist()] + \
        [h[:, :, p].ravel().tolist() for p in pos]
    with tempfile.TemporaryDirectory() as tmp:
        p = lambda n: os.path.join(tmp, n)  # noqa: E731
        xs = tuple(torch.zeros(1, len(v)) for v in inputs)
        torch.onnx.export(Grouped(), xs, p("net.onnx"), opset_version=17, dynamo=False)
        json.dump({"input_data": inputs}, open(p("in.json"), "w"))
        args = ezkl.PyRunArgs()
        args.input_visibility, args.param_visibility, args.output_visibility = "polycommit", "fixed", "public"
        args.input_scale = args.param_scale = S
        args.scale_rebase_multiplier = 10
        args.ignore_range_check_inputs_outputs = True
        ezkl.gen_settings(p("net.onnx"), p("settings.json"), py_run_args=args)
        ezkl.calibrate_settings(p("in.json"), p("net.onnx"), p("settings.json"), "resources", scales=[S],
                                scale_rebase_multiplier=[10])
        ezkl.compile_circuit(p("net.onnx"), p("net.ezkl"), p("settings.json"))
        logrows = json.load(open(p("settings.json")))["run_args"]["logrows"]
        srs = str(srs_file(logrows))
        t0 = time.perf_counter()
        ezkl.setup(p("net.ezkl"), p("vk.key"), p("pk.key"), srs_path=srs)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ezkl.gen_witness(p("in.json"), p("net.ezkl"), p("w.json"), vk_path=p("vk.key"), srs_path=srs)
        ezkl.prove(p("w.json"), p("net.ezkl"), p("pk.key"), p("proof.json"), srs_path=srs)
        prove_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = ezkl.verify(p("proof.json"), p("settings.json"), p("vk.key"), srs_path=srs)
        verify_ms = 1000 * (time.perf_counter() - t0)
        proof_bytes = len(json.load(open(p("proof.json")))["proof"])
    masked = G * K
    return {"G": G, "d": d, "K": K, "logrows": logrows, "setup_s": round(setup_s, 2), "prove_s": round(prove_s, 3),
            "verify_ms": round(verify_ms, 1), "verified": bool(ok), "proof_bytes": proof_bytes,
            "masked_per_proof": masked, "prove_ms_per_masked_weight": round(1000 * prove_s / masked, 2),
            "proof_bytes_per_masked_weight": round(proof_bytes / masked, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


if __name__ == "__main__":
    for G in [int(a) for a in (sys.argv[1:] or ["1", "16", "64", "256"])]:
        print(json.dumps(measure(G)), flush=True)
