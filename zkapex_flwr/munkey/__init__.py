"""MUNKEY: a memory-augmented ViT that forgets an instance by deleting its key (see docs/munkey.md)."""

from zkapex_flwr.munkey.memory import KeyValueMemory

__all__ = ["KeyValueMemory"]
