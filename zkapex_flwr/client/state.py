"""Per-node unlearning state, kept across rounds in Flower's ``Context.state`` (the way Flower intends).

After ``train.commit`` a node holds: its personalized model θp (θu after an honest unlearning), the
quantised registered θ blocks and normalised inverse Fisher blocks Ĥ (the prover's witnesses), the
circuit shape it registered with, the block layout and its registry entry, plus the bundles it already
sent (a retried request is answered again without re-proving). Three records hold it:
``zkapex.model`` and ``zkapex.prover`` (ArrayRecords) and ``zkapex.meta`` (ConfigRecord).

A Context lives as long as one Flower run. A real device must keep what it committed to across runs
(the provider restarts, a new ``flwr run`` starts a new run with the same SuperNodes): give the
SuperNode a node config ``zkapex-state-dir`` (``flower-supernode --node-config
"zkapex-state-dir='/var/lib/zkapex'"``, one folder per SuperNode) and the state is also written,
atomically, to ``<dir>/node-state.npz``; a run whose Context lacks the state loads it from there.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from ..files import atomic_write
from ..proof import BlockCommitments, ClientProver, get_circuit
from ..proof.circuit import CircuitSpec
from ..protocol import spec_from_json, spec_to_json
from ..unlearning import BlockLayout

MODEL, PROVER, META, BEFORE = "zkapex.model", "zkapex.prover", "zkapex.meta", "zkapex.before"
KEEP_BUNDLES = 4
STATE_DIR_KEY = "zkapex-state-dir"  # node config: where a SuperNode keeps its state across runs
STATE_FILE = "node-state.npz"


def state_file(context: Context) -> Path | None:
    where = context.node_config.get(STATE_DIR_KEY)
    return Path(str(where)) / STATE_FILE if where else None


class MissingState(RuntimeError):
    """The node has no (or incomplete) unlearning state: it never answered a ``train.commit`` round."""


@dataclass
class NodeState:
    model: dict[str, torch.Tensor]
    theta: np.ndarray  # (n_blocks, d) quantised registered weights
    h_hat: np.ndarray  # (n_blocks, d, d) quantised normalised inverse Fisher
    spec: CircuitSpec
    layout: BlockLayout
    registry: bytes
    circuit_id: str
    salt_key: bytes  # the secret the node's commitments are salted with (never leaves the node)
    sent: dict[str, bytes] = field(default_factory=dict)  # 'request id|nonce' -> bundle already sent
    info: dict[str, float] = field(default_factory=dict)  # e.g. personalization accuracy at commit
    # the model and registered θ from before the last request this node answered: if that request comes
    # again (a make-up round, or a provider that restarted before recording the answer), the provider's
    # registry still holds these, so the node proves from them again
    before_id: str = ""
    before_model: dict[str, torch.Tensor] | None = None
    before_theta: np.ndarray | None = None

    def start_request(self, request_id: str) -> None:
        """Pick the model to prove ``request_id`` from (and remember it, for a repeat of this request)."""
        if request_id == self.before_id and self.before_model is not None:
            self.model, self.theta = dict(self.before_model), self.before_theta.copy()
        else:
            self.before_id, self.before_model, self.before_theta = request_id, dict(self.model), self.theta.copy()

    def prover(self) -> ClientProver:
        circuit = get_circuit(self.spec)
        if circuit.circuit_id != self.circuit_id:
            raise MissingState(
                f"the circuit {self.spec.name()} on this node now has id {circuit.circuit_id[:12]}…, "
                f"but the node registered with {self.circuit_id[:12]}… (keys or SRS changed): "
                "re-run the commit phase"
            )
        return ClientProver(
            circuit, self.layout, self.theta, self.h_hat, BlockCommitments.from_bytes(self.registry), self.salt_key
        )

    def save(self, context: Context) -> None:
        context.state[MODEL] = ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in self.model.items()})
        context.state[PROVER] = ArrayRecord(
            numpy_ndarrays=[np.ascontiguousarray(self.theta), np.ascontiguousarray(self.h_hat)]
        )
        ids = list(self.sent)[-KEEP_BUNDLES:]
        context.state[META] = ConfigRecord(
            {
                "spec": spec_to_json(self.spec),
                "layout": json.dumps(self.layout.to_dict()),
                "registry": self.registry,
                "salt-key": self.salt_key,
                "circuit-id": self.circuit_id,
                "sent-ids": ids,
                "sent-bundles": [self.sent[i] for i in ids],
                "info": json.dumps(self.info),
                "before-id": self.before_id,
            }
        )
        if self.before_model is not None:
            context.state[BEFORE] = ArrayRecord(
                torch_state_dict={
                    **{k: v.detach().cpu() for k, v in self.before_model.items()},
                    "__theta__": torch.from_numpy(np.ascontiguousarray(self.before_theta)),
                }
            )
        path = state_file(context)
        if path is not None:
            self._save_file(path, ids)

    def _save_file(self, path: Path, ids: list[str]) -> None:
        arrays = {f"model/{k}": v.detach().cpu().numpy() for k, v in self.model.items()}
        arrays.update({f"sent/{i}": np.frombuffer(self.sent[key], dtype=np.uint8) for i, key in enumerate(ids)})
        if self.before_model is not None:
            arrays.update({f"before/{k}": v.detach().cpu().numpy() for k, v in self.before_model.items()})
            arrays["before_theta"] = self.before_theta
        meta = {
            "spec": spec_to_json(self.spec),
            "layout": self.layout.to_dict(),
            "circuit-id": self.circuit_id,
            "sent-ids": ids,
            "info": self.info,
            "before-id": self.before_id,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            theta=self.theta,
            h_hat=self.h_hat,
            registry=np.frombuffer(self.registry, dtype=np.uint8),
            salt_key=np.frombuffer(self.salt_key, dtype=np.uint8),
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            **arrays,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue())

    @staticmethod
    def _load_file(path: Path) -> NodeState:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes())
                model = {k[len("model/") :]: torch.from_numpy(z[k].copy()) for k in z.files if k.startswith("model/")}
                sent = {key: z[f"sent/{i}"].tobytes() for i, key in enumerate(meta["sent-ids"])}
                before = {
                    k[len("before/") :]: torch.from_numpy(z[k].copy()) for k in z.files if k.startswith("before/")
                }
                return NodeState(
                    model=model,
                    theta=z["theta"],
                    h_hat=z["h_hat"],
                    spec=spec_from_json(meta["spec"]),
                    layout=BlockLayout.from_dict(meta["layout"]),
                    registry=z["registry"].tobytes(),
                    salt_key=z["salt_key"].tobytes(),
                    circuit_id=meta["circuit-id"],
                    sent=sent,
                    info=meta["info"],
                    before_id=meta["before-id"],
                    before_model=before or None,
                    before_theta=z["before_theta"] if before else None,
                )
        except (OSError, ValueError, KeyError) as err:
            raise MissingState(f"the node state file {path} is unreadable ({err}); it was left as it is") from None

    @staticmethod
    def load(context: Context) -> NodeState:
        missing = [k for k in (MODEL, PROVER, META) if k not in context.state]
        path = state_file(context)
        if missing and path is not None and path.exists():  # a new run: what this device committed earlier
            state = NodeState._load_file(path)
            state.save(context)
            return state
        if missing:
            raise MissingState(
                f"node {context.node_id} has no unlearning state ({', '.join(missing)} missing from "
                "its Context): it must answer a train.commit round (personalize and register "
                "commitments) before train.unlearn; to keep that state across Flower runs, give the SuperNode a "
                f"node config '{STATE_DIR_KEY}'"
            )
        meta = context.state[META]
        theta, h_hat = context.state[PROVER].to_numpy_ndarrays()
        before = context.state[BEFORE].to_torch_state_dict() if BEFORE in context.state else None
        before_theta = before.pop("__theta__").numpy() if before else None
        return NodeState(
            model=context.state[MODEL].to_torch_state_dict(),
            theta=theta,
            h_hat=h_hat,
            before_id=meta.get("before-id", ""),
            before_model=before,
            before_theta=before_theta,
            spec=spec_from_json(meta["spec"]),
            layout=BlockLayout.from_dict(json.loads(meta["layout"])),
            registry=meta["registry"],
            salt_key=meta["salt-key"],
            circuit_id=meta["circuit-id"],
            sent=dict(zip(meta["sent-ids"], meta["sent-bundles"])),
            info=json.loads(meta["info"]),
        )
