"""Data for zkapex-flwr: offline image and code corpora, partitioning, domain shift, forget sets."""

from .code import code_splits, stdlib_files
from .forget import forget_classes, forget_package, forget_samples
from .images import DomainShift, dirichlet_partitions, image_splits, load_images
from .splits import UnlearningSplits
from .tensors import TensorData

__all__ = [
    "TensorData",
    "UnlearningSplits",
    "DomainShift",
    "image_splits",
    "code_splits",
    "load_images",
    "stdlib_files",
    "dirichlet_partitions",
    "forget_classes",
    "forget_samples",
    "forget_package",
]
