"""What a measurement ran on: recorded beside every result (local runs, fleet reports, benchmarks)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path


def describe_machine() -> dict:
    """CPU model and count, memory, platform, Python, torch (threads) and ezkl versions, and the date."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        info["ezkl"] = importlib.metadata.version("ezkl")
    except importlib.metadata.PackageNotFoundError:
        info["ezkl"] = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    return info
