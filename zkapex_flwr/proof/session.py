"""The few-line API: a client registers its personalized model once, then proves each unlearning.

    prover = ClientProver.register(model, layout, fisher, damping=0.01)   # phase 2
    entry = prover.registry                     # → the provider's registry (BlockCommitments)
    bundle, report = prover.unlearn(model, mask, request_id="r1")        # phase 4, writes θu
    verdict = Verifier(prover.circuit).verify(bundle.to_bytes(), entry, mask)   # provider, phase 5
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..unlearning import BlockFisher, BlockLayout, UnlearningMask
from .bundle import ProofBundle
from .circuit import Circuit, CircuitSpec, get_circuit
from .commitments import BlockCommitments, register_blocks
from .prover import ProveReport, prove_unlearning
from .statement import normalized_inverse, quantize

DEFAULT_SLOTS = 2
DEFAULT_SCALE = 16


class ClientProver:
    """A client's proving state: the registered θp and Ĥ blocks, the circuit and the registry entry."""

    def __init__(self, circuit: Circuit, layout: BlockLayout, theta: np.ndarray, h_hat: np.ndarray,
                 registry: BlockCommitments):
        self.circuit = circuit
        self.layout = layout
        self.theta = theta    # (n_blocks, d) quantised, the currently registered weights
        self.h_hat = h_hat    # (n_blocks, d, d) quantised normalised inverse Fisher
        self.registry = registry

    @staticmethod
    def register(model: nn.Module, layout: BlockLayout, fisher: BlockFisher, damping: float, *,
                 slots: int = DEFAULT_SLOTS, scale: int = DEFAULT_SCALE, steps_per_proof: int = 1,
                 progress=None) -> "ClientProver":
        """Quantise θp, invert every damped Fisher block and commit both (before any mask is known)."""
        if fisher.layout.digest() != layout.digest():
            raise ValueError("the Fisher was estimated on a different scope/block layout")
        circuit = get_circuit(CircuitSpec(d=layout.block_size, slots=slots, scale=scale, steps=steps_per_proof))
        theta = quantize(layout.flatten(model).reshape(-1, layout.block_size).numpy(), scale)
        c = fisher.damped(torch.arange(layout.n_blocks), damping).numpy()
        h_hat = normalized_inverse(c, scale)
        registry = register_blocks(circuit, layout.digest(), theta, h_hat, progress=progress)
        return ClientProver(circuit, layout, theta, h_hat, registry)

    def unlearn(self, model: nn.Module, mask: UnlearningMask, request_id: str,
                progress=None) -> tuple[ProofBundle, ProveReport]:
        """Prove the Group-OBS update for ``mask`` and write θu into ``model`` (the proven values)."""
        if mask.layout.digest() != self.layout.digest():
            raise ValueError("the mask is for another scope/block layout than this client registered")
        blocks = mask.touched_blocks().numpy()
        bundle, theta_u, report = prove_unlearning(
            self.circuit, request_id=request_id, layout_digest=self.layout.digest(), blocks=blocks,
            theta_p=self.theta[blocks], h_hat=self.h_hat[blocks], local_masks=mask.local_masks().numpy(),
            progress=progress)
        self.theta = self.theta.copy()
        self.theta[blocks] = theta_u
        flat = self.layout.flatten(model).reshape(-1, self.layout.block_size)
        flat[torch.as_tensor(blocks)] = torch.as_tensor(theta_u)
        self.layout.assign(model, flat.reshape(-1))
        return bundle, report

    def accept(self, new_theta: dict[int, bytes]) -> None:
        """After a compliant verdict, the registry entry moves to θu's commitments."""
        self.registry = self.registry.with_theta(new_theta)
