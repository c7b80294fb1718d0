"""Forget-set builders: turn a deletion request into the indices of D_f inside a pool."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def forget_classes(labels: torch.Tensor, classes: Sequence[int], num_classes: int | None = None) -> torch.Tensor:
    """Indices of every sample whose label is one of ``classes`` (forget whole classes)."""
    classes = list(classes)
    if not classes:
        raise ValueError("forget_classes: the request names no class")
    present = set(torch.unique(labels).tolist())
    for c in classes:
        if num_classes is not None and not 0 <= c < num_classes:
            raise ValueError(f"forget_classes: class {c} is outside 0..{num_classes - 1}")
        if c not in present:
            raise ValueError(f"forget_classes: class {c} has no sample in the training pool")
    return torch.nonzero(torch.isin(labels, torch.tensor(classes)), as_tuple=True)[0]


def forget_samples(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct random sample indices out of ``n`` (forget named samples)."""
    if count <= 0:
        raise ValueError(f"forget_samples: count must be positive, got {count}")
    if count >= n:
        raise ValueError(f"forget_samples: cannot forget {count} of only {n} samples")
    rng = np.random.default_rng(seed)
    return torch.as_tensor(np.sort(rng.choice(n, size=count, replace=False)), dtype=torch.long)


def forget_package(sample_packages: Sequence[str], package: str) -> torch.Tensor:
    """Indices of every code sample that comes from ``package`` (forget a code package)."""
    idx = [i for i, p in enumerate(sample_packages) if p == package]
    if not idx:
        raise ValueError(f"forget_package: package '{package}' has no sample in the corpus")
    return torch.as_tensor(idx, dtype=torch.long)


def complement(n: int, index: torch.Tensor) -> torch.Tensor:
    """All indices in ``range(n)`` that are not in ``index``."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[index] = False
    return torch.nonzero(keep, as_tuple=True)[0]
