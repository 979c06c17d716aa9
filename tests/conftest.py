from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.model import build_vae

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def assert_mc_close(estimate: float, target: float, se: float, *, n: int, seed: int, what: str, z_max: float = 4.0):
    """Assert that a Monte-Carlo ``estimate`` agrees with ``target`` within ``z_max`` standard errors."""
    z = (estimate - target) / se if se > 0 else (0.0 if estimate == target else math.inf)
    assert abs(z) < z_max, (
        f"{what}: estimate {estimate:.6g} vs {target:.6g}, standard error {se:.3g}, "
        f"z = {z:.2f} (|z| must be < {z_max}); N = {n}, seed = {seed}"
    )


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} (the project's shared data folder) is not beside the checkout")
    return SHARED_DATA


@pytest.fixture
def tiny_vae64():
    """A small default-architecture VAE in float64 (D=20, L=3) and binary data for it."""
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(latent_dim=3, hidden=(16,)), data_dim=20).double()
    x = torch.bernoulli(torch.full((6, 20), 0.3, dtype=torch.float64))
    return vae, x
