"""What a benchmark figure needs next to it to be compared: device, CPU, versions, date, load."""

from __future__ import annotations

import os
import platform
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_name() -> str:
    """The CPU model and the cores this process may use, e.g. "AMD EPYC 7B13 (2 cores)"."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu} ({cores} cores)"


def machine_info(device: torch.device) -> dict[str, Any]:
    """device_name (the GPU's, or the CPU's on a CPU device), cpu, torch, torchvision, date
    (local, ISO 8601) and load_avg_1m (None where the OS has none)."""
    import torch  # here: the CLI imports this package for every command
    import torchvision

    cpu = cpu_name()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return {
        "device_name": name,
        "cpu": cpu,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
