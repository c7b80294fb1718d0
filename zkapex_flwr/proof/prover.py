"""Client side: prove a Group-OBS update block by block and pack a :class:`ProofBundle`."""
from __future__ import annotations

import json
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import BlockProof, ProofBundle, StepProof
from .circuit import Circuit
from .statement import honest_block_steps


@dataclass
class ProveReport:
    blocks: int
    steps: int
    masked_weights: int
    witness_s: float
    prove_s: float
    proof_bytes: int
    bundle_bytes: int
    peak_rss_mb: float  # the proving process's peak resident memory so far (ru_maxrss)

    @property
    def prove_ms_per_masked_weight(self) -> float:
        return 1000.0 * (self.witness_s + self.prove_s) / max(self.masked_weights, 1)

    @property
    def proof_bytes_per_masked_weight(self) -> float:
        return self.proof_bytes / max(self.masked_weights, 1)


def prove_step(circuit: Circuit, inputs: list[list[float]], workdir: Path) -> tuple[StepProof, float, float]:
    """Witness + proof of one step. Returns (step without columns, witness seconds, prove seconds)."""
    import ezkl

    data, witness, proof = workdir / "input.json", workdir / "witness.json", workdir / "proof.json"
    data.write_text(json.dumps({"input_data": inputs}))
    t0 = time.perf_counter()
    ezkl.gen_witness(str(data), circuit.compiled, str(witness), vk_path=circuit.vk, srs_path=circuit.srs)
    t1 = time.perf_counter()
    ezkl.prove(str(witness), circuit.compiled, circuit.pk, str(proof), srs_path=circuit.srs)
    t2 = time.perf_counter()
    pj = json.loads(proof.read_text())
    step = StepProof([], bytes(pj["proof"]), [bytes.fromhex(h) for h in pj["instances"][0]])
    return step, t1 - t0, t2 - t1


def prove_block(circuit: Circuit, block: int, steps, workdir: Path) -> tuple[BlockProof, float, float]:
    """Prove the given :class:`~.statement.Step` chain of one block (honest or not: the circuit decides)."""
    proofs, witness_s, prove_s = [], 0.0, 0.0
    for st in steps:
        sp, ws, ps = prove_step(circuit, st.inputs(circuit.spec), workdir)
        sp.columns = [int(c) for c in st.columns]
        proofs.append(sp)
        witness_s += ws
        prove_s += ps
    return BlockProof(int(block), proofs), witness_s, prove_s


def prove_unlearning(circuit: Circuit, *, request_id: str, layout_digest: str, blocks: np.ndarray,
                     theta_p: np.ndarray, h_hat: np.ndarray, local_masks: np.ndarray,
                     progress=None) -> tuple[ProofBundle, np.ndarray, ProveReport]:
    """Prove the update of every touched block.

    ``blocks`` (T,) touched block ids; ``theta_p`` (T, d) personalized weights; ``h_hat`` (T, d, d) the
    quantised normalised inverse Fisher blocks that were registered; ``local_masks`` (T, d) bool.
    Returns the bundle, the quantised unlearned weights θu (T, d) that the proof commits to (the client
    writes exactly these into its model) and a :class:`ProveReport`.
    """
    spec = circuit.spec
    t_blocks = len(blocks)
    if theta_p.shape != (t_blocks, spec.d) or h_hat.shape != (t_blocks, spec.d, spec.d) or \
            local_masks.shape != (t_blocks, spec.d):
        raise ValueError(f"prove_unlearning: shapes theta {theta_p.shape}, H {h_hat.shape}, mask "
                         f"{local_masks.shape} do not match {t_blocks} blocks of d={spec.d}")
    theta_u = np.zeros_like(theta_p, dtype=np.float64)
    out_blocks: list[BlockProof] = []
    witness_s = prove_s = 0.0
    task = progress.add_task("prove blocks", total=t_blocks) if progress is not None else None
    with tempfile.TemporaryDirectory(prefix="zkapex-prove-") as tmp:
        for t in range(t_blocks):
            steps = honest_block_steps(theta_p[t], h_hat[t], local_masks[t], spec, h_is_fisher=False)
            block_proof, ws, ps = prove_block(circuit, int(blocks[t]), steps, Path(tmp))
            witness_s += ws
            prove_s += ps
            theta_u[t] = steps[-1].theta_out
            out_blocks.append(block_proof)
            if task is not None:
                progress.advance(task)
    if task is not None:
        progress.remove_task(task)
    bundle = ProofBundle(circuit.circuit_id, layout_digest, request_id, out_blocks,
                         meta={"prove_s": round(prove_s, 4), "witness_s": round(witness_s, 4)})
    report = ProveReport(blocks=t_blocks, steps=bundle.num_steps, masked_weights=int(local_masks.sum()),
                         witness_s=witness_s, prove_s=prove_s, proof_bytes=bundle.proof_bytes,
                         bundle_bytes=len(bundle.to_bytes()),
                         peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return bundle, theta_u, report
