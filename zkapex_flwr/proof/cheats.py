"""Dishonest provers (docs/protocol.md §5), each a real code path that produces bytes for the real verifier.

Used by the tests, by red-teamers and by the fleet simulator. Every function returns what a client
with that behaviour would send back in the unlearning round; the honest path is
:meth:`ClientProver.unlearn`. A behaviour never touches the verifier or the registry.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .bundle import Proof, ProofBundle
from .prover import prove_chains
from .statement import Binding, Step, honest_unit_steps, quantize

BEHAVIOURS = (
    "honest",
    "ignore",
    "garbage-proof",
    "mask-only",
    "partial-mask",
    "stale-model",
    "fake-fisher",
    "replay",
    "tamper-instances",
    "wrong-mask",
    "drop-blocks",
    "duplicate-block",
    "hide-in-padding",
)


def prove_steps(prover, chains: dict[int, list[Step]], request_id: str, binding: Binding | None = None) -> ProofBundle:
    """A well-formed bundle proving whatever ``chains`` (unit → its steps) say, honest or not.

    This is the building block for a new dishonest behaviour: make the steps (e.g. from
    :func:`~zkapex_flwr.proof.statement.honest_unit_steps`, then change them) and let the real prover
    prove them; the verifier decides."""
    with tempfile.TemporaryDirectory(prefix="zkapex-cheat-") as tmp:
        proofs = prove_chains(
            prover.circuit, chains, Path(tmp), binding or Binding(request_id), salt_key=prover.salt_key
        )[0]
    return ProofBundle(prover.circuit.circuit_id, prover.layout.digest(), request_id, proofs)


def _prove(prover, mask_blocks, local_masks, theta, h_hat, request_id, binding, steps_fn=None) -> ProofBundle:
    spec = prover.circuit.spec
    chains = {
        int(b): (steps_fn or honest_unit_steps)(theta[t], h_hat[t], local_masks[t], spec)
        for t, b in enumerate(mask_blocks)
    }
    return prove_steps(prover, chains, request_id, binding)


def _mask_only_steps(theta, h_hat, mask, spec) -> list[Step]:
    """Zero the mask, no compensation, but with the right columns and a well-formed chain."""
    honest = honest_unit_steps(theta, h_hat, mask, spec)
    current = quantize(theta, spec.scale)
    steps = []
    for i, st in enumerate(honest):
        nxt = current.copy()
        if i == len(honest) - 1:
            nxt[np.asarray(mask, dtype=bool)] = 0.0
        steps.append(Step(current, nxt, st.mask, np.zeros_like(st.y), st.columns, st.h, st.selector))
        current = nxt
    return steps


def cheat_bundle(
    prover,
    mask,
    request_id: str,
    behaviour: str,
    *,
    rng: np.random.Generator | None = None,
    other: bytes | None = None,
    binding: Binding | None = None,
) -> bytes:
    """The bytes a client with ``behaviour`` returns for ``mask`` (``other``: a bundle to replay).

    ``binding``: the request, nonce and node of the round (what an honest client's proofs answer);
    every behaviour binds its proofs to it, so the verifier judges the cheat itself."""
    rng = rng or np.random.default_rng(0)
    binding = binding or Binding(request_id)
    blocks, theta, h_hat, local = prover.unit_arrays(mask)  # touched proof units (G blocks each)
    spec = prover.circuit.spec
    if behaviour == "honest":
        return _prove(prover, blocks, local, theta, h_hat, request_id, binding).to_bytes()
    if behaviour == "ignore":  # claims done, proves nothing
        return ProofBundle(prover.circuit.circuit_id, prover.layout.digest(), request_id, []).to_bytes()
    if behaviour == "garbage-proof":  # a well-formed bundle whose proof bytes are noise
        bundle = _prove(prover, blocks, local, theta, h_hat, request_id, binding)
        bundle.proofs = [Proof(pr.slots, rng.bytes(len(pr.proof)), pr.instances) for pr in bundle.proofs]
        return bundle.to_bytes()
    if behaviour == "mask-only":
        return _prove(prover, blocks, local, theta, h_hat, request_id, binding, steps_fn=_mask_only_steps).to_bytes()
    if behaviour == "partial-mask":  # leaves the last masked weight of the largest unit in place
        flat = local.reshape(len(blocks), -1)
        t = int(np.argmax(flat.sum(1)))
        partial = flat.copy()
        partial[t, np.flatnonzero(flat[t])[-1]] = False
        partial = partial.reshape(local.shape)
        keep = partial.reshape(len(blocks), -1).any(1)
        return _prove(prover, blocks[keep], partial[keep], theta[keep], h_hat[keep], request_id, binding).to_bytes()
    if behaviour == "stale-model":  # proves on a model it kept training after committing
        drift = quantize(theta + rng.normal(0, 1e-2, theta.shape), spec.scale)
        return _prove(prover, blocks, local, drift, h_hat, request_id, binding).to_bytes()
    if behaviour == "fake-fisher":  # identity curvature instead of its committed Fisher
        eye = np.broadcast_to(np.eye(spec.d), h_hat.shape).copy()  # (T, G, d, d)
        return _prove(prover, blocks, local, theta, eye, request_id, binding).to_bytes()
    if behaviour == "replay":
        if other is None:
            raise ValueError("replay needs another bundle to replay")
        return other
    if behaviour == "tamper-instances":
        bundle = ProofBundle.from_bytes(_prove(prover, blocks, local, theta, h_hat, request_id, binding).to_bytes())
        pr = bundle.proofs[0]
        bad = bytearray(pr.instances[0])
        bad[0] ^= 1
        pr.instances[0] = bytes(bad)
        return bundle.to_bytes()
    if behaviour == "wrong-mask":  # proves a different mask of the same size in the same blocks
        other_local = np.zeros_like(local)
        for t in range(len(blocks)):
            for g in range(local.shape[1]):
                other_local[t, g, rng.choice(spec.d, size=int(local[t, g].sum()), replace=False)] = True
        return _prove(prover, blocks, other_local, theta, h_hat, request_id, binding).to_bytes()
    if behaviour == "drop-blocks":
        keep = np.arange(len(blocks)) != len(blocks) - 1
        return _prove(prover, blocks[keep], local[keep], theta[keep], h_hat[keep], request_id, binding).to_bytes()
    if behaviour == "duplicate-block":
        bundle = _prove(prover, blocks, local, theta, h_hat, request_id, binding)
        bundle.proofs.append(bundle.proofs[0])
        return bundle.to_bytes()
    if behaviour == "hide-in-padding":  # proves every block but labels the last proof's first slot as padding
        bundle = _prove(prover, blocks, local, theta, h_hat, request_id, binding)
        bundle.proofs[-1].slots[0] = None
        return bundle.to_bytes()
    raise ValueError(f"unknown behaviour '{behaviour}'; choose one of {BEHAVIOURS}")
