"""The few-line API: a client registers its personalized model once, then proves each unlearning.

prover = ClientProver.register(model, layout, fisher, damping=0.01)   # phase 2
entry = prover.registry                     # → the provider's registry (BlockCommitments)
bundle, report = prover.unlearn(model, mask, request_id="r1")        # phase 4, writes θu
verdict = Verifier(prover.circuit).verify(bundle.to_bytes(), entry, mask)   # provider, phase 5
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from torch import nn

from ..unlearning import BlockFisher, BlockLayout, UnlearningMask
from .bundle import ProofBundle
from .circuit import Circuit, CircuitSpec, get_circuit
from .commitments import BlockCommitments, register_blocks
from .prover import ProveReport, prove_unlearning
from .statement import Binding, normalized_inverse, proof_units, quantize

DEFAULT_SLOTS = 2
DEFAULT_SCALE = 16


class ClientProver:
    """A client's proving state: the registered θp and Ĥ blocks, the circuit and the registry entry."""

    def __init__(
        self,
        circuit: Circuit,
        layout: BlockLayout,
        theta: np.ndarray,
        h_hat: np.ndarray,
        registry: BlockCommitments,
        salt_key: bytes | None,
    ):
        self.circuit = circuit
        self.layout = layout
        self.theta = theta  # (n_blocks, d) quantised, the currently registered weights
        self.h_hat = h_hat  # (n_blocks, d, d) quantised normalised inverse Fisher
        self.registry = registry
        self.salt_key = salt_key  # the client's secret commitment salt key (never sent)

    def copy(self) -> ClientProver:
        """An independent prover at the same registered state (unlearning moves only the copy)."""
        return ClientProver(self.circuit, self.layout, self.theta.copy(), self.h_hat, self.registry, self.salt_key)

    @staticmethod
    def register(
        model: nn.Module,
        layout: BlockLayout,
        fisher: BlockFisher,
        damping: float,
        spec: CircuitSpec | None = None,
        *,
        progress=None,
    ) -> ClientProver:
        """Quantise θp, invert every damped Fisher block and commit both (before any mask is known).

        ``spec`` is the circuit (:class:`CircuitSpec`: K masked columns per step, S fixed-point bits, B
        steps per proof, G blocks per proof unit); its ``d`` must be the layout's block size. Default:
        K = 2, S = 16, B = G = 1. G > 1 packs G consecutive blocks into one proof unit (wide inputs):
        proofs stay the same size whatever G is; pair it with a column-structured mask
        (``select_mask(group=(G, K))``).
        """
        if fisher.layout.digest() != layout.digest():
            raise ValueError("the Fisher was estimated on a different scope/block layout")
        spec = spec or CircuitSpec(d=layout.block_size, slots=DEFAULT_SLOTS, scale=DEFAULT_SCALE)
        if spec.d != layout.block_size:
            raise ValueError(
                f"circuit {spec.name()} is for blocks of {spec.d}, the layout has blocks of {layout.block_size}"
            )
        circuit = get_circuit(spec)
        scale = spec.scale
        theta = quantize(layout.flatten(model).reshape(-1, layout.block_size).numpy(), scale)
        c = fisher.damped(torch.arange(layout.n_blocks), damping).numpy()
        h_hat = normalized_inverse(c, scale)
        salt_key = secrets.token_bytes(32)
        registry = register_blocks(circuit, layout.digest(), theta, h_hat, progress=progress, salt_key=salt_key)
        return ClientProver(circuit, layout, theta, h_hat, registry, salt_key)

    def unit_arrays(self, mask: UnlearningMask) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Touched proof units and their registered θ (T, G, d), Ĥ (T, G, d, d) and masks (T, G, d)."""
        if mask.layout.digest() != self.layout.digest():
            raise ValueError("the mask is for another scope/block layout than this client registered")
        g, d = self.circuit.spec.group, self.layout.block_size
        units, masks = proof_units(mask, self.circuit.spec)
        return (units, self.theta.reshape(-1, g, d)[units], self.h_hat.reshape(-1, g, d, d)[units], masks[units])

    def unlearn(
        self, model: nn.Module, mask: UnlearningMask, request_id: str, binding: Binding | None = None, progress=None
    ) -> tuple[ProofBundle, ProveReport]:
        """Prove the Group-OBS update for ``mask`` and write θu into ``model`` (the proven values).

        ``binding``: the request, round nonce and node the provider asked (default: the request id alone)."""
        units, theta, h_hat, masks = self.unit_arrays(mask)
        bundle, theta_u, report = prove_unlearning(
            self.circuit,
            request_id=request_id,
            layout_digest=self.layout.digest(),
            blocks=units,
            theta_p=theta,
            h_hat=h_hat,
            local_masks=masks,
            binding=binding,
            salt_key=self.salt_key,
            progress=progress,
        )
        g, d = self.circuit.spec.group, self.layout.block_size
        blocks = (units[:, None] * g + np.arange(g)[None, :]).reshape(-1)
        self.theta = self.theta.copy()
        self.theta[blocks] = theta_u.reshape(-1, d)
        flat = self.layout.flatten(model).reshape(-1, d)
        flat[torch.as_tensor(blocks)] = torch.as_tensor(theta_u.reshape(-1, d))
        self.layout.assign(model, flat.reshape(-1))
        return bundle, report
