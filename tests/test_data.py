"""Offline data: splits, partitions, domain shift, code corpus, forget-set builders."""

import pytest
import torch

from zkapex_flwr.data import (
    DomainShift,
    code_splits,
    dirichlet_partitions,
    forget_classes,
    forget_package,
    forget_samples,
    image_splits,
)


def test_image_splits_roles_are_consistent():
    s = image_splits("digits", forget_classes_=(3, 5), seed=1)
    assert not torch.isin(s.provider_retain.tensors[1], torch.tensor([3, 5])).any()
    assert torch.isin(s.forget.tensors[1], torch.tensor([3, 5])).all()
    assert len(s.provider_retain) + len(s.forget) == len(s.provider_train)
    assert not torch.isin(s.client_test.tensors[1], torch.tensor([3, 5])).any()
    assert torch.equal(s.client_retain.tensors[0], s.client_train.tensors[0])
    assert torch.isin(s.client_unseen.tensors[1], torch.tensor([3, 5])).all()


def test_image_splits_are_reproducible_and_seed_dependent():
    a, b, c = image_splits("digits", seed=4), image_splits("digits", seed=4), image_splits("digits", seed=5)
    assert torch.equal(a.client_train.tensors[0], b.client_train.tensors[0])
    assert not torch.equal(a.client_train.tensors[1][:50], c.client_train.tensors[1][:50])


def test_dirichlet_partitions_cover_pool_without_overlap():
    labels = torch.arange(600) % 10
    parts = dirichlet_partitions(labels, 4, alpha=0.3, seed=0)
    joined = torch.cat(parts)
    assert len(joined) == 600 and len(torch.unique(joined)) == 600


def test_domain_shift_changes_inputs_deterministically():
    x = torch.rand(5, 1, 8, 8)
    shift = DomainShift.for_client(2, seed=0)
    assert torch.equal(shift(x), shift(x))
    assert not torch.allclose(shift(x), x)
    assert torch.equal(DomainShift()(x), x)


def test_forget_builders_and_errors():
    labels = torch.tensor([0, 1, 2, 1, 0])
    assert forget_classes(labels, [1]).tolist() == [1, 3]
    with pytest.raises(ValueError, match="class 7 has no sample"):
        forget_classes(labels, [7])
    with pytest.raises(ValueError, match="names no class"):
        forget_classes(labels, [])
    assert len(forget_samples(100, 10, seed=0)) == 10
    with pytest.raises(ValueError, match="count must be positive"):
        forget_samples(100, 0, seed=0)
    assert forget_package(["a", "json", "json"], "json").tolist() == [1, 2]
    with pytest.raises(ValueError, match="package 'nope' has no sample"):
        forget_package(["a"], "nope")
    with pytest.raises(ValueError, match="unknown forget_mode"):
        image_splits("digits", forget_mode="everything")


def test_stdlib_code_corpus_splits():
    s, tok = code_splits(num_clients=4, max_provider_seqs=800, max_client_seqs=200, seed=0)
    assert s.task == "lm" and s.meta["forget_package"] == "json"
    assert s.forget.tensors[0].shape[1] == 64
    assert int(s.provider_train.tensors[0].max()) < len(tok)
    # D_f is inside the provider's training data; the MIA non-members are not
    train_rows = {tuple(r) for r in s.provider_train.tensors[0].tolist()}
    assert all(tuple(r) in train_rows for r in s.forget.tensors[0].tolist())
    assert not any(tuple(r) in train_rows for r in s.client_unseen.tensors[0].tolist())
    # the locally trained byte-level BPE round-trips: a forget window decodes to text of the json package
    from zkapex_flwr.data.code import stdlib_files

    json_source = "".join(f.path.read_text() for f in stdlib_files() if f.package == "json")
    assert tok.decode(s.forget.tensors[0][0].tolist()) in json_source
    with pytest.raises(ValueError, match="forget package 'no_such_pkg' is not in the standard library"):
        code_splits(forget_package_="no_such_pkg")


def test_users_data_comes_in_as_torch_dataset_dataloader_or_hugging_face_dataset():
    import datasets
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    from zkapex_flwr.client import UnlearningSetup
    from zkapex_flwr.data.tensors import TensorData, as_tensor_data
    from zkapex_flwr.tasks import ImageTask

    x, y = torch.randn(10, 1, 8, 8), torch.arange(10) % 3

    class Dicts(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"image": x[i], "label": y[i]}

    hf = datasets.Dataset.from_dict({"image": x.numpy(), "label": y.numpy(), "caption": [str(i) for i in range(10)]})
    for given in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4), Dicts(), hf):
        got = as_tensor_data(given)
        assert isinstance(got, TensorData) and len(got) == 10, type(given)
        assert torch.allclose(got.tensors[0].float(), x) and torch.equal(got.tensors[1].long(), y), type(given)
    assert len(as_tensor_data(hf, columns=["label"]).tensors) == 1
    only_images = as_tensor_data(DataLoader(x, batch_size=4))  # batches of a bare tensor are concatenated too
    assert len(only_images) == 10 and torch.equal(only_images.tensors[0], x)
    with pytest.raises(ValueError, match=r"cannot take \['pixels'\]"):
        as_tensor_data(hf, columns=["pixels"])
    with pytest.raises(TypeError, match="must be a TensorData, a torch Dataset"):
        as_tensor_data(42)

    setup = UnlearningSetup(
        model=torch.nn.Linear(64, 3),
        task=ImageTask(),
        data=DataLoader(TensorDataset(x, y), batch_size=3),
        test=hf,
        columns=("image", "label"),
    )
    assert isinstance(setup.data, TensorData) and isinstance(setup.test, TensorData) and len(setup.test) == 10

    class NoLoss:
        name = "broken"

        def forward(self, model, batch):
            return model(batch[0])

    with pytest.raises(TypeError, match=r"NoLoss is not a zkapex_flwr.tasks.Task: it lacks \['per_sample_loss'"):
        UnlearningSetup(model=torch.nn.Linear(64, 3), task=NoLoss(), data=TensorDataset(x, y))
