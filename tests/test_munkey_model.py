"""MUNKEY's memory and model: add/delete by id and by class, errors, deletion == rebuild, state round trip."""

from __future__ import annotations

import pytest
import torch

from zkapex_flwr.data.tensors import TensorData
from zkapex_flwr.munkey import KeyValueMemory, MunkeyViT, Retrieval, build_munkey, train_steps, tune_retrieval
from zkapex_flwr.tasks import ImageTask

TINY = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, patch_size=4, global_pool="avg")


def _rows(ids, d=3, v=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.as_tensor(ids)
    return ids, torch.randn(len(ids), d, generator=g), torch.randn(len(ids), v, generator=g), ids % 2


def _data(n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorData((torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)))


@pytest.fixture(scope="module")
def trained():
    """A tiny backbone trained for a few steps on random 8×8 images (the tests need a fixed, frozen one)."""
    torch.set_num_threads(1)
    model = MunkeyViT.build((1, 8, 8), 10, seed=0, retrieval=Retrieval(k=3, temperature=0.1, lam=2.0), **TINY)
    train_steps(model.backbone, ImageTask(), _data(64, 1), steps=5, lr=3e-3, batch_size=16)
    return model.freeze()


def test_memory_add_delete_by_id_and_class():
    m = KeyValueMemory(3, 2)
    ids, k, v, lab = _rows([7, 2, 5, 9])
    m.add(ids, k, v, lab)
    assert len(m) == 4 and m.ids.tolist() == [2, 5, 7, 9]  # sorted by id whatever the insertion order
    row = m.index_of([7])[0]
    assert torch.equal(m.keys[row], k[0]) and torch.equal(m.values[row], v[0])
    m.delete([5])
    assert m.ids.tolist() == [2, 7, 9] and 5 not in m
    gone = m.delete_class(1)  # labels = id % 2: 7 and 9
    assert gone.tolist() == [7, 9] and m.ids.tolist() == [2]
    assert m.delete_class(1).numel() == 0  # nothing left of that class
    # entry bytes: id, label, D, V (int64) then key and value (float32), little-endian
    b = m.entry_bytes(0)
    assert len(b) == 4 * 8 + 3 * 4 + 2 * 4
    assert int.from_bytes(b[:8], "little") == 2
    assert b[32:44] == m.keys[0].numpy().astype("<f4").tobytes()


def test_memory_errors_name_the_ids_and_change_nothing():
    m = KeyValueMemory(3, 2)
    m.add(*_rows([1, 2, 3]))
    before = m.state()
    with pytest.raises(ValueError, match=r"already in the memory: \[2\]"):
        m.add(*_rows([4, 2]))
    with pytest.raises(ValueError, match=r"duplicate instance ids in this batch: \[8\]"):
        m.add(*_rows([8, 8]))
    with pytest.raises(ValueError, match=">= 0"):
        m.add(*_rows([-1]))
    with pytest.raises(ValueError, match="width"):
        m.add(torch.tensor([10]), torch.zeros(1, 4), torch.zeros(1, 2), torch.tensor([0]))
    with pytest.raises(KeyError, match=r"not in the memory: \[6, 9\]"):
        m.delete([1, 6, 9])
    after = m.state()
    assert all(torch.equal(before[k], after[k]) for k in before)  # a refused call deletes/adds nothing


def test_memory_state_round_trip_and_order_independence():
    a, b = KeyValueMemory(3, 2), KeyValueMemory(3, 2)
    ids, k, v, lab = _rows([4, 1, 3, 0])
    a.add(ids, k, v, lab)
    b.add(ids[2:], k[2:], v[2:], lab[2:])
    b.add(ids[:2], k[:2], v[:2], lab[:2])
    for key in ("ids", "keys", "values", "labels"):
        assert torch.equal(getattr(a, key), getattr(b, key))  # the same set gives the same tensors
    c = KeyValueMemory.from_state(a.state())
    d = KeyValueMemory(3, 2)
    d.load_state_dict(a.state_dict())  # variable-sized buffers load through nn.Module too
    for key in ("ids", "keys", "values", "labels"):
        assert torch.equal(getattr(a, key), getattr(c, key)) and torch.equal(getattr(a, key), getattr(d, key))
    assert KeyValueMemory.from_state(KeyValueMemory(3, 2).state()).keys.shape == (0, 3)


def test_model_forward_shape_and_empty_memory(trained):
    x = _data(5, 2).tensors[0]
    model = trained.copy()
    assert len(model.memory) == 0
    with torch.no_grad():
        empty = model(x)
        assert empty.shape == (5, 10)
        assert torch.allclose(empty, model.backbone(x), atol=1e-6)  # no memory: the backbone alone
        model.add_instances([3, 1], x[:2], torch.tensor([4, 4]))
        logits = model(x)
    assert logits.shape == (5, 10)
    # every query reads the two keys (k=3 > 2 rows): +λ·1 on class 4, nothing elsewhere
    delta = logits - empty
    assert torch.allclose(delta[:, 4], torch.full((5,), 2.0), atol=1e-5)
    assert torch.allclose(delta[:, :4], torch.zeros(5, 4), atol=1e-5)
    assert model.memory.keys.shape == (2, 4 * 16)  # default keys="tokens": 4 patch tokens × embed_dim 16
    assert torch.allclose(model.memory.keys.norm(dim=-1), torch.ones(2))


def test_model_add_errors_and_forget_by_id_and_class(trained):
    data = _data(40, 3)
    x, y = data.tensors
    model = build_munkey(trained.backbone, 10, trained.retrieval, torch.arange(100, 140), data)
    with pytest.raises(ValueError, match=r"already in the memory: \[105\]"):
        model.add_instances([105], x[:1], y[:1])
    with pytest.raises(ValueError, match="duplicate instance ids in this batch"):
        model.add_instances([1, 1], x[:2], y[:2])
    with pytest.raises(KeyError, match=r"\[7\]"):
        model.forget([101, 7])
    assert len(model.memory) == 40
    model.forget([101, 102])
    assert not torch.isin(model.memory.ids, torch.tensor([101, 102])).any()
    c = int(y[0])
    expected = [i for i in (torch.arange(100, 140)[y == c]).tolist() if i not in (101, 102)]
    gone = model.forget_class(c)
    assert gone.tolist() == expected and len(expected) > 0
    assert not (model.memory.labels == c).any() and len(model.memory) == 38 - len(expected)


@pytest.mark.parametrize("keys", ["tokens", "pooled"])
def test_deletion_is_the_model_built_without_them_bit_for_bit(trained, keys):
    data = _data(150, 4)  # > 2 encode chunks, so deletion changes the chunking of the rebuilt memory
    ids = torch.arange(1000, 1150)
    full = build_munkey(trained.backbone, 10, trained.retrieval, ids, data, keys=keys)
    assert full.memory.key_dim == (64 if keys == "tokens" else 16)
    drop = torch.tensor([1000, 1007, 1064, 1065, 1149])
    query = torch.cat([_data(33, 5).tensors[0], data.tensors[0][drop - 1000]])  # some query their own key
    keep = ~torch.isin(ids, drop)
    deleted = full.copy()
    deleted.forget(drop)
    rebuilt = build_munkey(
        trained.backbone, 10, trained.retrieval, ids[keep], data.subset(torch.nonzero(keep)[:, 0]), keys=keys
    )
    for key, value in deleted.memory.state().items():
        assert torch.equal(value, rebuilt.memory.state()[key]), key
    with torch.no_grad():
        assert torch.equal(deleted(query), rebuilt(query))
        assert not torch.equal(full(query), deleted(query))  # the deleted keys did matter
    # by class: the same
    c = 3
    by_class = full.copy()
    by_class.forget_class(c)
    keep = data.tensors[1] != c
    rebuilt = build_munkey(
        trained.backbone, 10, trained.retrieval, ids[keep], data.subset(torch.nonzero(keep)[:, 0]), keys=keys
    )
    with torch.no_grad():
        assert torch.equal(by_class(query), rebuilt(query))
    # keys do not depend on what else was encoded alongside them
    assert torch.equal(full.encode(data.tensors[0][5:6]), full.encode(data.tensors[0])[5:6])


@pytest.mark.parametrize("keys", ["tokens", "pooled"])
def test_model_state_round_trip(trained, keys):
    data = _data(20, 6)
    model = build_munkey(trained.backbone, 10, trained.retrieval, torch.arange(20) * 3, data, trained.arch, keys=keys)
    model.forget([3])
    again = MunkeyViT.from_state(model.state_dict(), model.config())
    query = _data(7, 7).tensors[0]
    with torch.no_grad():
        assert torch.equal(model(query), again(query))
    assert again.memory.ids.tolist() == model.memory.ids.tolist() and again.retrieval == model.retrieval
    assert again.keys == keys and model.config()["keys"] == keys
    assert not any(p.requires_grad for p in again.backbone.parameters())


def test_retrieval_tuning_uses_only_the_data_given(trained):
    val = _data(60, 8)
    choice, table = tune_retrieval(trained, val, grid={"k": (1, 5), "temperature": (0.1,), "lam": (0.0, 1.0)})
    assert len(table) == 4 and choice.k in (1, 5) and choice.lam in (0.0, 1.0)
    best = max(r["accuracy"] for r in table)
    assert [r for r in table if r["k"] == choice.k and r["lam"] == choice.lam][0]["accuracy"] == best
    assert len(trained.memory) == 0  # the model is left unchanged
    with pytest.raises(ValueError, match="k must be"):
        Retrieval(k=0)
    with pytest.raises(ValueError, match="keys must be one of"):
        MunkeyViT(trained.backbone, 10, keys="pixels")
