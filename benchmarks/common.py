"""Shared pieces of the speed benchmarks: the hand-written PyTorch baseline, the project's own
training step, machine facts and the machine's matmul rate."""

from __future__ import annotations

import os
import platform
import statistics
import time

import pyro
import torch

from pyro_vae import build_vae, load_config
from pyro_vae.closed_form import neg_elbo_analytic
from pyro_vae.config import ExperimentConfig
from pyro_vae.fast import build_loss
from pyro_vae.train import make_optimizer, train_step


def no_validation() -> None:
    """Switch Pyro's (and torch.distributions') argument validation off, as ``fit`` does for its
    training loop (the data are validated once, before training)."""
    pyro.enable_validation(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "pyro": pyro.__version__, "device": str(device)}  # fmt: skip
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Median fp32 GFLOP/s of an n x n matrix product: the machine's compute ceiling."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        rates.append(4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def flops_per_image(cfg: ExperimentConfig, data_dim: int = 784, particles: int = 1) -> float:
    """Forward + backward FLOPs of one training image: 3 x 2 x multiply-adds of the Linear layers
    (the encoder once, the decoder once per particle)."""
    enc = [data_dim, *cfg.model.hidden, 2 * cfg.model.latent_dim]
    dec = [cfg.model.latent_dim, *reversed(cfg.model.hidden), data_dim]
    macs = sum(a * b for a, b in zip(enc, enc[1:])) + particles * sum(a * b for a, b in zip(dec, dec[1:]))
    return 6.0 * macs


def hand_written_step(cfg: ExperimentConfig, device: torch.device, particles: int = 1):
    """The fairest fast plain-PyTorch step: the same networks (one fused encoder head), the
    closed-form loss (analytic KL), ``Adam(fused=True)``, ``zero_grad(set_to_none=True)``.
    Returns ``(step, vae, optim)``."""
    torch.manual_seed(0)
    vae = build_vae(cfg.model, 784).to(device)
    optim = torch.optim.Adam(vae.parameters(), lr=cfg.train.lr, fused=True)
    encoder, decoder = vae.encoder, vae.decoder

    def step(x: torch.Tensor) -> torch.Tensor:
        loc, scale = encoder.loc_scale(x)
        z = loc + scale * torch.randn((particles, *loc.shape), device=x.device)
        loss = neg_elbo_analytic(x, decoder(z), loc, scale).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss

    return step, vae, optim


def project_step(cfg: ExperimentConfig, device: torch.device, x: torch.Tensor):
    """The training step of :func:`pyro_vae.fit` for ``cfg``: its loss builder, optimizer and step.
    Returns ``(step, vae, optim)``."""
    torch.manual_seed(0)
    vae = build_vae(cfg.model, 784).to(device)
    optim = make_optimizer(vae, cfg.train.lr)
    loss_fn = build_loss(vae, cfg.train, x)

    def step(xb: torch.Tensor) -> torch.Tensor:
        return train_step(loss_fn, optim, xb)

    return step, vae, optim


def config(*overrides: str) -> ExperimentConfig:
    return load_config(None, list(overrides))
