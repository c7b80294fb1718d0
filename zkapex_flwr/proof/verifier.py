"""Provider side: one verdict per bundle, with the reason codes of docs/protocol.md §4.

The verifier trusts nothing the client reports. It derives everything from the bundle's proofs, the
client's registry entry, the request's mask and its own circuit keys, in this order:

1. the header, then what it claims: a circuit id of the right form and in the provider's menu, the
   request's id → ``malformed``;  another circuit of the menu → ``wrong-circuit`` (judged before any
   proof is decoded, so another circuit's sizes never hide its id); then the proofs, decoded with this
   circuit's sizes (each proof exactly as long as the circuit's proofs, blocks and columns inside the
   layout) → ``malformed``;  layout → ``wrong-mask``;
2. coverage: every touched block's chain of steps 0…G−1 proven exactly once → ``incomplete``; no
   extra block → ``wrong-mask``;
3. per unit: the steps' columns are exactly the mask's canonical steps — the unit's masked positions
   in order, K per step, so the chain has ⌈k_u/K⌉ steps — → ``wrong-mask`` (a prefix of them whose
   last step carries no mask → ``incomplete``);
4. every proof's SNARK (``ezkl.verify``), with the public binding values the verifier derives from the
   round's request, nonce and node (:class:`Binding`) → ``invalid-proof``: a proof made for another
   request, round or node does not verify;
5. commitments inside the proofs: padding slots commit to zero in every input → ``malformed``; first
   θ_in = registered θp → ``stale-model``; links θ_out = next θ_in → ``malformed``; slot columns =
   registered Ĥ columns (zero commitment in unused column slots) → ``fisher-mismatch``; mask input =
   commitment of the block's mask on the last step, zero before → ``wrong-mask``; with G > 1 each step's
   selector = commitment of which block masks which of its columns → ``wrong-mask``;
6. public residuals, decoded as exact integers: m ⊙ θu exactly 0 and |θ_out − θ_in + Ĥ y| within the
   tolerance the verifier derives from S, k and the mask's step count → ``kkt-violation``;
otherwise ``compliant``, with the new θu commitments for the registry. "Block" in verdict messages is
the proof unit: G consecutive Fisher blocks proven together (G = 1 by default: one block).

In :class:`Verifier` each check is one method, run in this order, and the first that fails gives the
verdict: ``_check_header``, ``_check_decoding``, ``_check_layout`` and ``_check_slots`` (1),
``_check_coverage`` (2), ``_check_mask_steps`` (3), ``_check_no_empty_proof`` and ``_check_snarks`` (4),
``_check_padding`` then ``_check_chains`` (5 and 6, step by step: ``_check_step_commitments``, then
``_check_step_residuals``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..unlearning import BlockLayout
from .bundle import BundleHeader, MalformedBundle, Proof, ProofBundle, circuit_id_problem, felt_to_int, short_repr
from .circuit import Circuit
from .commitments import COMMITMENT_BYTES, BlockCommitments, commit_vectors, zero_commitment
from .prover import binding_instances
from .statement import Binding, proof_units, residual_tolerance, selector_values, step_selector, unit_columns

# the reason codes a verdict may carry: zkapex_flwr.protocol.REASONS


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


def _snark_ok(circuit: Circuit, proof: bytes, instances: list[bytes], tmp: Path) -> bool:
    """Whether ``proof`` verifies for exactly these public values (residuals, then the binding)."""
    import ezkl

    path = tmp / "proof.json"
    path.write_text(json.dumps({"instances": [[f.hex() for f in instances]], "proof": list(proof)}))
    try:
        return bool(ezkl.verify(str(path), circuit.settings, circuit.vk, srs_path=circuit.srs))
    except BaseException as err:  # ezkl raises RuntimeError, or a pyo3 PanicException (a BaseException)
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        return False


_PROOF_BYTES: dict[str, int] = {}


def proof_length(circuit: Circuit) -> int:
    """The length of every proof of ``circuit``.

    A Halo2 proof is the transcript of a fixed constraint system, so all proofs of a circuit have the
    same length whatever they prove (checked on honest and padding proofs of several shapes). It is
    measured once by proving the all-padding statement (true for every circuit) and cached next to the
    circuit's keys.
    """
    if circuit.circuit_id in _PROOF_BYTES:
        return _PROOF_BYTES[circuit.circuit_id]
    path = Path(circuit.directory) / "proof_bytes.json"
    try:
        info = json.loads(path.read_text())
        if info.get("circuit_id") == circuit.circuit_id and isinstance(info.get("proof_bytes"), int):
            _PROOF_BYTES[circuit.circuit_id] = info["proof_bytes"]
            return info["proof_bytes"]
    except (OSError, ValueError, AttributeError):
        pass
    from .prover import prove_slots

    with tempfile.TemporaryDirectory(prefix="zkapex-proof-length-") as tmp:
        n = len(prove_slots(circuit, [], Path(tmp), Binding("proof-length"))[0].proof)
    _PROOF_BYTES[circuit.circuit_id] = n
    try:
        tmp_path = path.with_suffix(f".{os.getpid()}.tmp")
        tmp_path.write_text(json.dumps({"circuit_id": circuit.circuit_id, "proof_bytes": n}))
        tmp_path.replace(path)
    except OSError:  # a read-only key directory: measured again by the next process
        pass
    return n


class Verifier:
    """Verifies bundles against one circuit; caches mask commitments by pattern."""

    def __init__(self, circuit: Circuit):
        self.circuit = circuit
        self._mask_commitments: dict[bytes, bytes] = {}
        self._selector_commitments: dict[bytes, bytes] = {}
        self._proof_bytes: int | None = None

    @property
    def proof_bytes(self) -> int:
        """The length of every proof of this verifier's circuit."""
        if self._proof_bytes is None:
            self._proof_bytes = proof_length(self.circuit)
        return self._proof_bytes

    def _mask_commitment(self, local_mask: np.ndarray) -> bytes:
        key = np.packbits(local_mask.reshape(-1)).tobytes()
        if key not in self._mask_commitments:
            self._mask_commitments[key] = commit_vectors(self.circuit, [local_mask.reshape(-1).astype(float)])[0]
        return self._mask_commitments[key]

    def _selector_commitment(self, selector: np.ndarray) -> bytes:
        values = selector_values(selector, self.circuit.spec)
        key = np.packbits(values.astype(bool)).tobytes()
        if key not in self._selector_commitments:
            self._selector_commitments[key] = commit_vectors(self.circuit, [values])[0]
        return self._selector_commitments[key]

    def verify(
        self,
        data: bytes,
        registry: BlockCommitments,
        mask,
        *,
        menu=None,
        request_id: str | None = None,
        binding: Binding | None = None,
    ) -> Verdict:
        """Verdict on bundle bytes ``data`` for a client with ``registry`` entry and request ``mask``.

        ``menu``: the circuit ids the provider offers. A bundle for an id outside it (or for no id at all)
        is ``malformed``; one for another circuit of the menu is ``wrong-circuit``. Without a menu every
        well-formed id other than this verifier's is ``wrong-circuit``. ``request_id``: the request the
        bundle must answer (a bundle for another request is ``malformed``). ``binding``: the request,
        round nonce and node the proofs must be bound to (the provider always gives it; without it, the
        bundle's request id alone, as a local prover binds). Never raises on the bytes.
        """
        if binding is not None and request_id is not None and binding.request_id != request_id:
            raise ValueError(f"the binding names request {binding.request_id!r}, the verdict is for {request_id!r}")
        t0 = time.perf_counter()
        verdict = self._verify(
            data, registry, mask, menu, request_id if binding is None else binding.request_id, binding
        )
        verdict.verify_ms = 1000.0 * (time.perf_counter() - t0)
        return verdict

    def _verify(self, data: bytes, registry: BlockCommitments, mask, menu, request_id, binding) -> Verdict:
        """The checks of the module docstring, in its order; the first that fails gives the verdict."""
        touched, unit_masks = proof_units(mask, self.circuit.spec)
        a = _Audit(data, registry, mask.layout, menu, request_id, binding, unit_masks, [int(u) for u in touched])
        for check in (
            self._check_header,
            self._check_decoding,
            self._check_layout,
            self._check_slots,
            self._check_coverage,
            self._check_mask_steps,
            self._check_no_empty_proof,
            self._check_snarks,
            self._check_padding,
            self._check_chains,
        ):
            verdict = check(a)
            if verdict is not None:
                return verdict
        return Verdict("compliant", "", steps_verified=len(a.bundle.proofs), new_theta=a.new_theta)

    def _commitment(self, proof: Proof, slot: int, index: int) -> bytes:
        """The commitment of input ``index`` of step slot ``slot`` inside ``proof``'s raw bytes."""
        off = COMMITMENT_BYTES * (slot * self.circuit.spec.inputs_per_step + index)
        return proof.proof[off : off + COMMITMENT_BYTES]

    def _check_header(self, a: _Audit) -> Verdict | None:
        """What the header claims (its form, circuit and request), before any proof is decoded."""
        circ = self.circuit
        try:
            head = ProofBundle.parse_header(a.data)
        except MalformedBundle as err:
            return Verdict("malformed", str(err))
        problem = circuit_id_problem(head.circuit_id)
        if problem:
            return Verdict("malformed", f"bundle {problem}")
        if head.circuit_id != circ.circuit_id:
            if a.menu is not None and head.circuit_id not in a.menu:
                return Verdict(
                    "malformed", f"bundle proves circuit {head.circuit_id}, which is not in the provider's circuit menu"
                )
            return Verdict(
                "wrong-circuit", f"bundle proves circuit {head.circuit_id[:12]}…, expected {circ.circuit_id[:12]}…"
            )
        if a.request_id is not None and head.request_id != a.request_id:
            return Verdict(
                "malformed", f"bundle answers request {short_repr(head.request_id)}, expected {a.request_id!r}"
            )
        a.head = head
        return None

    def _check_decoding(self, a: _Audit) -> Verdict | None:
        """The proofs, decoded with this circuit's sizes and no more proofs than the mask can need."""
        spec = self.circuit.spec
        # a unit's chain has at most ceil(d / K) steps (each proves ≥ 1 of its ≤ d masked columns)
        max_proofs = len(a.touched) * -(-spec.d // spec.slots)
        try:
            a.bundle = ProofBundle.from_header(a.head, residuals=spec.unit_size * spec.steps, max_proofs=max_proofs)
        except MalformedBundle as err:
            return Verdict("malformed", str(err))
        return None

    def _check_layout(self, a: _Audit) -> Verdict | None:
        """Registry entry, bundle and mask are for this circuit and layout, and the layout fits the circuit."""
        circ, spec, layout = self.circuit, self.circuit.spec, a.layout
        if a.registry.circuit_id != circ.circuit_id:
            return Verdict("wrong-circuit", "the client's registry entry was made for another circuit")
        if a.bundle.layout_digest != layout.digest() or a.registry.layout_digest != layout.digest():
            return Verdict("wrong-mask", "bundle or registry is for another scope/block layout")
        if layout.block_size != spec.d or layout.n_blocks % spec.group:
            return Verdict(
                "wrong-circuit",
                f"circuit units of {spec.group} blocks of {spec.d} do not fit the layout "
                f"({layout.n_blocks} blocks of {layout.block_size})",
            )
        try:
            a.registry.check_shape(spec, a.n_units)
        except ValueError as err:
            return Verdict("malformed", f"the client's registry entry: {err}")
        return None

    def _check_slots(self, a: _Audit) -> Verdict | None:
        """Every proof has the circuit's sizes; every step slot names a unit of the layout and columns of a
        block, and no (unit, step) is proven twice. Records where each step is proven."""
        circ, spec = self.circuit, self.circuit.spec
        for pi, pr in enumerate(a.bundle.proofs):
            if len(pr.slots) != spec.steps:
                return Verdict("malformed", f"proof {pi} has {len(pr.slots)} slots, the circuit has {spec.steps}")
            if len(pr.instances) != spec.num_residuals:
                return Verdict(
                    "malformed", f"proof {pi} has {len(pr.instances)} public values, expected {spec.num_residuals}"
                )
            if len(pr.proof) != self.proof_bytes:
                return Verdict(
                    "malformed",
                    f"proof {pi} has {len(pr.proof)} bytes, circuit {circ.circuit_id[:12]}… "
                    f"proves in {self.proof_bytes}",
                )
            for si, sl in enumerate(pr.slots):
                if sl is None:
                    continue
                if sl.block >= a.n_units:
                    return Verdict(
                        "malformed",
                        f"proof {pi} slot {si}: block {short_repr(sl.block)} is outside the "
                        f"layout's {a.n_units} proof units",
                    )
                if len(sl.columns) > spec.slots:
                    return Verdict(
                        "malformed",
                        f"block {sl.block}: a step uses {len(sl.columns)} columns, the circuit has {spec.slots}",
                    )
                if max(sl.columns) >= spec.d:
                    return Verdict(
                        "malformed",
                        f"block {sl.block}: column {short_repr(max(sl.columns))} is outside a block of {spec.d}",
                    )
                if (sl.block, sl.step) in a.where:
                    return Verdict("incomplete", f"block {sl.block} step {sl.step} is proven twice")
                a.where[(sl.block, sl.step)] = (pi, si)
        return None

    def _check_coverage(self, a: _Audit) -> Verdict | None:
        """Exactly the touched units are proven, each by a complete chain of steps 0, 1, …"""
        steps_of: dict[int, list[int]] = {}
        for b, step in sorted(a.where):
            a.chains.setdefault(b, []).append(a.where[(b, step)])
            steps_of.setdefault(b, []).append(step)
        missing = sorted(set(a.touched) - set(a.chains))
        if missing:
            return Verdict("incomplete", f"{len(missing)} touched blocks not proven, e.g. {missing[:10]}")
        extra = sorted(set(a.chains) - set(a.touched))
        if extra:
            return Verdict("wrong-mask", f"blocks outside the mask proven: {extra[:10]}")
        for b, steps_seen in steps_of.items():
            if steps_seen != list(range(len(steps_seen))):
                return Verdict("incomplete", f"block {b}: steps {steps_seen} are not a complete chain from 0")
        return None

    def _check_mask_steps(self, a: _Audit) -> Verdict | None:
        """Each chain proves the mask's canonical steps: the unit's masked positions in order, K per step."""
        spec, bundle = self.circuit.spec, a.bundle
        a.canonical = {b: unit_columns(a.unit_masks[b], spec.slots) for b in a.chains}
        for b, chain in a.chains.items():
            got = [list(bundle.proofs[pi].slots[si].columns) for (pi, si) in chain]
            want = a.canonical[b]
            if got != want:
                pi, si = chain[-1]
                last_mask = self._commitment(bundle.proofs[pi], si, 2)
                if len(got) < len(want) and got == want[: len(got)] and last_mask == zero_commitment(self.circuit):
                    return Verdict(
                        "incomplete",
                        f"block {b}: its chain stops before the final step ({len(got)} of {len(want)} steps proven)",
                    )
                return Verdict(
                    "wrong-mask",
                    f"block {b}: the steps prove columns {got[:4]}, the mask's steps are "
                    f"{want[:4]} (its masked positions in order, {spec.slots} per step)",
                )
        return None

    def _check_no_empty_proof(self, a: _Audit) -> Verdict | None:
        """No proof is all padding."""
        for pi, pr in enumerate(a.bundle.proofs):
            if all(sl is None for sl in pr.slots):
                return Verdict("malformed", f"proof {pi} proves no step: every slot is padding")
        return None

    def _check_snarks(self, a: _Audit) -> Verdict | None:
        """Every proof's SNARK verifies for its residuals and the binding the verifier derives itself."""
        circ = self.circuit
        bound = binding_instances(circ, a.binding or Binding(a.bundle.request_id))
        with tempfile.TemporaryDirectory(prefix="zkapex-verify-") as tmp:
            for pi, pr in enumerate(a.bundle.proofs):
                if not _snark_ok(circ, pr.proof, pr.instances + bound, Path(tmp)):
                    return Verdict(
                        "invalid-proof",
                        f"proof {pi}: the SNARK does not verify for this request, round and node",
                        steps_verified=pi,
                    )
        return None

    def _check_padding(self, a: _Audit) -> Verdict | None:
        """Padding slots commit to zero in every input."""
        zero = zero_commitment(self.circuit)
        for pi, pr in enumerate(a.bundle.proofs):
            for si, sl in enumerate(pr.slots):
                if sl is None and any(
                    self._commitment(pr, si, i) != zero for i in range(self.circuit.spec.inputs_per_step)
                ):
                    return Verdict("malformed", f"proof {pi}: padding slot {si} is not all zero")
        return None

    def _check_chains(self, a: _Audit) -> Verdict | None:
        """Step by step along each unit's chain: its commitments, then its public residuals. Records each
        unit's θu commitment (the last step's θ_out) for the registry."""
        spec = self.circuit.spec
        for b, chain in a.chains.items():
            m = a.unit_masks[b]
            # the chain length is the mask's (checked above), never a count the prover picked
            tol = residual_tolerance(spec.scale, int(m.sum(1).max()), len(a.canonical[b]))
            prev_out = None
            for step, (pi, si) in enumerate(chain):
                verdict = self._check_step_commitments(a, b, step, pi, si, prev_out)
                if verdict is None:
                    verdict = self._check_step_residuals(b, a.bundle.proofs[pi], si, tol)
                if verdict is not None:
                    return verdict
                prev_out = self._commitment(a.bundle.proofs[pi], si, 1)
            a.new_theta[b] = prev_out
        return None

    def _check_step_commitments(
        self, a: _Audit, b: int, step: int, pi: int, si: int, prev_out: bytes | None
    ) -> Verdict | None:
        """One step's input commitments: θ_in is the registered θp (step 0) or the previous step's θ_out; the
        selector is the request's (G > 1); the Ĥ columns are the registered ones (zero in unused column
        slots); the mask input is the unit's mask on the last step, zero before."""
        spec, pr = self.circuit.spec, a.bundle.proofs[pi]
        m, sl = a.unit_masks[b], pr.slots[si]
        zero = zero_commitment(self.circuit)
        theta_in, mask_c = self._commitment(pr, si, 0), self._commitment(pr, si, 2)
        if step == 0 and theta_in != a.registry.theta_of(b):
            return Verdict("stale-model", f"block {b}: θp does not open the registered commitment")
        if step > 0 and theta_in != prev_out:
            return Verdict("malformed", f"block {b}: step {step} does not start where step {step - 1} ended")
        if spec.selector and self._commitment(pr, si, 4) != self._selector_commitment(step_selector(m, sl.columns)):
            return Verdict(
                "wrong-mask",
                f"block {b} step {step}: the column selector is not the request's (which block masks which column)",
            )
        for j in range(spec.slots):
            got = self._commitment(pr, si, spec.column_input + j)
            expect = a.registry.column_of(b, sl.columns[j]) if j < len(sl.columns) else zero
            if got != expect:
                what = f"column {sl.columns[j]}" if j < len(sl.columns) else f"unused column slot {j}"
                return Verdict(
                    "fisher-mismatch" if j < len(sl.columns) else "malformed",
                    f"block {b}: {what} is not the registered Fisher column",
                )
        last = step == len(a.chains[b]) - 1
        if mask_c != (self._mask_commitment(m) if last else zero):
            return Verdict("wrong-mask", f"block {b}: the proof's mask input is not the request's mask")
        return None

    def _check_step_residuals(self, b: int, proof: Proof, si: int, tol: float) -> Verdict | None:
        """One step's public residuals, as exact integers: m ⊙ θ_out exactly 0, |θ_out − θ_in + Ĥ y| ≤ tol."""
        spec = self.circuit.spec
        n = spec.unit_size
        r = [felt_to_int(f) for f in proof.instances[2 * n * si : 2 * n * (si + 1)]]
        if any(r[n:]):
            return Verdict("kkt-violation", f"block {b}: masked weights are not exactly zero")
        worst = max(abs(v) for v in r[:n]) / 2**spec.residual_scale
        if worst > tol:
            return Verdict("kkt-violation", f"block {b}: residual {worst:.3g} exceeds tolerance {tol:.3g}")
        return None


@dataclass
class _Audit:
    """One bundle under verification: what :meth:`Verifier.verify` was given, and what its checks derive
    on the way (each check reads what the earlier ones recorded)."""

    data: bytes
    registry: BlockCommitments
    layout: BlockLayout
    menu: object
    request_id: str | None
    binding: Binding | None
    unit_masks: np.ndarray  # (n_units, G, d) the request's mask of every proof unit
    touched: list[int]  # the units the mask touches, in order
    head: BundleHeader | None = None
    bundle: ProofBundle | None = None
    where: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # (unit, step) -> (proof, slot)
    chains: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # unit -> (proof, slot) per step
    canonical: dict[int, list[list[int]]] = field(default_factory=dict)  # unit -> the mask's step columns
    new_theta: dict[int, bytes] = field(default_factory=dict)  # unit -> θu commitment

    @property
    def n_units(self) -> int:
        return len(self.unit_masks)
