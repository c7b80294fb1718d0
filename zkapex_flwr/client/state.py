"""Per-node unlearning state, kept across rounds in Flower's ``Context.state`` (the way Flower intends).

After ``train.commit`` a node holds: its personalized model θp (θu after an honest unlearning), the
quantised registered θ blocks and normalised inverse Fisher blocks Ĥ (the prover's witnesses), the
circuit shape it registered with, the block layout and its registry entry, plus the bundles it already
sent (a retried request is answered again without re-proving). Three records hold it:
``zkapex.model`` and ``zkapex.prover`` (ArrayRecords) and ``zkapex.meta`` (ConfigRecord).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from ..proof import BlockCommitments, ClientProver, get_circuit
from ..proof.circuit import CircuitSpec
from ..protocol import spec_from_json, spec_to_json
from ..unlearning import BlockLayout

MODEL, PROVER, META = "zkapex.model", "zkapex.prover", "zkapex.meta"
KEEP_BUNDLES = 4


class MissingState(RuntimeError):
    """The node has no (or incomplete) unlearning state: it never answered a ``train.commit`` round."""


@dataclass
class NodeState:
    model: dict[str, torch.Tensor]
    theta: np.ndarray            # (n_blocks, d) quantised registered weights
    h_hat: np.ndarray            # (n_blocks, d, d) quantised normalised inverse Fisher
    spec: CircuitSpec
    layout: BlockLayout
    registry: bytes
    circuit_id: str
    sent: dict[str, bytes] = field(default_factory=dict)   # 'request id|nonce' -> bundle already sent
    info: dict[str, float] = field(default_factory=dict)   # e.g. personalization accuracy at commit

    def prover(self) -> ClientProver:
        circuit = get_circuit(self.spec)
        if circuit.circuit_id != self.circuit_id:
            raise MissingState(f"the circuit {self.spec.name()} on this node now has id {circuit.circuit_id[:12]}…, "
                               f"but the node registered with {self.circuit_id[:12]}… (keys or SRS changed): "
                               "re-run the commit phase")
        return ClientProver(circuit, self.layout, self.theta, self.h_hat, BlockCommitments.from_bytes(self.registry))

    def save(self, context: Context) -> None:
        context.state[MODEL] = ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in self.model.items()})
        context.state[PROVER] = ArrayRecord(numpy_ndarrays=[np.ascontiguousarray(self.theta),
                                                            np.ascontiguousarray(self.h_hat)])
        ids = list(self.sent)[-KEEP_BUNDLES:]
        context.state[META] = ConfigRecord({
            "spec": spec_to_json(self.spec), "layout": json.dumps(self.layout.to_dict()), "registry": self.registry,
            "circuit-id": self.circuit_id, "sent-ids": ids, "sent-bundles": [self.sent[i] for i in ids],
            "info": json.dumps(self.info)})

    @staticmethod
    def load(context: Context) -> "NodeState":
        missing = [k for k in (MODEL, PROVER, META) if k not in context.state]
        if missing:
            raise MissingState(f"node {context.node_id} has no unlearning state ({', '.join(missing)} missing from "
                               "its Context): it must answer a train.commit round (personalize and register "
                               "commitments) before train.unlearn")
        meta = context.state[META]
        theta, h_hat = context.state[PROVER].to_numpy_ndarrays()
        return NodeState(model=context.state[MODEL].to_torch_state_dict(), theta=theta, h_hat=h_hat,
                         spec=spec_from_json(meta["spec"]), layout=BlockLayout.from_dict(json.loads(meta["layout"])),
                         registry=meta["registry"], circuit_id=meta["circuit-id"],
                         sent=dict(zip(meta["sent-ids"], meta["sent-bundles"])), info=json.loads(meta["info"]))
