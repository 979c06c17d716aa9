"""Helpers shared by the tests (one place: no test module imports another's names)."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from pyro_vae.components.priors import StandardNormal
from pyro_vae.config import load_config
from pyro_vae.model import VAE
from pyro_vae.runs.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def run_as_script(monkeypatch, script: Path, *argv: str) -> int | None:
    """``python SCRIPT ARGV`` in this process (no interpreter to start): ``sys.argv`` set and the
    script's folder first on ``sys.path``, as Python does, and the file run as ``__main__``. Returns
    the exit status it gave ``sys.exit`` (argparse's 2 included), or None where it ended without."""
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    monkeypatch.syspath_prepend(str(Path(script).parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code
    return None


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


SMALL = [
    "data.subset=384",
    "model.latent_dim=2",
    "model.hidden=16",
    "train.batch_size=128",
    "train.eval_batch_size=200",
    "eval.iwae_k=20",
    "train.epochs=2",
    "train.device=cpu",
]


def small_cfg(*extra):
    return load_config(None, [*SMALL, *extra])


def metrics(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]


def assert_same_last_weights(run_a, run_b):
    a = load_checkpoint(run_a / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run_b / "checkpoints" / "last.pt")["model"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def conjugate_problem():
    """z ~ N(0, I_2), x | z ~ N(W z + b, 0.5^2 I_3) with orthogonal columns in W, so the exact
    posterior of each of three observations is a diagonal Gaussian (reachable by the guide)."""
    g = torch.Generator().manual_seed(0)
    w = torch.linalg.qr(torch.randn(3, 2, generator=g, dtype=torch.float64))[0] * torch.tensor([2.0, 0.7]).double()
    b = torch.randn(3, generator=g, dtype=torch.float64)
    sigma = 0.5
    x = torch.randn(3, 3, generator=g, dtype=torch.float64)
    post_cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / sigma**2)
    assert torch.allclose(post_cov, torch.diag(torch.diagonal(post_cov)))
    post_loc = (x - b) @ (post_cov @ w.T / sigma**2).T
    post_scale = torch.diagonal(post_cov).sqrt().expand(3, 2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2).double(), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + b, sigma).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(3, 2, dtype=torch.float64))
        scale = pyro.param("scale", torch.ones(3, 2, dtype=torch.float64), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide, x, post_loc, post_scale


class LinearEncoder(nn.Module):
    def __init__(self, a, c, scale):
        super().__init__()
        self.a, self.c, self.scale = a, c, scale

    def forward(self, x):
        loc = x @ self.a.T + self.c
        return dist.Normal(loc, self.scale.expand_as(loc)).to_event(1)


class GaussianLikelihood(nn.Module):
    """p(x | z) = N(h, sigma^2 I): a likelihood for the linear-Gaussian test model."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, h):
        return dist.Normal(h, self.sigma).to_event(1)


def linear_gaussian_vae(seed=0, d=6, l=2, sigma=0.6):
    """The linear-Gaussian model with a guide that is the exact posterior's mean map, perturbed,
    with inflated scales; returns the VAE, 40 draws of x and their exact log p(x)."""
    lg = LinearGaussian(seed, d, l, sigma)
    a_noisy = lg.a + 0.2 * torch.randn(lg.a.shape, generator=lg.generator, dtype=torch.float64)
    scale = lg.post_cov.diagonal().sqrt() * 1.5
    encoder = LinearEncoder(a_noisy, -a_noisy @ lg.b, scale)
    vae = VAE(StandardNormal(l).double(), GaussianLikelihood(sigma), encoder, lg.decoder)
    x = lg.marginal.sample((40,))
    return vae, x, lg.marginal.log_prob(x)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG file whose header declares ``width`` x ``height`` grey pixels, with almost no pixel data:
    a few hundred bytes that claim gigapixels (a decompression bomb as PIL sees it, at open)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path
