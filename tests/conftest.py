from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.model import build_vae

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a GPU is and are skipped, saying why, where none is."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


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


class LinearGaussian:
    """z ~ N(0, I_l), x | z ~ N(W z + b, sigma^2 I_d), in float64: the exact posterior is
    N(a (x - b), post_cov) and the exact marginal p(x) = N(b, W W^T + sigma^2 I)."""

    def __init__(self, seed: int, d: int, l: int, sigma: float) -> None:
        from torch import nn

        self.generator = g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(d, l, generator=g, dtype=torch.float64)
        self.b = torch.randn(d, generator=g, dtype=torch.float64)
        self.sigma = sigma
        self.decoder = nn.Linear(l, d).double()
        with torch.no_grad():
            self.decoder.weight.copy_(self.w)
            self.decoder.bias.copy_(self.b)
        self.post_cov = torch.linalg.inv(torch.eye(l, dtype=torch.float64) + self.w.T @ self.w / sigma**2)
        self.a = self.post_cov @ self.w.T / sigma**2
        cov_x = self.w @ self.w.T + sigma**2 * torch.eye(d, dtype=torch.float64)
        self.marginal = torch.distributions.MultivariateNormal(self.b, cov_x)


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


def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path, shared_data):
    """The real MNIST test files, plus a 300-image stand-in for the training files (not shipped)."""
    images = np.frombuffer(gzip.open(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    images = images.reshape(-1, 28, 28)
    for folder in ("MNIST", "FashionMNIST"):  # Fashion-MNIST has the same layout; MNIST digits stand in
        raw = tmp_path / folder / "raw"
        raw.mkdir(parents=True)
        _write_idx(raw / "t10k-images-idx3-ubyte", images, 2051)
        _write_idx(raw / "t10k-labels-idx1-ubyte", labels, 2049)
        _write_idx(raw / "train-images-idx3-ubyte", images[:300], 2051)
        _write_idx(raw / "train-labels-idx1-ubyte", labels[:300], 2049)
    return tmp_path
