"""Client side: prove a Group-OBS update block by block and pack a :class:`ProofBundle`."""

from __future__ import annotations

import json
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import Proof, ProofBundle, Slot, int_to_felt
from .circuit import Circuit
from .statement import Binding, honest_unit_steps


@dataclass
class ProveReport:
    blocks: int
    steps: int
    proofs: int
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


def _zero_inputs(spec) -> list[list[float]]:
    return [[0.0] * shape[1] for shape in spec.input_shapes()[: spec.inputs_per_step]]  # zero values, zero salt


def prove_slots(
    circuit: Circuit,
    slots: list[tuple[Slot, object] | None],
    workdir: Path,
    binding: Binding,
    salt_key: bytes | None = None,
) -> tuple[Proof, float, float]:
    """Witness + proof of one proof: ``slots`` holds up to B (slot, Step) pairs; missing ones are padding.

    The proof is bound to ``binding``; its public binding values are not kept in the :class:`Proof` (the
    verifier supplies its own). ``salt_key``: the client's commitment salt key (None: unsalted)."""
    import ezkl

    spec = circuit.spec
    if len(slots) > spec.steps:
        raise ValueError(f"{len(slots)} steps do not fit a proof of {spec.steps} slots")
    slots = list(slots) + [None] * (spec.steps - len(slots))
    inputs: list[list[float]] = []
    for entry in slots:
        inputs += _zero_inputs(spec) if entry is None else entry[1].inputs(spec, salt_key)
    inputs.append([float(v) for v in binding.values()])
    data, witness, proof = workdir / "input.json", workdir / "witness.json", workdir / "proof.json"
    data.write_text(json.dumps({"input_data": inputs}))
    t0 = time.perf_counter()
    ezkl.gen_witness(str(data), circuit.compiled, str(witness), vk_path=circuit.vk, srs_path=circuit.srs)
    t1 = time.perf_counter()
    ezkl.prove(str(witness), circuit.compiled, circuit.pk, str(proof), srs_path=circuit.srs)
    t2 = time.perf_counter()
    pj = json.loads(proof.read_text())
    public = [bytes.fromhex(h) for h in pj["instances"][0]]
    if public[spec.num_residuals :] != binding_instances(circuit, binding):
        raise RuntimeError(
            f"circuit {spec.name()}: the proof's public binding values are not the binding's (stale circuit keys?)"
        )
    out = Proof([None if e is None else e[0] for e in slots], bytes(pj["proof"]), public[: spec.num_residuals])
    return out, t1 - t0, t2 - t1


def binding_instances(circuit: Circuit, binding: Binding) -> list[bytes]:
    """The public values a proof bound to ``binding`` carries after its residuals: 2b at scale S."""
    return [int_to_felt(2 * v << circuit.spec.scale) for v in binding.values()]


def prove_chains(
    circuit: Circuit,
    chains: dict[int, list],
    workdir: Path,
    binding: Binding,
    progress=None,
    salt_key: bytes | None = None,
) -> tuple[list[Proof], float, float]:
    """Prove every block's step chain (honest or not: the circuit decides), B steps per proof, bound to
    ``binding``."""
    entries = [
        (Slot(int(b), i, tuple(int(c) for c in st.columns)), st)
        for b, chain in chains.items()
        for i, st in enumerate(chain)
    ]
    steps = circuit.spec.steps
    proofs, witness_s, prove_s = [], 0.0, 0.0
    task = progress.add_task("prove", total=len(entries)) if progress is not None else None
    for start in range(0, len(entries), steps):
        pr, ws, ps = prove_slots(circuit, entries[start : start + steps], workdir, binding, salt_key)
        proofs.append(pr)
        witness_s += ws
        prove_s += ps
        if task is not None:
            progress.advance(task, len(entries[start : start + steps]))
    if task is not None:
        progress.remove_task(task)
    return proofs, witness_s, prove_s


def prove_unlearning(
    circuit: Circuit,
    *,
    request_id: str,
    layout_digest: str,
    blocks: np.ndarray,
    theta_p: np.ndarray,
    h_hat: np.ndarray,
    local_masks: np.ndarray,
    binding: Binding | None = None,
    salt_key: bytes | None = None,
    progress=None,
) -> tuple[ProofBundle, np.ndarray, ProveReport]:
    """Prove the update of every touched proof unit (G consecutive blocks; G = 1: one block).

    ``blocks`` (T,) touched unit ids; ``theta_p`` (T, G, d) personalized weights (or (T, d) when G = 1);
    ``h_hat`` (T, G, d, d) the quantised normalised inverse Fisher blocks that were registered;
    ``local_masks`` (T, G, d) bool. Returns the bundle, the quantised unlearned weights θu (same shape as
    ``theta_p``) that the proof commits to (the client writes exactly these into its model) and a
    :class:`ProveReport`. ``binding`` (default: the request id alone) is what every proof answers;
    ``salt_key`` is the key the registry's commitments were salted with.
    """
    binding = binding or Binding(request_id)
    if binding.request_id != request_id:
        raise ValueError(f"the binding names request {binding.request_id!r}, the bundle answers {request_id!r}")
    spec = circuit.spec
    shape = theta_p.shape
    t_units = len(blocks)
    theta_p = theta_p.reshape(t_units, spec.group, spec.d)
    h_hat = h_hat.reshape(t_units, spec.group, spec.d, spec.d)
    local_masks = local_masks.reshape(t_units, spec.group, spec.d)
    theta_u = np.zeros_like(theta_p, dtype=np.float64)
    chains = {}
    for t in range(t_units):
        chains[int(blocks[t])] = honest_unit_steps(theta_p[t], h_hat[t], local_masks[t], spec)
        theta_u[t] = chains[int(blocks[t])][-1].theta_out
    with tempfile.TemporaryDirectory(prefix="zkapex-prove-") as tmp:
        proofs, witness_s, prove_s = prove_chains(circuit, chains, Path(tmp), binding, progress, salt_key)
    bundle = ProofBundle(
        circuit.circuit_id,
        layout_digest,
        request_id,
        proofs,
        meta={"prove_s": round(prove_s, 4), "witness_s": round(witness_s, 4)},
    )
    theta_u = theta_u.reshape(shape)
    report = ProveReport(
        blocks=t_units,
        steps=sum(len(c) for c in chains.values()),
        proofs=len(proofs),
        masked_weights=int(local_masks.sum()),
        witness_s=witness_s,
        prove_s=prove_s,
        proof_bytes=bundle.proof_bytes,
        bundle_bytes=len(bundle.to_bytes()),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return bundle, theta_u, report
