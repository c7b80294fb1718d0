"""The ready ClientApp of the fleet simulations: ordinary FedAvg training plus the unlearning mod.

``app`` is what ``flwr run .`` loads (pyproject ``[tool.flwr.app.components]``); it reads the scenario
file and the output folder from the run config (``scenario``, ``out``). :func:`build_client_app` binds
them instead (``zkapex simulate``). Per node, the fleet's :func:`simulations.fleet.node_setup` supplies
model, private data, device profile and behaviour; the app itself is what any Flower user would
write, with verified unlearning added by one line (``VerifiedUnlearningMod(setup).install(app)``) and
MPU by another (``MPUMod(setup)`` in its mods, ``install(app)`` for the ``train.mpu`` handler).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from zkapex_flwr.client.mod import VerifiedUnlearningMod
from zkapex_flwr.client.mpu import MPUMod
from zkapex_flwr.client.munkey import MunkeyMod
from zkapex_flwr.training import accuracy, train


def build_client_app(scenario: str | None = None, out: str | None = None) -> ClientApp:
    from simulations.fleet import (  # the fleet plugs in here
        dropout_mod_for,
        mpu_setup,
        node_setup,
        training_data,
        wiretap_mod_for,
    )

    def setup(context: Context):
        return node_setup(context, scenario, out)

    unlearning = VerifiedUnlearningMod(setup)
    from simulations.munkey_fleet import ResearchMod, munkey_node_setup

    mpu = MPUMod(lambda context: mpu_setup(context, scenario))  # client-held forget sets (MPU)
    munkey = MunkeyMod(lambda context: munkey_node_setup(context, scenario))  # MUNKEY fleets (method = "munkey")
    app = ClientApp(
        mods=[dropout_mod_for(scenario), wiretap_mod_for(scenario, out), mpu, ResearchMod(munkey, scenario)]
    )

    @app.train()
    def local_train(msg: Message, context: Context) -> Message:
        node = unlearning.setup_for(context)
        cfg = msg.content.config_records["config"]
        model = node.model
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        train(
            model,
            node.task,
            training_data(context, node, int(cfg.get("server-round", 0)), scenario),
            epochs=int(cfg.get("local-epochs", 1)),
            lr=float(cfg.get("lr", 1e-3)),
            batch_size=int(cfg.get("batch-size", 32)),
            seed=node.seed + int(cfg.get("server-round", 0)),
            device=node.device,
        )
        model.cpu()
        return Message(
            RecordDict(
                {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(node.data)})}
            ),
            reply_to=msg,
        )

    @app.evaluate()
    def local_evaluate(msg: Message, context: Context) -> Message:
        node = unlearning.setup_for(context)
        model = node.model
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        acc = accuracy(model, node.task, node.test) if node.test is not None else float("nan")
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": len(node.test or ()), "accuracy": acc})}), reply_to=msg
        )

    unlearning.install(app)  # verified unlearning: the one line
    mpu.install(app)  # MPU: a node unlearns its own data on perturbed copies of θg
    munkey.install(app)  # MUNKEY: key deletion, proven on a committed key set
    return app


app = build_client_app()
