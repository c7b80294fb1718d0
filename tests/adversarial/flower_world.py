"""The in-process Flower world the provider-side adversarial tests share: a digits MLP and its ClientApp."""
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from zkapex_flwr.client import UnlearningSetup, VerifiedUnlearningMod
from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.tasks import ImageTask
from zkapex_flwr.training import train


class MLP(nn.Module):
    """fc1 of 32 × 64 and a 10-class head on flattened 8 × 8 digits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.relu(self.mlp.fc1(x.flatten(1))))


def client_app(x, y, *, samples: int = 80, stride: int = 100, train_kwargs: dict | None = None,
               hooks: dict | None = None) -> ClientApp:
    """A ClientApp with the unlearning mod: node ``pid`` holds digits ``300 + stride·pid`` onward.

    ``train_kwargs``: the local FedAvg training (``train``'s epochs, lr, …); None: a node sends θg back unchanged.
    ``hooks``: partition id → the bundle hook of a dishonest node (``UnlearningSetup.bundle_hook``).
    """
    def setup(context: Context) -> UnlearningSetup:
        pid = int(context.node_config["partition-id"])
        idx = torch.arange(300 + stride * pid, 300 + stride * pid + samples)
        return UnlearningSetup(model=MLP(), task=ImageTask(), data=TensorData((x[idx], y[idx])), seed=pid,
                               bundle_hook=(hooks or {}).get(pid))

    mod = VerifiedUnlearningMod(setup)
    app = ClientApp()

    @app.train()
    def local_train(msg: Message, context: Context) -> Message:
        node = mod.setup_for(context)
        node.model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        if train_kwargs is not None:
            kwargs = {k: (v(context) if callable(v) else v) for k, v in train_kwargs.items()}
            train(node.model, node.task, node.data, **kwargs)
        return Message(RecordDict({"arrays": ArrayRecord(node.model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(node.data)})}), reply_to=msg)

    return mod.install(app)
