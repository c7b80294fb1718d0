"""The client side of verified unlearning as a Flower mod: one line adds it to an existing ClientApp.

    mod = VerifiedUnlearningMod(setup)              # setup(context) -> UnlearningSetup (model, task, data)
    app = ClientApp(client_fn, mods=[mod])          # a client_fn ClientApp: the mod intercepts our messages
    mod.install(app)                                # or: a decorator ClientApp (@app.train(), ...)

The mod answers the two protocol messages and passes everything else on to the app:

* ``train.commit`` — load θg, personalize it on the node's private data (θp), estimate the block-wise
  empirical Fisher over the provider's scope, pick the largest circuit of the provider's menu that fits
  the node's memory budget, commit θp and Ĥ = C⁻¹ (ZK-APEX phase 2) and keep all of it in the Context;
* ``train.unlearn`` — zero the masked weights, apply the Group-OBS compensation, prove it with EZKL
  and reply with the proof bundle only (phase 4). The node's personalized model becomes θu.

A Flower decorator ClientApp routes a message type only to functions registered for it, so mods alone
cannot add message types to it: :meth:`VerifiedUnlearningMod.install` registers the two handlers
(wrapped in the app's own mods). A ``client_fn`` ClientApp passes every message through its mods, so
listing the mod is enough there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from torch import nn

from ..data.tensors import TensorData, as_tensor_data
from ..proof import ClientProver, get_circuit
from ..proof.circuit import CircuitSpec
from ..protocol import COMMIT, UNLEARN, CommitReply, CommitRequest, ProtocolError, UnlearnReply, UnlearnRequest
from ..tasks import Task, check_task
from ..training import accuracy, train
from ..unlearning import BlockFisher, BlockLayout, UnlearningMask
from .state import NodeState

log = logging.getLogger("zkapex_flwr.client")

PROVER_MB_PER_ROW = 0.012  # prover working set per circuit row (docs/results/proof: peak − baseline RSS)

# (prover, mask, request, context) -> bundle bytes to send instead of the honest proof, or None (be honest);
# proofs must be bound to req.binding(context.node_id) to be judged on what they prove (see proof.cheats)
BundleHook = Callable[[ClientProver, UnlearningMask, UnlearnRequest, Context], "bytes | None"]


@dataclass
class UnlearningSetup:
    """What the mod needs from the app for one node (built by the app's ``setup(context)``).

    ``data``, ``test`` and ``forget`` may be a :class:`TensorData`, a torch ``Dataset``/``DataLoader``
    or a Hugging Face ``Dataset`` (``columns`` picks its columns); they are held as TensorData
    (:func:`~zkapex_flwr.data.tensors.as_tensor_data`). ``task`` is any :class:`~zkapex_flwr.tasks.Task`."""

    model: nn.Module  # the architecture; its weights are replaced by θg / θp
    task: Task  # ImageTask / LMTask or your own (per-sample loss, correct counts)
    data: Any  # the node's private data: personalization and Fisher
    test: Any = None  # held-out data: personalization accuracy (research metric)
    forget: Any = None  # D_f in the node's domain: forget accuracy (research metric)
    memory_mb: float | None = None  # prover working-set budget; None = the cheapest circuit
    personalize: Callable[[nn.Module, TensorData, CommitRequest], None] | None = None
    bundle_hook: BundleHook | None = None  # red-teaming: produce another reply than the honest proof
    speed: float = 1.0  # simulation: device speed relative to this machine (modelled time)
    uplink_mbps: float | None = None  # simulation: modelled bundle upload time
    seed: int = 0
    columns: tuple[str, ...] | None = None  # Hugging Face datasets: the columns that make a batch, in order
    device: str = "cpu"  # where personalization trains ("auto": cuda when present); the
    # Fisher, the commitments and the prover always run on the CPU

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"UnlearningSetup.model must be a torch nn.Module, got {type(self.model).__name__}")
        check_task(self.task)
        self.data = as_tensor_data(self.data, columns=self.columns, name="UnlearningSetup.data")
        for name in ("test", "forget"):
            if getattr(self, name) is not None:
                setattr(
                    self,
                    name,
                    as_tensor_data(getattr(self, name), columns=self.columns, name=f"UnlearningSetup.{name}"),
                )


def node_identity(context: Context) -> str:
    """The node's stable identity, from the node config its operator set: ``zkapex-identity`` if given,
    else ``partition-<id>`` (simulation and the tests' deployments), else '' (the node id is the identity:
    with Flower's SuperNode authentication the SuperLink gives each registered key one node id)."""
    conf = context.node_config
    if conf.get("zkapex-identity") not in (None, ""):
        return str(conf["zkapex-identity"])
    if isinstance(conf.get("partition-id"), int):
        return f"partition-{conf['partition-id']}"
    return ""


def prover_mb(logrows: int) -> float:
    return PROVER_MB_PER_ROW * 2**logrows


def choose_circuit(menu: list[CircuitSpec], memory_mb: float | None) -> CircuitSpec:
    """The menu entry with the most steps per proof whose prover fits ``memory_mb`` (else the smallest)."""
    ranked = sorted(menu, key=lambda s: s.steps)
    if memory_mb is None:
        return ranked[0]
    fits = [s for s in ranked if prover_mb(get_circuit(s).logrows) <= memory_mb]
    return fits[-1] if fits else ranked[0]


class VerifiedUnlearningMod:
    """A Flower mod (``mod(message, context, call_next)``) answering ``train.commit`` and ``train.unlearn``."""

    def __init__(self, setup: Callable[[Context], UnlearningSetup]):
        self.setup = setup
        self._setups: dict[tuple[int, int], UnlearningSetup] = {}

    # ---------------------------------------------------------------------------------- Flower API
    def __call__(self, message: Message, context: Context, call_next) -> Message:
        kind = message.metadata.message_type
        if kind == COMMIT:
            return self.handle_commit(message, context)
        if kind == UNLEARN:
            return self.handle_unlearn(message, context)
        return call_next(message, context)

    def install(self, app: ClientApp) -> ClientApp:
        """Register the two handlers on a decorator-style ClientApp (its own mods wrap them too)."""
        app.train("commit")(self.handle_commit)
        app.train("unlearn")(self.handle_unlearn)
        return app

    def setup_for(self, context: Context) -> UnlearningSetup:
        key = (context.run_id, context.node_id)
        if key not in self._setups:
            setup = self.setup(context)
            if not isinstance(setup, UnlearningSetup):
                raise TypeError(f"the setup function must return an UnlearningSetup, got {type(setup).__name__}")
            self._setups[key] = setup
        return self._setups[key]

    # ---------------------------------------------------------------------------- phase 2: commit
    def handle_commit(self, message: Message, context: Context) -> Message:
        t0 = time.perf_counter()
        node = self.setup_for(context)
        req, arrays = CommitRequest.from_message(message)
        model = node.model
        model.load_state_dict(arrays.to_torch_state_dict())
        if node.personalize is not None:
            node.personalize(model, node.data, req)
        else:
            train(
                model,
                node.task,
                node.data,
                epochs=req.personal_epochs,
                lr=req.personal_lr,
                batch_size=req.batch_size,
                seed=node.seed,
                desc="personalize",
                device=node.device,
            )
        model.cpu().eval()  # Fisher, commitments and proofs run on the CPU
        layout = BlockLayout.from_model(model, req.block_size, req.scope)
        if layout.digest() != req.layout_digest:
            raise ProtocolError(
                f"node {context.node_id}: the scope '{req.scope}' with blocks of {req.block_size} "
                f"gives layout {layout.digest()[:12]}… on this model, the provider expects "
                f"{req.layout_digest[:12]}… (different architecture?)"
            )
        if req.deleted:  # a node that joins after a deletion inherits it: θp keeps the deleted weights at zero
            flat = layout.flatten(model)
            flat[UnlearningMask.from_bytes(req.deleted, layout).indices] = 0.0
            layout.assign(model, flat)
        t1 = time.perf_counter()
        fisher = BlockFisher.estimate(model, node.task, node.data, layout, num_grads=req.num_grads)
        t2 = time.perf_counter()
        spec = choose_circuit(req.circuits, node.memory_mb)
        prover = ClientProver.register(model, layout, fisher, req.damping, spec)
        t3 = time.perf_counter()
        info = {"personalization_acc": accuracy(model, node.task, node.test)} if node.test is not None else {}
        state = NodeState(
            model={k: v.detach().clone() for k, v in model.state_dict().items()},
            theta=prover.theta,
            h_hat=prover.h_hat,
            spec=spec,
            layout=layout,
            registry=prover.registry.to_bytes(),
            salt_key=prover.salt_key,
            circuit_id=prover.circuit.circuit_id,
            info=info,
        )
        state.save(context)
        reply = CommitReply(state.registry, state.circuit_id, spec, layout.digest(), node_identity(context))
        metrics = {
            "num-examples": len(node.data),
            "personalize-s": t1 - t0,
            "fisher-s": t2 - t1,
            "register-s": t3 - t2,
            "steps": spec.steps,
            **info,
        }
        if isinstance(context.node_config.get("partition-id"), int):  # simulation bookkeeping
            metrics["partition-id"] = context.node_config["partition-id"]
        return Message(reply.to_content(metrics), reply_to=message)

    # --------------------------------------------------------------------------- phase 4: unlearn
    def handle_unlearn(self, message: Message, context: Context) -> Message:
        node = self.setup_for(context)
        req = UnlearnRequest.from_message(message)
        state = NodeState.load(context)
        if req.circuit_id != state.circuit_id:
            raise ProtocolError(
                f"node {context.node_id}: the request names circuit {req.circuit_id[:12]}…, this "
                f"node registered with {state.circuit_id[:12]}…"
            )
        if req.layout_digest != state.layout.digest():
            raise ProtocolError(f"node {context.node_id}: the request's block layout differs from the committed one")
        mask = UnlearningMask.from_bytes(req.mask, state.layout)
        key = f"{req.request_id}|{req.nonce}"
        if key in state.sent:  # a retry of the same round: the same answer again, no re-proving
            reply = UnlearnReply(req.request_id, req.nonce, state.sent[key])
            return Message(reply.to_content({"resent": 1.0}), reply_to=message)
        state.start_request(req.request_id)  # a repeated request is proven again from the model before it
        model = node.model
        model.load_state_dict(state.model)
        model.eval()
        before = self._research_metrics(node, model)
        prover = state.prover()
        t0 = time.perf_counter()
        data = node.bundle_hook(prover, mask, req, context) if node.bundle_hook is not None else None
        honest = data is None
        if honest:
            bundle, _ = prover.unlearn(model, mask, req.request_id, binding=req.binding(context.node_id))
            data = bundle.to_bytes()
            state.model = {k: v.detach().clone() for k, v in model.state_dict().items()}
            state.theta = prover.theta
        prove_s = time.perf_counter() - t0
        after = self._research_metrics(node, model) if honest else {}
        state.sent[key] = data
        state.save(context)
        metrics = {
            "prove-s": prove_s,
            "masked-weights": float(len(mask)),
            "bundle-bytes": float(len(data)),
            "device-s": prove_s / node.speed,
        }
        if node.uplink_mbps:
            metrics["upload-s"] = 8 * len(data) / (node.uplink_mbps * 1e6)
        for k, v in before.items():
            metrics[f"{k}-before"] = v
        for k, v in after.items():
            metrics[f"{k}-after"] = v
        if "personalization-acc-before" in metrics and "personalization-acc-after" in metrics:
            metrics["recovery"] = metrics["personalization-acc-after"] / max(
                metrics["personalization-acc-before"], 1e-12
            )
        reply = UnlearnReply(req.request_id, req.nonce, data)
        return Message(reply.to_content(metrics), reply_to=message)

    @staticmethod
    def _research_metrics(node: UnlearningSetup, model: nn.Module) -> dict[str, float]:
        out = {}
        if node.test is not None and len(node.test):
            out["personalization-acc"] = accuracy(model, node.task, node.test)
        if node.forget is not None and len(node.forget):
            out["forget-acc"] = accuracy(model, node.task, node.forget)
        return out
