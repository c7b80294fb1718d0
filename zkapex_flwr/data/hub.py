"""Hugging Face Hub data through flwr-datasets: any ``FederatedDataset`` and any of its partitioners.

A fleet scenario names a hub dataset as ``[data] dataset = "hf:<repo>"`` (e.g. ``hf:uoft-cs/cifar10``,
``hf:songweig/imagenet_sketch``), with the columns that hold images and labels (``image_key``,
``label_key``) and the partitioner of each profile's clients (``partitioner = "dirichlet"``, its α
from the profile or ``[data] alpha``; ``"iid"``, ``"pathological"``, ``"shard"``, ... with
``partitioner_options``). The fleet keeps its own pools (provider, test, clients) over the loaded
split, so hub data and the offline corpora behave the same way.

* :func:`load_hub_images` — one split of a hub image dataset as ``(images, labels)`` tensors, loaded
  with flwr-datasets' ``FederatedDataset``.
* :func:`make_partitioner` / :func:`partition_indices` — a flwr-datasets partitioner by name, applied
  to a label vector.
* :func:`codeparrot_sequences` — ``codeparrot/github-code-clean``, streamed, filtered to Python.

Loading needs network access to the Hub (not available in CI or on the offline machine); the tests
check the calls these functions make to flwr-datasets.
"""

from __future__ import annotations

import inspect

import torch

from .tensors import TensorData

PARTITIONERS = {
    "dirichlet": "DirichletPartitioner",
    "iid": "IidPartitioner",
    "pathological": "PathologicalPartitioner",
    "shard": "ShardPartitioner",
    "linear": "LinearPartitioner",
    "square": "SquarePartitioner",
    "exponential": "ExponentialPartitioner",
}


def hub_repo(dataset: str) -> str:
    """``hf:uoft-cs/cifar10`` → ``uoft-cs/cifar10``."""
    if not dataset.startswith("hf:") or len(dataset) <= 3:
        raise ValueError(f"a hub dataset is named 'hf:<repo>', got '{dataset}'")
    return dataset.removeprefix("hf:")


def make_partitioner(
    name: str, num_partitions: int, *, partition_by: str = "label", alpha: float = 1.0, seed: int = 0, **options
):
    """The flwr-datasets partitioner called ``name`` (:data:`PARTITIONERS`) for ``num_partitions`` clients.

    ``partition_by``, ``alpha`` and ``seed`` are given to partitioners that take them; ``options`` are
    further constructor arguments (e.g. ``num_classes_per_partition`` of the pathological partitioner)."""
    import flwr_datasets.partitioner as fp

    if name not in PARTITIONERS:
        raise ValueError(f"unknown partitioner '{name}'; choose one of {sorted(PARTITIONERS)}")
    cls = getattr(fp, PARTITIONERS[name])
    params = inspect.signature(cls.__init__).parameters
    kwargs = {"num_partitions": num_partitions}
    for key, value in (("partition_by", partition_by), ("alpha", alpha), ("seed", seed)):
        if key in params:
            kwargs[key] = value
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"partitioner '{name}' ({cls.__name__}) takes no option(s) {unknown}")
    kwargs.update(options)
    return cls(**kwargs)


def partition_indices(labels: torch.Tensor, partitioner) -> list[torch.Tensor]:
    """Run a flwr-datasets partitioner over ``labels``; the sample indices of every partition."""
    import datasets

    ds = datasets.Dataset.from_dict({"label": labels.tolist(), "row": list(range(len(labels)))})
    partitioner.dataset = ds
    return [
        torch.tensor(partitioner.load_partition(i)["row"], dtype=torch.long) for i in range(partitioner.num_partitions)
    ]


def federated_dataset(
    dataset: str, *, split: str = "train", subset: str | None = None, partitioner=None, seed: int = 0
):
    """flwr-datasets' ``FederatedDataset`` over a hub dataset (``hf:<repo>``), ``split`` partitioned by
    ``partitioner`` (default: one partition, for loading the whole split)."""
    from flwr_datasets import FederatedDataset

    return FederatedDataset(
        dataset=hub_repo(dataset),
        subset=subset,
        partitioners={split: partitioner if partitioner is not None else 1},
        shuffle=True,
        seed=seed,
    )


def load_hub_images(
    dataset: str,
    *,
    split: str = "train",
    subset: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
    image_size: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a hub image dataset as ``(images, labels)``: float images in [0, 1] shaped (N, C, H, W)
    and int64 labels; ``max_samples`` keeps a seeded sample, ``image_size`` resizes to a square."""
    from torchvision.transforms import v2

    fds = federated_dataset(dataset, split=split, subset=subset, seed=seed)
    ds = fds.load_split(split)
    for key in (image_key, label_key):
        if key not in ds.column_names:
            raise ValueError(
                f"{dataset} [{split}] has no column '{key}'; its columns: {ds.column_names} "
                "(set [data] image_key / label_key)"
            )
    if max_samples is not None and max_samples < len(ds):
        ds = ds.shuffle(seed=seed).select(range(max_samples))
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if image_size is not None:
        steps.insert(1, v2.Resize((image_size, image_size), antialias=True))
    tf = v2.Compose(steps)
    images = [tf(img) for img in ds[image_key]]
    chans = max(int(im.shape[0]) for im in images)
    xs = torch.stack([im.expand(chans, -1, -1) if im.shape[0] != chans else im for im in images])
    return xs, torch.tensor(ds[label_key], dtype=torch.long)


def codeparrot_sequences(tokenizer, n_sequences: int, seq_len: int = 512, languages=("Python",)) -> TensorData:
    """Stream ``codeparrot/github-code-clean`` and cut Python files into ``seq_len``-token windows."""
    import datasets

    from .code import chunk_tokens

    stream = datasets.load_dataset(
        "codeparrot/github-code-clean", split="train", streaming=True, languages=list(languages), trust_remote_code=True
    )
    seqs: list[list[int]] = []
    for row in stream:
        seqs.extend(chunk_tokens(tokenizer(row["code"])["input_ids"], seq_len))
        if len(seqs) >= n_sequences:
            break
    return TensorData((torch.tensor(seqs[:n_sequences], dtype=torch.long),))
