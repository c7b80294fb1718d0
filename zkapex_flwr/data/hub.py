"""Real loaders for the paper's hub datasets, behind the same interface as the offline data.

These need network access to the Hugging Face Hub (not available in CI or on the offline machine):
they are the code a deployment with internet uses, and they are not exercised by the tests.

* CIFAR-10 (``uoft-cs/cifar10``) and ImageNet-Sketch (``songweig/imagenet_sketch``) through
  flwr-datasets' ``FederatedDataset`` with a ``DirichletPartitioner`` — the client partitions.
* CodeParrot's cleaned GitHub code (``codeparrot/github-code-clean``), streamed, filtered to Python.
"""
from __future__ import annotations

import torch

from .tensors import TensorData

HUB_IMAGE_DATASETS = {"cifar10": ("uoft-cs/cifar10", "img", "label"),
                      "imagenet-sketch": ("songweig/imagenet_sketch", "image", "label")}


def federated_image_partition(name: str, partition_id: int, num_partitions: int, alpha: float = 0.5,
                              image_size: int = 224, seed: int = 0, split: str = "train") -> TensorData:
    """Load one client's Dirichlet partition of a hub image dataset as ``(images, labels)`` tensors."""
    if name not in HUB_IMAGE_DATASETS:
        raise ValueError(f"unknown hub image dataset '{name}'; choose one of {sorted(HUB_IMAGE_DATASETS)}")
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import DirichletPartitioner
    from torchvision.transforms import v2

    repo, image_col, label_col = HUB_IMAGE_DATASETS[name]
    fds = FederatedDataset(dataset=repo, partitioners={split: DirichletPartitioner(
        num_partitions=num_partitions, partition_by=label_col, alpha=alpha, seed=seed)})
    part = fds.load_partition(partition_id, split)
    tf = v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size)), v2.ToDtype(torch.float32, scale=True)])
    xs = torch.stack([tf(img.convert("RGB")) for img in part[image_col]])
    return TensorData((xs, torch.tensor(part[label_col], dtype=torch.long)))


def codeparrot_sequences(tokenizer, n_sequences: int, seq_len: int = 512, languages=("Python",)) -> TensorData:
    """Stream ``codeparrot/github-code-clean`` and cut Python files into ``seq_len``-token windows."""
    import datasets

    from .code import chunk_tokens

    stream = datasets.load_dataset("codeparrot/github-code-clean", split="train", streaming=True,
                                   languages=list(languages), trust_remote_code=True)
    seqs: list[list[int]] = []
    for row in stream:
        seqs.extend(chunk_tokens(tokenizer(row["code"])["input_ids"], seq_len))
        if len(seqs) >= n_sequences:
            break
    return TensorData((torch.tensor(seqs[:n_sequences], dtype=torch.long),))
