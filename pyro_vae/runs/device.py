"""The device a run uses (``train.device``, every ``--device``) and the machine it records."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import numpy as np
import pyro
import torch

from pyro_vae._version import __version__
from pyro_vae.config import DEVICE_NAMES, ConfigError, is_device_name


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if not is_device_name(name):
        raise ConfigError(f"device {name!r} is not one of: {DEVICE_NAMES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available here; use cpu or auto")
    return torch.device(name)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, platform, threads and device, as a run's ``summary.json`` records them."""
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": np.__version__,
        "pyro_vae": __version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # ATen's build (pyro_vae.cpu_kernels)
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
