"""Durable file writes shared by the client's state and the provider's reports."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The project's on-disk cache (``ZKAPEX_CACHE``, default ``~/.cache/zkapex_flwr``), created on first use:
    circuit keys, tokenizers, pretrained backbones."""
    path = Path(os.environ.get("ZKAPEX_CACHE", Path.home() / ".cache" / "zkapex_flwr"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a torn one (report outputs)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
