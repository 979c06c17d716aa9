"""Random state that a check or an evaluation borrows and gives back."""

from __future__ import annotations

import torch


def fork_rng(device: torch.device | str):
    """:func:`torch.random.fork_rng` over the CPU's generator and, for a CUDA ``device``, that
    device's: what runs inside draws from a copy, and the caller's stream is left where it was."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
