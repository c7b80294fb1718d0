"""Proof cost per circuit shape: setup, prove, verify, memory and bytes, per masked weight.

    python -m benchmarks.proof_cost --out DIR [--quick] [--reps 3]
    zkapex bench proof --out DIR

Each configuration (Fisher block size d, column slots K, step slots per proof B, blocks per wide unit G)
runs in a fresh Python
process, so its peak RSS is its own; ``baseline_rss_mb`` is that process's RSS after importing torch
and ezkl, before any circuit work (the proving increment is the difference). The blocks are random SPD Fisher blocks with exactly K masked
weights per step, so every proof is full: masked weights per proof = K·B. Prove and verify times are
medians over ``--reps`` runs (registration of the blocks' commitments is timed once per block).
Writes ``DIR/proof_cost.csv`` (one row per configuration), ``DIR/proof_cost.png`` and ``DIR/machine.json``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from zkapex_flwr.figures import DPI, paper_style
from zkapex_flwr.machine import describe_machine

# (d, K slots, B steps per proof, G blocks per unit)
FULL = [
    (16, 1, 1, 1),
    (16, 2, 1, 1),
    (16, 4, 1, 1),
    (32, 2, 1, 1),
    (32, 4, 1, 1),
    (64, 2, 1, 1),
    (64, 4, 1, 1),
    (64, 8, 1, 1),
    (16, 2, 4, 1),
    (16, 2, 8, 1),
    (64, 4, 4, 1),
    (16, 2, 1, 16),
    (16, 2, 1, 64),
    (16, 4, 1, 64),
    (16, 2, 1, 256),
]
QUICK = [(16, 1, 1, 1), (16, 2, 1, 1), (16, 2, 2, 1), (16, 2, 1, 4)]
COLUMNS = [
    "form",
    "d",
    "slots",
    "blocks_per_proof",
    "unit_blocks",
    "masked_per_proof",
    "logrows",
    "rows_model",
    "setup_s",
    "register_ms_per_block",
    "prove_s",
    "witness_s",
    "verify_ms",
    "peak_rss_mb",
    "baseline_rss_mb",
    "proof_bytes",
    "bundle_bytes",
    "pk_bytes",
    "vk_bytes",
    "prove_ms_per_masked_weight",
    "proof_bytes_per_masked_weight",
    "reps",
]


def measure(d: int, slots: int, steps: int, reps: int, group: int = 1) -> dict:
    """One configuration, in this process."""
    import resource
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    from zkapex_flwr.proof import CircuitSpec, Verifier, get_circuit, prove_unlearning, register_blocks
    from zkapex_flwr.proof.circuit import FORM
    from zkapex_flwr.proof.statement import normalized_inverse, quantize
    from zkapex_flwr.unlearning import BlockLayout, UnlearningMask

    spec = CircuitSpec(d=d, slots=slots, steps=steps, group=group)
    import ezkl  # noqa: F401  (loaded before the baseline reading)

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    circuit = get_circuit(spec)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    n = steps * group  # every step slot holds a unit of G blocks with K masked weights each: proofs are full
    g = rng.standard_normal((n, 2 * d, d))
    c = np.einsum("nmi,nmj->nij", g, g) / (2 * d) + 0.05 * np.eye(d)
    h_hat = normalized_inverse(c, spec.scale)
    theta = quantize(rng.standard_normal((n, d)) * 0.05, spec.scale)

    class Scope(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(d, n, bias=False)

    layout = BlockLayout.from_model(Scope(), d)
    t0 = time.perf_counter()
    salt_key = secrets.token_bytes(32)  # salted (hiding) commitments, as every client makes them
    registry = register_blocks(circuit, layout.digest(), theta, h_hat, salt_key=salt_key)
    register_ms = 1000 * (time.perf_counter() - t0) / n
    unit_pos = [rng.choice(d, size=slots, replace=False) for _ in range(steps)]  # shared by a unit's blocks
    idx = torch.cat([b * d + torch.as_tensor(unit_pos[b // group]) for b in range(n)])
    mask = UnlearningMask(idx, layout)
    verifier = Verifier(circuit)
    prove, witness, verify = [], [], []
    for _ in range(reps):
        local = mask.local_masks().numpy()
        bundle, _, report = prove_unlearning(
            circuit,
            request_id="bench",
            layout_digest=layout.digest(),
            blocks=np.arange(steps),
            theta_p=theta.reshape(steps, group, d),
            h_hat=h_hat.reshape(steps, group, d, d),
            local_masks=local.reshape(steps, group, d),
            salt_key=salt_key,
        )
        prove.append(report.prove_s)
        witness.append(report.witness_s)
        data = bundle.to_bytes()
        verdict = verifier.verify(data, registry, mask)
        if verdict.reason != "compliant":
            raise RuntimeError(f"honest bundle rejected in the benchmark: {verdict.reason} {verdict.detail}")
        verify.append(verdict.verify_ms)
    masked = slots * steps * group
    prove_s, witness_s = statistics.median(prove), statistics.median(witness)
    return {
        "form": FORM,
        "d": d,
        "slots": slots,
        "blocks_per_proof": steps * group,
        "unit_blocks": group,
        "masked_per_proof": masked,
        "logrows": circuit.logrows,
        "rows_model": spec.rows_model,
        "setup_s": round(circuit.setup_s, 3),
        "register_ms_per_block": round(register_ms, 2),
        "prove_s": round(prove_s, 4),
        "witness_s": round(witness_s, 4),
        "verify_ms": round(statistics.median(verify), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "baseline_rss_mb": round(baseline_rss, 1),
        "proof_bytes": report.proof_bytes,
        "bundle_bytes": len(data),
        "pk_bytes": circuit.pk_bytes,
        "vk_bytes": circuit.vk_bytes,
        "prove_ms_per_masked_weight": round(1000 * (prove_s + witness_s) / masked, 2),
        "proof_bytes_per_masked_weight": round(report.proof_bytes / masked, 1),
        "reps": reps,
        "build_s_this_run": round(build_s, 2),
    }


def plot(rows: list[dict], path: Path | None = None):
    """Cost per masked weight against blocks per proof (a numeric, log2 axis): separate inputs per block vs
    wide units, one colour per (d, K). Writes ``path`` when given; returns the Figure."""
    import matplotlib
    from matplotlib.figure import Figure

    with paper_style():
        fig = Figure(figsize=(10, 4.6))
        axes = fig.subplots(1, 2)
        series: dict[tuple, list[dict]] = {}
        for r in rows:
            base = r["blocks_per_proof"] == 1
            if r["unit_blocks"] == 1:
                series.setdefault(("separate inputs", r["d"], r["slots"]), []).append(r)
            if r["unit_blocks"] > 1 or base:
                series.setdefault(("wide units", r["d"], r["slots"]), []).append(r)
        shapes = sorted({(d, k) for _, d, k in series})
        colour = {s: matplotlib.colormaps["tab10"](i % 10) for i, s in enumerate(shapes)}
        for ax, key, label, title in (
            (axes[0], "prove_ms_per_masked_weight", "prove time per masked weight (ms)", "Prove time"),
            (axes[1], "proof_bytes_per_masked_weight", "proof size per masked weight (bytes)", "Proof size"),
        ):
            for (kind, d, k), sel in sorted(series.items()):
                if len(sel) < 2 and kind == "wide units":
                    continue
                sel = sorted(sel, key=lambda r: r["blocks_per_proof"])
                ax.plot(
                    [r["blocks_per_proof"] for r in sel],
                    [r[key] for r in sel],
                    "o-" if kind == "wide units" else "s--",
                    color=colour[(d, k)],
                    markersize=4,
                    label=f"{kind}, d={d}, K={k}",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("blocks per proof (count)")
            ax.set_ylabel(label)
            ax.set_title(title)
            ax.grid(alpha=0.3, which="major")
        axes[0].axhline(6.5, color="black", ls="--", lw=0.8, label="paper (6.5 ms)")
        axes[0].axhline(1.0, color="black", ls=":", lw=0.8, label="target (1 ms)")
        axes[1].axhline(360, color="grey", ls="--", lw=0.8, label="paper (0.36 KB)")
        axes[1].axhline(50, color="grey", ls=":", lw=0.8, label="target (0.05 KB)")
        handles, labels = axes[0].get_legend_handles_labels()
        more = [(h, lab) for h, lab in zip(*axes[1].get_legend_handles_labels()) if lab not in labels]
        fig.legend(
            handles + [h for h, _ in more],
            labels + [lab for _, lab in more],
            loc="lower center",
            ncol=4,
            bbox_to_anchor=(0.5, 0.0),
        )
        fig.suptitle("ZK-APEX column-form proof cost (EZKL, full proofs, this machine)")
        fig.tight_layout(rect=(0, 0.2, 1, 1))
        if path is not None:
            fig.savefig(path, dpi=DPI)
    return fig


def replot(folder: Path) -> Path:
    """Re-render ``proof_cost.png`` from the ``proof_cost.csv`` in ``folder`` (no proving)."""
    import pandas as pd

    folder = Path(folder)
    plot(pd.read_csv(folder / "proof_cost.csv").to_dict(orient="records"), folder / "proof_cost.png")
    return folder / "proof_cost.png"


def run(out: Path, quick: bool = False, reps: int = 3, configs=None) -> list[dict]:
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    configs = configs or (QUICK if quick else FULL)
    rows = []
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("proof cost", total=len(configs))
        for d, k, b, g in configs:
            progress.update(task, description=f"d={d} K={k} B={b} G={g}")
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.proof_cost", "--one", f"{d},{k},{b},{g}", "--reps", str(reps)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"configuration d={d} K={k} B={b} G={g} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            progress.advance(task)
    frame = pd.DataFrame(rows)[COLUMNS]
    frame.to_csv(out / "proof_cost.csv", index=False)
    (out / "machine.json").write_text(json.dumps(describe_machine(), indent=2))
    plot(rows, out / "proof_cost.png")
    table = Table(title="proof cost (medians)")
    shown = (
        "d",
        "slots",
        "blocks_per_proof",
        "unit_blocks",
        "logrows",
        "prove_s",
        "verify_ms",
        "peak_rss_mb",
        "baseline_rss_mb",
        "proof_bytes",
        "prove_ms_per_masked_weight",
        "proof_bytes_per_masked_weight",
    )
    for col in shown:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(str(r[c]) for c in shown))
    Console().print(table)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/proof"))
    parser.add_argument("--quick", action="store_true", help="four small shapes, one a wide unit (smoke test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        d, k, b, g = (int(v) for v in args.one.split(","))
        print(json.dumps(measure(d, k, b, args.reps, g)))
        return 0
    run(args.out, args.quick, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
