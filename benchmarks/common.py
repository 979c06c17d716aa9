"""Shared pieces of the speed benchmarks: the hand-written PyTorch baseline, the project's own
training step, machine facts and the machine's matmul rate."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
import types

import pyro
import torch

from pyro_vae import build_vae, load_config
from pyro_vae.config import ExperimentConfig
from pyro_vae.objectives.closed_form import iwae_bound, log_weights, neg_elbo_analytic, neg_elbo_monte_carlo
from pyro_vae.objectives.fast import build_loss
from pyro_vae.training.engine import StepEngine, choose_engine, make_optimizer

TRAIN_IMAGES = 50_000  # binarized MNIST's training split: what `pyro-vae train` would choose the engine for


def no_validation() -> None:
    """Switch Pyro's (and torch.distributions') argument validation off, as ``fit`` does for its
    training loop (the data are validated once, before training)."""
    pyro.enable_validation(False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # ATen's build (pyro_vae.cpu_kernels)
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": str(device),
    }
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


def counted_flops_per_image(cfg: ExperimentConfig, particles: int = 1, batch: int = 16) -> float:
    """Forward + backward FLOPs of one training image of any network, counted by
    ``torch.utils.flop_counter`` on the encoder and ``particles`` decoder passes (for the
    convolutional networks, where :func:`flops_per_image`'s dense formula does not apply)."""
    from torch.utils.flop_counter import FlopCounterMode

    vae = build_vae(cfg.model, 784, (28, 28))
    x = torch.rand(batch, 784)
    with FlopCounterMode(display=False) as counter:
        z = vae.encoder(x).rsample((particles,))
        vae.decoder(z).sum().backward()
    return counter.get_total_flops() / batch


def hand_written_step(cfg: ExperimentConfig, device: torch.device, particles: int = 1, graph: bool = False):
    """The fairest fast plain-PyTorch step: the same networks (one fused encoder head), the
    closed-form loss (analytic KL), ``Adam(fused=True)``, ``zero_grad(set_to_none=True)``; with
    ``graph`` (CUDA) the whole step captured in one CUDA graph that reads a static input buffer.
    Returns ``(step, vae, optim)``: ``step(x)`` trains on the batch ``x``."""
    torch.manual_seed(0)
    vae = build_vae(cfg.model, 784).to(device)
    lr = torch.tensor(cfg.train.lr, device=device) if graph else cfg.train.lr  # a captured lr is read from memory
    optim = torch.optim.Adam(vae.parameters(), lr=lr, fused=True, capturable=graph)
    encoder, decoder = vae.encoder, vae.decoder

    def step(x: torch.Tensor) -> torch.Tensor:
        loc, scale = encoder.loc_scale(x)
        z = loc + scale * torch.randn((particles, *loc.shape), device=x.device)
        loss = neg_elbo_analytic(x, decoder(z), loc, scale).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        return loss

    if not graph:
        return step, vae, optim
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def replay(x: torch.Tensor) -> None:
        if x.shape[0] not in graphs:
            static = x.clone()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    step(static)
            torch.cuda.current_stream(device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step(static)
            graphs[x.shape[0]] = (g, static)
        g, static = graphs[x.shape[0]]
        static.copy_(x)
        g.replay()

    return replay, vae, optim


def plain_loss(kind: str, particles: int = 1):
    """``loss(encoder, decoder, x) -> mean negative objective`` of plain PyTorch for ``kind``:
    ``trace`` (Monte-Carlo KL), ``mean_field`` (analytic KL), ``iwae`` (the IWAE bound over
    ``particles`` samples) or ``iwae_dreg`` (its value, with DReG gradients: a hook on z squares the
    encoder's normalised weights, as in Tucker et al.'s code; eager only)."""

    def loss(encoder, decoder, x: torch.Tensor) -> torch.Tensor:
        loc, scale = encoder.loc_scale(x)
        if kind == "mean_field":
            z = loc + scale * torch.randn_like(loc)
            return neg_elbo_analytic(x, decoder(z), loc, scale).mean()
        z = loc + scale * torch.randn((particles, *loc.shape), dtype=x.dtype)
        if kind == "trace":
            return neg_elbo_monte_carlo(x, decoder(z), z, loc, scale).mean()
        if kind == "iwae":
            return -iwae_bound(log_weights(x, decoder(z), z, loc, scale)).mean()
        log_w = log_weights(x, decoder(z), z, loc.detach(), scale.detach())  # log q at stopped parameters
        weights = torch.softmax(log_w.detach(), 0)
        if z.requires_grad:
            z.register_hook(lambda g: g * weights.unsqueeze(-1))
        surrogate = (weights * log_w).sum(0)
        value = iwae_bound(log_w)
        return -(value.detach() + surrogate - surrogate.detach()).mean()

    return loss


def plain_step(cfg: ExperimentConfig, kind: str, particles: int = 1, compiled: bool = False):
    """The fastest plain-PyTorch training step we can write for ``kind`` (:func:`plain_loss`) on
    ``cfg``'s networks, ``step(x)``: eager (``loss.backward()``, ``Adam(fused=True)``) or, with
    ``compiled``, the whole step (forward, backward and Adam written out) in one
    ``torch.compile(fullgraph=True)`` of a functional step (``torch.func.grad_and_value``)."""
    torch.manual_seed(0)
    vae = build_vae(cfg.model, 784)
    loss = plain_loss(kind, particles)
    if not compiled:
        optim = torch.optim.Adam(vae.parameters(), lr=cfg.train.lr, fused=True)

        def step(x: torch.Tensor) -> None:
            value = loss(vae.encoder, vae.decoder, x)
            optim.zero_grad(set_to_none=True)
            value.backward()
            optim.step()

        return step
    names = [n for n, _ in vae.named_parameters()]
    params = [p.detach() for _, p in vae.named_parameters()]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    lr, b1, b2, eps = cfg.train.lr, 0.9, 0.999, 1e-8
    scalars, count = torch.zeros(2), [0]  # this step's lr / (1 - b1^t) and sqrt(1 - b2^t), from the host

    class Objective(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return loss(self.vae.encoder, self.vae.decoder, x)

    objective = Objective()

    def forward(values, x):
        return torch.func.functional_call(objective, {f"vae.{n}": v for n, v in zip(names, values)}, (x,))

    def whole(params, m, v, scalars, x):
        grads, value = torch.func.grad_and_value(forward)(tuple(params), x)
        for p, g, mi, vi in zip(params, grads, m, v):
            mi.mul_(b1).add_(g, alpha=1 - b1)
            vi.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(scalars[0] * mi / (vi.sqrt() / scalars[1] + eps))
        return value

    # Guards on tensors only (the modules never change here), as pyro-vae's compiled step has them;
    # so each step compiles its own copy of the code (Dynamo keeps graphs per code object). The
    # draws are torch's own (`fallback_random`), as in pyro-vae's step: with inductor's own CPU
    # `randn` (a scalar loop) this step ran 2% (batch 128) and 4% (2048) slower on one core
    # (benchmarks/results/cpu_step_1core_s50.json).
    options = {"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe, "fallback_random": True}
    own = types.FunctionType(whole.__code__.replace(), whole.__globals__, "whole", None, whole.__closure__)
    compiled_whole = torch.compile(own, fullgraph=True, dynamic=False, options=options)

    def step(x: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        scalars[0], scalars[1] = lr / (1 - b1 ** count[0]), math.sqrt(1 - b2 ** count[0])
        return compiled_whole(params, m, v, scalars, x)

    return step


def project_step(cfg: ExperimentConfig, device: torch.device, pool: torch.Tensor):
    """The training step of :func:`pyro_vae.fit` for ``cfg`` (its loss builder, optimizer and step
    engine, ``train.engine``, chosen for a run of ``cfg`` on binarized MNIST) over the
    device-resident images ``pool``, in shuffled passes as ``fit`` runs them. Returns
    ``(step, vae, optim)``: ``step()`` trains on the next batch."""
    torch.manual_seed(0)
    vae = build_vae(cfg.model, 784, (28, 28)).to(device)
    optim = make_optimizer(vae, cfg.train.lr)
    loss = build_loss(vae, cfg.train, pool[: cfg.train.batch_size])
    steps = cfg.train.epochs * math.ceil(TRAIN_IMAGES / cfg.train.batch_size)  # a run of cfg on MNIST
    choice = choose_engine(cfg.train.engine, device, loss.static, False, loss.compilable, steps)
    engine = StepEngine(loss.fn, optim, pool, cfg.train.batch_size, choice, module=vae)
    steps_per_pass = math.ceil(pool.shape[0] / cfg.train.batch_size)
    order = torch.Generator().manual_seed(0)
    done = {"steps": steps_per_pass}

    def step(_x: torch.Tensor | None = None) -> None:
        if done["steps"] == steps_per_pass:
            engine.start_epoch(torch.randperm(pool.shape[0], generator=order).to(device))
            done["steps"] = 0
        engine.step()
        done["steps"] += 1

    step.engine = choice.name
    return step, vae, optim


def config(*overrides: str) -> ExperimentConfig:
    return load_config(None, list(overrides))
