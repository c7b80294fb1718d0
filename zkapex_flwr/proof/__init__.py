"""The proof: EZKL (Halo2/KZG) circuits that attest a client's Group-OBS update against its registry entry.

* :mod:`.circuit` — the column-form certificate circuit, built once per shape, keys cached on disk;
* :mod:`.statement` — fixed-point witness and proof steps of one block;
* :mod:`.commitments` — registry values (KZG commitments of θp and of Ĥ's columns);
* :mod:`.bundle` — the versioned wire format a client returns;
* :mod:`.prover` / :mod:`.verifier` — client-side proving, provider-side verdicts with reason codes;
* :mod:`.session` — the few-line API that ties them to a model (``ClientProver``).
"""

from .bundle import MalformedBundle, ProofBundle
from .circuit import Circuit, CircuitSpec, get_circuit
from .commitments import BlockCommitments, commit_vectors, register_blocks
from .prover import ProveReport, prove_unlearning
from .session import ClientProver
from .verifier import Verdict, Verifier

__all__ = [
    "CircuitSpec",
    "Circuit",
    "get_circuit",
    "BlockCommitments",
    "commit_vectors",
    "register_blocks",
    "ProofBundle",
    "MalformedBundle",
    "prove_unlearning",
    "ProveReport",
    "Verifier",
    "Verdict",
    "ClientProver",
]
