"""The client side of MPU (arXiv 2602.23798) as a Flower mod: a node unlearns its own forget set.

    mpu = MPUMod(setup)                             # setup(context) -> MPUSetup (model, task, forget, retain)
    app = ClientApp(client_fn, mods=[mpu])          # a client_fn ClientApp: the mod intercepts train.mpu
    app = mpu.install(ClientApp(mods=[mpu]))        # a decorator ClientApp (@app.train(), ...)

The node holds a private forget set and never sends it. The server never sends θ: it sends m
perturbed, reparameterized copies of it in one ``train.mpu`` message
(:mod:`zkapex_flwr.mpu.messages`). The mod loads each copy into the node's architecture, runs the
requested local unlearning algorithm (:func:`zkapex_flwr.posthoc.unlearn`) on the forget set (and on
the retain data, for algorithms that use it) and replies with the m updated copies. The server undoes
the reparameterization, screens the m updates for consistency and denoises them into the new θ.

A node asks for unlearning in band when its setup says so (``MPUSetup.request``): each of its replies
to an ordinary ``train`` message carries the metric ``mpu-request`` = 1 until it has answered the last
round of a request. For that on a decorator ClientApp the mod must be in the app's ``mods`` (mods see
every message); :meth:`MPUMod.install` registers the ``train.mpu`` handler. Other messages pass through.

A node without a forget set, or asked for an algorithm it does not know or cannot run (no retain data
for one that needs it), answers with an error reply naming the problem (Flower error code 6,
``MOD_FAILED_PRECONDITION``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import nn

from .. import posthoc
from ..data.tensors import as_tensor_data
from ..mpu.messages import MPU_UNLEARN, REQUEST_METRIC, MPUTrainReply, MPUTrainRequest, State
from ..protocol import ProtocolError
from ..tasks import Task, check_task
from .mod import UnlearningSetup

log = logging.getLogger("zkapex_flwr.client.mpu")

STATE_KEY = "zkapex-mpu"  # ConfigRecord in the node's Context: {"served": 1} once a request's last round is answered

# (copies received, request, context) -> the copies to send back, or None (be honest): red-teaming
ReplyHook = Callable[[list[State], MPUTrainRequest, Context], "list[State] | None"]


@dataclass
class MPUSetup:
    """What the MPU mod needs from the app for one node (built by the app's ``setup(context)``).

    ``forget``, ``retain`` and ``test`` may be a :class:`TensorData`, a torch ``Dataset``/``DataLoader``
    or a Hugging Face ``Dataset`` (``columns`` picks its columns). A setup function may also return a
    :class:`~zkapex_flwr.client.mod.UnlearningSetup`: its ``forget`` is the forget set, its ``data`` the
    retain data."""

    model: nn.Module  # the architecture; each copy's weights are loaded into it in turn
    task: Task
    forget: Any = None  # D_f: the node's private data to unlearn (never sent)
    retain: Any = None  # data to keep (for algorithms with needs_retain, e.g. graddiff)
    test: Any = None  # held-out data: research metrics only
    request: bool | Callable[[Message, Context], bool] = False  # ask for unlearning in train replies
    reply_hook: ReplyHook | None = None  # red-teaming: answer something other than the honest update
    seed: int = 0
    device: str = "cpu"
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"MPUSetup.model must be a torch nn.Module, got {type(self.model).__name__}")
        check_task(self.task)
        for name in ("forget", "retain", "test"):
            if getattr(self, name) is not None:
                setattr(self, name, as_tensor_data(getattr(self, name), columns=self.columns, name=f"MPUSetup.{name}"))

    @classmethod
    def from_unlearning_setup(cls, s: UnlearningSetup) -> MPUSetup:
        return cls(
            model=s.model, task=s.task, forget=s.forget, retain=s.data, test=s.test, seed=s.seed, device=s.device
        )


class MPUMod:
    """A Flower mod (``mod(message, context, call_next)``) answering ``train.mpu``."""

    def __init__(self, setup: Callable[[Context], MPUSetup | UnlearningSetup]):
        self.setup = setup
        self._setups: dict[tuple[int, int], MPUSetup] = {}

    # ---------------------------------------------------------------------------------- Flower API
    def __call__(self, message: Message, context: Context, call_next) -> Message:
        kind = message.metadata.message_type
        if kind == MPU_UNLEARN:
            return self.handle_mpu(message, context)
        reply = call_next(message, context)
        if kind == "train" and not reply.has_error():
            self._maybe_ask(message, reply, context)
        return reply

    def install(self, app: ClientApp) -> ClientApp:
        """Register the ``train.mpu`` handler on a decorator-style ClientApp (its own mods wrap it too)."""
        app.train("mpu")(self.handle_mpu)
        return app

    def setup_for(self, context: Context) -> MPUSetup:
        key = (context.run_id, context.node_id)
        if key not in self._setups:
            setup = self.setup(context)
            if isinstance(setup, UnlearningSetup):
                setup = MPUSetup.from_unlearning_setup(setup)
            if not isinstance(setup, MPUSetup):
                raise TypeError(f"the setup function must return an MPUSetup, got {type(setup).__name__}")
            self._setups[key] = setup
        return self._setups[key]

    # ------------------------------------------------------------------------------ in-band request
    def _maybe_ask(self, message: Message, reply: Message, context: Context) -> None:
        node = self.setup_for(context)
        wants = node.request(message, context) if callable(node.request) else bool(node.request)
        if not wants or self.served(context):
            return
        records = list(reply.content.metric_records.values())
        if not records:
            log.warning("node %d: its train reply has no MetricRecord to carry '%s'", context.node_id, REQUEST_METRIC)
            return
        records[0][REQUEST_METRIC] = 1

    @staticmethod
    def served(context: Context) -> bool:
        """Whether this node has answered the last round of an MPU request."""
        rec = context.state.config_records.get(STATE_KEY)
        return rec is not None and rec.get("served") == 1

    # --------------------------------------------------------------------------------- train.mpu
    def handle_mpu(self, message: Message, context: Context) -> Message:
        t0 = time.perf_counter()
        node = self.setup_for(context)
        try:
            req, copies = MPUTrainRequest.from_message(message)
        except ProtocolError as err:
            return _refuse(message, f"node {context.node_id}: {err}")
        if node.forget is None or len(node.forget) == 0:
            return _refuse(
                message,
                f"node {context.node_id}: no forget set (MPUSetup.forget is "
                f"{'empty' if node.forget is not None else 'None'}): there is nothing to unlearn",
            )
        try:
            algorithm = posthoc.get_algorithm(req.algorithm)
        except ValueError as err:
            return _refuse(message, f"node {context.node_id}: {err}")
        if getattr(algorithm, "needs_retain", False) and (node.retain is None or len(node.retain) == 0):
            return _refuse(
                message,
                f"node {context.node_id}: algorithm '{req.algorithm}' needs retain data and MPUSetup.retain is empty",
            )
        hooked = node.reply_hook(copies, req, context) if node.reply_hook is not None else None
        if hooked is None:
            try:
                out = self._unlearn_copies(node, algorithm, req, copies)
            except (FloatingPointError, ValueError) as err:  # a non-finite loss, an unknown optimizer
                return _refuse(message, f"node {context.node_id}: {err}")
            except (RuntimeError, KeyError) as err:  # a copy that does not fit the architecture
                return _refuse(message, f"node {context.node_id}: the copies do not load into its model ({err})")
        else:
            out = hooked
        if req.round == req.rounds:
            context.state.config_records[STATE_KEY] = ConfigRecord({"served": 1})
        metrics = {"unlearn-s": time.perf_counter() - t0, "forget-examples": float(len(node.forget))}
        reply = MPUTrainReply(req.request_id, req.nonce, req.round)
        return Message(reply.to_content(out, metrics), reply_to=message)

    @staticmethod
    def _unlearn_copies(node: MPUSetup, algorithm, req: MPUTrainRequest, copies: list[State]) -> list[State]:
        model = node.model
        out = []
        for copy in copies:
            model.load_state_dict(copy)
            posthoc.unlearn(
                model,
                node.task,
                node.forget,
                node.retain,
                algorithm,
                steps=req.steps,
                lr=req.lr,
                batch_size=req.batch_size,
                seed=node.seed + req.round,
                device=node.device,
                optimizer=req.optimizer,
            )
            model.cpu()
            out.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return out


def _refuse(message: Message, reason: str) -> Message:
    log.warning("%s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=message)


# --------------------------------------------------------------------------------- dishonest nodes
def _seed(context: Context, req: MPUTrainRequest) -> int:
    """A per-node, per-round seed (node ids are uint64; a torch seed must fit an int64)."""
    return (int(context.node_id) * 1000 + req.round) % 2**63


def zero_update(copies: list[State], req: MPUTrainRequest, context: Context) -> list[State]:
    """Send the copies back unchanged (claims the work, did none)."""
    return [{k: v.clone() for k, v in c.items()} for c in copies]


def garbage(copies: list[State], req: MPUTrainRequest, context: Context) -> list[State]:
    """Send random weights of the right shapes."""
    gen = torch.Generator().manual_seed(_seed(context, req))
    return [
        {
            k: (
                torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype)
                if v.is_floating_point()
                else v.clone()
            )
            for k, v in c.items()
        }
        for c in copies
    ]


def random_update(copies: list[State], req: MPUTrainRequest, context: Context, scale: float = 0.01) -> list[State]:
    """A plausible-looking update: each copy moved by its own small random step (not one update seen m ways)."""
    gen = torch.Generator().manual_seed(_seed(context, req))
    out = []
    for c in copies:
        moved = {}
        for k, v in c.items():
            if v.is_floating_point():
                rms = v.float().pow(2).mean().sqrt().clamp_min(1e-8)
                moved[k] = v + (scale * rms * torch.randn(v.shape, generator=gen)).to(v.dtype)
            else:
                moved[k] = v.clone()
        out.append(moved)
    return out


MPU_CHEATS: dict[str, ReplyHook] = {"zero-update": zero_update, "garbage": garbage, "random-update": random_update}

__all__ = ["MPUMod", "MPUSetup", "ReplyHook", "MPU_CHEATS", "zero_update", "garbage", "random_update"]
