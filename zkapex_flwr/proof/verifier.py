"""Provider side: one verdict per bundle, with the reason codes of PROTOCOL.md §4.

The verifier trusts nothing the client reports. It derives everything from the bundle's proofs, the
client's registry entry, the request's mask and its own circuit keys, in this order:

1. parse → ``malformed``;  circuit id → ``wrong-circuit``;  layout → ``wrong-mask``;
2. coverage: every touched block proven exactly once → ``incomplete``; no extra block → ``wrong-mask``;
3. per block: the steps' columns are exactly the block's masked indices, each once → ``wrong-mask``;
4. every step's SNARK (``ezkl.verify``) → ``invalid-proof``;
5. commitments inside the proofs: first θ_in = registered θp → ``stale-model``; links θ_out = next θ_in
   → ``malformed``; slot columns = registered Ĥ columns (zero commitment in unused slots) →
   ``fisher-mismatch``; mask input = commitment of the block's mask on the last step, zero before →
   ``wrong-mask``;
6. public residuals, decoded as exact integers: m ⊙ θu exactly 0 and |θ_out − θ_in + Ĥ y| within the
   tolerance the verifier derives from S, k and the step count → ``kkt-violation``;
otherwise ``compliant``, with the new θu commitments for the registry.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import MalformedBundle, ProofBundle
from .circuit import Circuit
from .commitments import COMMITMENT_BYTES, BlockCommitments, commit_vectors, zero_commitment
from .statement import residual_tolerance

REASONS = ("compliant", "malformed", "incomplete", "invalid-proof", "stale-model", "fisher-mismatch", "wrong-mask",
           "kkt-violation", "wrong-circuit", "no-response")
FIELD_MODULUS = 21888242871839275222246405745257275088548364400416034343698204186575808495617


@dataclass
class Verdict:
    reason: str
    detail: str = ""
    verify_ms: float = 0.0
    steps_verified: int = 0
    new_theta: dict[int, bytes] = field(default_factory=dict)

    @property
    def compliant(self) -> bool:
        return self.reason == "compliant"


def felt_to_int(felt: bytes) -> int:
    v = int.from_bytes(felt, "little")
    return v - FIELD_MODULUS if v > FIELD_MODULUS // 2 else v


def _snark_ok(circuit: Circuit, proof: bytes, instances: list[bytes], tmp: Path) -> bool:
    import ezkl

    path = tmp / "proof.json"
    path.write_text(json.dumps({"instances": [[f.hex() for f in instances]], "proof": list(proof)}))
    try:
        return bool(ezkl.verify(str(path), circuit.settings, circuit.vk, srs_path=circuit.srs))
    except BaseException as err:  # ezkl raises RuntimeError, or a pyo3 PanicException (a BaseException)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return False


class Verifier:
    """Verifies bundles against one circuit; caches mask commitments by pattern."""

    def __init__(self, circuit: Circuit):
        self.circuit = circuit
        self._mask_commitments: dict[bytes, bytes] = {}

    def _mask_commitment(self, local_mask: np.ndarray) -> bytes:
        key = np.packbits(local_mask).tobytes()
        if key not in self._mask_commitments:
            self._mask_commitments[key] = commit_vectors(self.circuit, [local_mask.astype(float)])[0]
        return self._mask_commitments[key]

    def verify(self, data: bytes, registry: BlockCommitments, mask) -> Verdict:
        """Verdict on bundle bytes ``data`` for a client with ``registry`` entry and request ``mask``."""
        t0 = time.perf_counter()
        verdict = self._verify(data, registry, mask)
        verdict.verify_ms = 1000.0 * (time.perf_counter() - t0)
        return verdict

    def _verify(self, data: bytes, registry: BlockCommitments, mask) -> Verdict:
        circ, spec = self.circuit, self.circuit.spec
        try:
            bundle = ProofBundle.from_bytes(data)
        except MalformedBundle as err:
            return Verdict("malformed", str(err))
        if bundle.circuit_id != circ.circuit_id:
            return Verdict("wrong-circuit", f"bundle proves circuit {bundle.circuit_id[:12]}…, expected "
                                            f"{circ.circuit_id[:12]}…")
        if registry.circuit_id != circ.circuit_id:
            return Verdict("wrong-circuit", "the client's registry entry was made for another circuit")
        layout = mask.layout
        if bundle.layout_digest != layout.digest() or registry.layout_digest != layout.digest():
            return Verdict("wrong-mask", "bundle or registry is for another scope/block layout")
        if layout.block_size != spec.d:
            return Verdict("wrong-circuit", f"circuit block size {spec.d} ≠ layout block size {layout.block_size}")
        touched = [int(b) for b in mask.touched_blocks()]
        seen: dict[int, int] = {}
        for bp in bundle.blocks:
            seen[bp.block] = seen.get(bp.block, 0) + 1
        twice = sorted(b for b, n in seen.items() if n > 1)
        if twice:
            return Verdict("incomplete", f"blocks proven more than once: {twice[:10]}")
        missing = sorted(set(touched) - set(seen))
        if missing:
            return Verdict("incomplete", f"{len(missing)} touched blocks not proven, e.g. {missing[:10]}")
        extra = sorted(set(seen) - set(touched))
        if extra:
            return Verdict("wrong-mask", f"blocks outside the mask proven: {extra[:10]}")
        local = mask.local_masks(mask.touched_blocks()).numpy()
        local_of = {b: local[i] for i, b in enumerate(touched)}
        n_inputs = spec.num_inputs
        for bp in bundle.blocks:
            want = np.flatnonzero(local_of[bp.block])
            cols = [c for st in bp.steps for c in st.columns]
            if sorted(cols) != want.tolist():
                return Verdict("wrong-mask", f"block {bp.block}: proven columns {sorted(cols)[:8]} ≠ masked "
                                             f"{want.tolist()[:8]}")
            for st in bp.steps:
                if len(st.columns) > spec.slots:
                    return Verdict("malformed", f"block {bp.block}: a step uses {len(st.columns)} columns, the circuit "
                                                f"has {spec.slots} slots")
                if len(st.instances) != 2 * spec.d:
                    return Verdict("malformed", f"block {bp.block}: {len(st.instances)} public values, expected {2 * spec.d}")
                if len(st.proof) < n_inputs * COMMITMENT_BYTES:
                    return Verdict("malformed", f"block {bp.block}: proof of {len(st.proof)} bytes is too short")
        steps = 0
        with tempfile.TemporaryDirectory(prefix="zkapex-verify-") as tmp:
            for bp in bundle.blocks:
                for st in bp.steps:
                    if not _snark_ok(circ, st.proof, st.instances, Path(tmp)):
                        return Verdict("invalid-proof", f"block {bp.block}: the SNARK does not verify", steps_verified=steps)
                    steps += 1
        zero = zero_commitment(circ)
        one = 2 ** (2 * spec.scale)
        new_theta: dict[int, bytes] = {}
        for bp in bundle.blocks:
            b, m = bp.block, local_of[bp.block]
            k = int(m.sum())
            tol = residual_tolerance(spec.scale, k, len(bp.steps))
            prev_out = None
            for si, st in enumerate(bp.steps):
                com = [st.proof[COMMITMENT_BYTES * i:COMMITMENT_BYTES * (i + 1)] for i in range(n_inputs)]
                theta_in, theta_out, mask_c, cols_c = com[0], com[1], com[2], com[4:]
                if si == 0 and theta_in != registry.theta_of(b):
                    return Verdict("stale-model", f"block {b}: θp does not open the registered commitment")
                if si > 0 and theta_in != prev_out:
                    return Verdict("malformed", f"block {b}: step {si} does not start where step {si - 1} ended")
                for j in range(spec.slots):
                    expect = registry.column_of(b, st.columns[j]) if j < len(st.columns) else zero
                    if cols_c[j] != expect:
                        what = f"column {st.columns[j]}" if j < len(st.columns) else f"padding slot {j}"
                        return Verdict("fisher-mismatch" if j < len(st.columns) else "malformed",
                                       f"block {b}: {what} is not the registered Fisher column")
                last = si == len(bp.steps) - 1
                if mask_c != (self._mask_commitment(m) if last else zero):
                    return Verdict("wrong-mask", f"block {b}: the proof's mask input is not the request's mask")
                r = [felt_to_int(f) for f in st.instances]
                if any(r[spec.d:]):
                    return Verdict("kkt-violation", f"block {b}: masked weights are not exactly zero")
                worst = max(abs(v) for v in r[:spec.d]) / one
                if worst > tol:
                    return Verdict("kkt-violation", f"block {b}: residual {worst:.3g} exceeds tolerance {tol:.3g}")
                prev_out = theta_out
            new_theta[b] = prev_out
        return Verdict("compliant", "", steps_verified=steps, new_theta=new_theta)
