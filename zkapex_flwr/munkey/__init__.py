"""MUNKEY: a memory-augmented ViT that forgets an instance by deleting its key (see docs/munkey.md).

:class:`KeyValueMemory` is the deletable memory (one row per training instance), :class:`MunkeyViT` the
model (frozen timm ViT backbone + memory); :func:`build_munkey` builds one around a trained backbone and
:func:`tune_retrieval` picks its retrieval settings on base-pool data only.
"""

from zkapex_flwr.munkey.memory import KeyValueMemory
from zkapex_flwr.munkey.model import ENCODE_CHUNK, MunkeyViT, Retrieval, build_munkey, train_steps, tune_retrieval

__all__ = ["ENCODE_CHUNK", "KeyValueMemory", "MunkeyViT", "Retrieval", "build_munkey", "train_steps", "tune_retrieval"]
