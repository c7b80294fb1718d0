import os

# Under pytest-xdist (make test: two workers on two cores) each worker computes on one thread, so the
# workers do not oversubscribe the cores; ezkl's prover (rayon) reads its thread count from the environment.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("RAYON_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def digits_setup():
    """A tiny ViT trained on the provider's digits and personalized on client 0 (no domain shift).

    The client holds no sample of the forget class, so whatever θp knows of class 3 came from θg
    (i.e. from D_f): the setting in which unlearning D_f must lower forget accuracy.
    """
    from zkapex_flwr.data.images import DomainShift, image_splits
    from zkapex_flwr.models import build_vit, clone_model
    from zkapex_flwr.tasks import task_for
    from zkapex_flwr.training import seed_everything, train

    seed_everything(0)
    task = task_for("image")
    splits = image_splits("digits", shift=DomainShift(), forget_classes_=(3,), seed=0)
    theta_g = train(build_vit((1, 8, 8), 10, seed=0), task, splits.provider_train, epochs=40, lr=2e-3)
    own = splits.client_train
    splits.client_train = own.subset(torch.nonzero(own.tensors[1] != 3, as_tuple=True)[0])
    theta_p = train(clone_model(theta_g), task, splits.client_train, epochs=10, lr=5e-4)
    return task, splits, theta_g, theta_p


@pytest.fixture(scope="module")
def task_identity():
    """Messages are created outside a Flower runtime in some tests: give them the identity a ServerApp would have."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = {k: getattr(TaskIdentity, "_" + k, None) for k in ("run_id", "node_id", "task_id")}
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    for k, v in saved.items():
        setattr(TaskIdentity, "_" + k, v)


# Under `-n 2 --dist loadfile` each test file goes to one worker, in collection order. The longest files
# (measured: docs/testing.md) go first, so the two workers finish close together instead of one of them
# starting a five-minute file near the end.
LONGEST_FIRST = (
    "test_fleet.py",
    "test_deployment_resume.py",
    "test_deployment.py",
    "test_quality_bench.py",
    "test_deletion_lasts.py",
    "test_mpu_bench.py",
    "test_pipeline.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole, in order
