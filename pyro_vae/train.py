"""``fit``: the SVI training loop, read top to bottom.

A run folder holds everything needed to inspect or continue a run::

    RUN/config.toml            the resolved configuration
    RUN/metrics.jsonl          one line per epoch (train / valid / test negative ELBO, nats; the
                               train value is the training objective: beta-weighted during KL
                               warm-up, the IWAE bound for elbo=iwae)
    RUN/checkpoints/last.pt    model, optimizer, scheduler, RNG state, epoch (atomic, every epoch)
    RUN/checkpoints/best.pt    the same at the best validation negative ELBO
    RUN/summary.json           config, versions, device, wall time, throughput, final numbers
    RUN/figures/*.png          pictures (see :mod:`pyro_vae.plots`)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from . import distributed
from ._version import __version__
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .compat import check_compatible, check_data
from .config import DEVICE_NAMES, ConfigError, ExperimentConfig, from_dict, is_device_name, save_config
from .data import Splits, load_data
from .engine import StepEngine, choose_engine
from .evaluate import as_dict, evaluate
from .fast import build_loss, compilable, is_fast
from .model import VAE, build_vae
from .pixels import decode, evenly_spaced

log = logging.getLogger(__name__)

# Keys a resumed run may change; any other difference from the saved config is an error.
RESUMABLE = {
    ("train", "epochs"), ("train", "patience"), ("train", "time_limit_min"), ("train", "device"),
    ("train", "eval_batch_size"), ("train", "fast_path"), ("train", "engine"), ("train", "sync_every"),
    ("eval", "iwae_k"), ("eval", "iwae_images"),
}  # fmt: skip


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


class _StopRequests:
    """While active, SIGINT and SIGTERM set a flag instead of stopping the process, so the
    training loop can finish its step and write a checkpoint. Main thread only (elsewhere the
    signals keep their usual behaviour)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "checkpoints" / "best.pt"

    @property
    def figures(self) -> Path:
        return self.root / "figures"


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if not is_device_name(name):
        raise ConfigError(f"device {name!r} is not one of: {DEVICE_NAMES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available here; use cpu or auto")
    return torch.device(name)


def check_resume_config(saved: ExperimentConfig, new: ExperimentConfig) -> None:
    """Raise ``ConfigError`` if ``new`` changes a key that a resumed run must keep."""
    before = saved.to_dict()
    changed = [
        f"{section}.{key}: {old!r} -> {value!r}"
        for section, values in new.to_dict().items()
        for key, value in values.items()
        if (old := before[section][key]) != value and (section, key) not in RESUMABLE
    ]
    if changed:
        allowed = ", ".join(f"{s}.{k}" for s, k in sorted(RESUMABLE))
        raise ConfigError(
            "the config does not match the run being resumed (" + "; ".join(changed) + "). "
            f"A resumed run may change only: {allowed}. Start a new run folder for other changes."
        )


def environment(device: torch.device) -> dict[str, Any]:
    info = {
        "python": sys.version.split()[0], "torch": torch.__version__, "pyro": pyro.__version__,
        "numpy": np.__version__, "pyro_vae": __version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "device": str(device),
    }  # fmt: skip
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _saved_device(state: dict[str, Any]) -> str:
    """The device type a checkpoint was written on (format 1 did not say: CUDA if it kept a CUDA RNG state)."""
    return state.get("device") or ("cuda" if "cuda" in state.get("rng", {}) else "cpu")


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln)["epoch"] <= last_epoch]
        path.write_text("".join(ln + "\n" for ln in keep))


def _interrupted(signal_number: int, where: str, run: RunDir) -> TrainingInterrupted:
    name = signal.Signals(signal_number).name
    return TrainingInterrupted(
        f"{name} received: stopped after {where} and wrote {run.last}; continue with --resume {run.root}",
        signal_number,
    )


def make_optimizer(vae: VAE, lr: float) -> torch.optim.Adam:
    """Adam over every parameter of the VAE, fused into one kernel per step."""
    return torch.optim.Adam(vae.parameters(), lr=lr, fused=True)


def init_from_data(vae: VAE, x: torch.Tensor, seed: int) -> None:
    """Data-dependent initialisation: every component with an ``init_from_data(x, generator)``
    method (the VampPrior's pseudo-inputs) gets the training images (float32, or uint8 levels:
    see :func:`pyro_vae.pixels.decode`) and a seeded generator."""
    for module in vae.modules():
        if module is not vae and callable(getattr(module, "init_from_data", None)):
            module.init_from_data(x, torch.Generator().manual_seed(seed))


def _any_rank(flag: bool, ctx: distributed.Context) -> bool:
    """``flag`` on any rank (so that every rank stops at the same step)."""
    if not ctx.active:
        return flag
    return bool(distributed.all_sum(torch.tensor([float(flag)]), ctx).item() > 0)


@torch.no_grad()
def diagnose(vae: VAE, x: torch.Tensor) -> str:
    """Which term of the negative ELBO is not finite on the batch ``x``: non-finite parameters,
    or the log-densities of the guide's and the model's sites at one draw."""
    bad = [name for name, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        return "non-finite parameters: " + ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
    with pyro.validation_enabled(False):
        guide_tr = poutine.trace(vae.guide).get_trace(x)
        model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    terms = {"log q(z|x) (guide)": guide_tr.nodes["z"], "log p(z) (prior)": model_tr.nodes["z"],
             "log p(x|z) (likelihood)": model_tr.nodes["x"]}  # fmt: skip
    out = []
    for label, site in terms.items():
        values = site["fn"].log_prob(site["value"])
        if not torch.isfinite(values).all():
            out.append(f"{label} at site '{site['name']}' is {values[~torch.isfinite(values)][0].item()} "
                       f"for {int((~torch.isfinite(values)).sum())} of {values.numel()} images")  # fmt: skip
    return "; ".join(out) or "every term is finite when recomputed (an overflow in the gradient step)"


def kl_weight(step: int, warmup_steps: float) -> float | None:
    """KL warm-up weight of training step ``step`` (1-based): ``step / warmup_steps`` up to 1,
    never 0 (a zero scale would drop the KL's gradient entirely); ``None`` once warm-up is over
    or when there is none (the loss is then the plain negative ELBO)."""
    return step / warmup_steps if step < warmup_steps else None


@contextmanager
def matmul_precision(precision: str):
    """``torch.set_float32_matmul_precision(precision)`` while training, restored afterwards."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


class _Trainer:
    """The objects of one training run (data, VAE, optimiser, schedule, step engine) and where it
    stands (epoch, step, best valid, patience count, training time, a part-done epoch), set up for
    a new run or restored from the checkpoint ``state``. :func:`fit` drives it."""

    def __init__(self, cfg: ExperimentConfig, run: RunDir, device: torch.device, ctx: distributed.Context,
                 state: dict[str, Any] | None, progress: bool) -> None:  # fmt: skip
        self.cfg, self.run, self.device, self.ctx, self.progress = cfg, run, device, ctx, progress
        pyro.set_rng_seed(cfg.train.seed)
        self.data = data = load_data(cfg.data)
        self.vae = vae = build_vae(cfg.model, data.data_dim)
        check_data(vae, data)
        vae.to(device)
        # The splits stay in their stored form (uint8 levels for 8-bit images); batches are decoded.
        self.x_train, self.x_valid, self.x_test = (data.stored(s).to(device) for s in ("train", "valid", "test"))
        first = decode(self.x_train[: cfg.train.batch_size])
        check_compatible(vae, cfg, (first > 0.5).to(first.dtype) if data.dynamic_binarization else first)
        init_from_data(vae, self.x_train, cfg.train.seed)
        self.optim = make_optimizer(vae, cfg.train.lr)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.optim, gamma=cfg.train.lr_decay)
        loss_fn = build_loss(vae, cfg.train, first)
        self.shuffle = torch.Generator().manual_seed(cfg.train.seed)
        if ctx.active:
            pyro.set_rng_seed(cfg.train.seed + ctx.rank)  # every rank draws its own z
        self.epoch, self.step, self.best, self.stale, self.train_time = 0, 0, math.inf, 0, 0.0
        self.partial: dict[str, Any] | None = None  # an epoch stopped part-way by a signal
        if state is not None:
            self._restore(state)
        self.steps_per_epoch = math.ceil(self.x_train.shape[0] / cfg.train.batch_size)
        self.warmup_steps = cfg.train.kl_warmup_epochs * self.steps_per_epoch
        choice = choose_engine(cfg.train.engine, device, is_fast(loss_fn), ctx.active, compilable(loss_fn))
        if choice.reason and ctx.main:  # a fallback: a warning where an engine was asked for by name
            log.log(logging.INFO if cfg.train.engine == "auto" else logging.WARNING, "%s", choice.reason)
        step_loss = distributed.wrap_loss(vae, loss_fn, ctx)  # DDP broadcasts rank 0's weights here
        self.engine = StepEngine(step_loss, self.optim, self.x_train, cfg.train.batch_size, choice,
                                 binarize=data.dynamic_binarization, warmup_steps=self.warmup_steps, ctx=ctx)
        self.sync_every = cfg.train.sync_every or (100 if device.type == "cuda" else 1)

    def _restore(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.shuffle.set_state(state["shuffle_rng"])
        set_rng_state(state["rng_ranks"][self.ctx.rank] if "rng_ranks" in state else state["rng"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best_valid"]
        self.stale = state.get("stale", 0)
        self.partial = state.get("partial")
        self.train_time = state.get("train_time", 0.0) - (self.partial["epoch_time"] if self.partial else 0.0)
        log.info("resumed %s at epoch %d (step %d)", self.run.root, self.epoch, self.step)
        if _saved_device(state) != self.device.type and self.ctx.main:
            log.warning("this run was trained on %s and continues on %s: the weights, optimiser, schedule and data "
                        "order carry over, but the random draws differ, so the result is not bit-exact with an "
                        "uninterrupted run", _saved_device(state), self.device.type)  # fmt: skip

    def should_stop(self) -> bool:
        """Out of epochs, of time (``train.time_limit_min``) or of patience (``train.patience``)."""
        t = self.cfg.train
        out_of_time = t.time_limit_min and self.train_time >= 60 * t.time_limit_min
        return bool(self.epoch >= t.epochs or out_of_time or (t.patience and self.stale >= t.patience))

    def checkpoint(self, paths: list[Path], epoch_done: int, **extra) -> None:
        """Write the run's state (with every rank's RNG state) to each path; a collective call."""
        rngs = distributed.gather(get_rng_state(), self.ctx)
        if self.ctx.main:
            ckpt = {
                "model": self.vae.state_dict(), "optim": self.optim.state_dict(), "sched": self.sched.state_dict(),
                "epoch": epoch_done, "step": self.step, "best_valid": self.best,
                "shuffle_rng": self.shuffle.get_state(), "rng": get_rng_state(), "config": self.cfg.to_dict(),
                "device": self.device.type, "world_size": self.ctx.world_size, "rng_ranks": rngs,
                "train_time": self.train_time, "stale": self.stale, **extra,
            }  # fmt: skip
            for path in paths:
                save_checkpoint(ckpt, path)

    def train_epoch(self, stop: _StopRequests) -> tuple[float, float]:
        """One pass over the shuffled training split (or the rest of an interrupted one); returns
        the mean training loss and the epoch's training seconds."""
        self.epoch += 1
        self.vae.train()
        n, bs, engine = self.x_train.shape[0], self.cfg.train.batch_size, self.engine
        if self.partial:  # continue the epoch a signal interrupted, where it stopped
            p = self.partial
            perm, start, total, time_before = p["perm"].to(self.device), p["batch"], p["total"], p["epoch_time"]
            self.partial = None
        else:
            perm, start, total, time_before = torch.randperm(n, generator=self.shuffle).to(self.device), 0, 0.0, 0.0
        engine.start_epoch(perm, start, total, self.step)
        first_step, seen, read_at, t0 = self.step, total, start, time.perf_counter()
        bar = tqdm(range(start, self.steps_per_epoch), desc=f"epoch {self.epoch}/{self.cfg.train.epochs}",
                   unit="step", initial=start, total=self.steps_per_epoch, disable=not self.progress or None,
                   leave=False)  # fmt: skip
        with pyro.validation_enabled(False):  # data were validated up front: keep the hot loop lean
            for i in bar:
                engine.step()
                self.step += 1
                last = i + 1 == self.steps_per_epoch
                if (i + 1 - start) % self.sync_every and not last:
                    continue
                reading = engine.read()
                if reading.bad_step is not None:
                    raise self._non_finite(reading, start + reading.bad_step - first_step)
                images = min((i + 1) * bs, n) - read_at * bs  # trained on since the previous read
                bar.set_postfix(loss=f"{(reading.total - seen) / images:.2f}", refresh=False)
                seen, read_at = reading.total, i + 1
                if not last and _any_rank(stop.received is not None, self.ctx):
                    elapsed = time_before + time.perf_counter() - t0
                    self.checkpoint([self.run.last], self.epoch - 1, train_time=self.train_time + elapsed,
                                    partial={"perm": perm.cpu(), "batch": i + 1, "total": reading.total,
                                             "epoch_time": elapsed})  # fmt: skip
                    raise _interrupted(stop.received or signal.SIGTERM, f"step {self.step} (epoch {self.epoch}, "
                                       f"batch {i + 1} of {self.steps_per_epoch})", self.run)  # fmt: skip
        epoch_time = time_before + time.perf_counter() - t0
        self.train_time += epoch_time
        self.sched.step()
        return seen / n, epoch_time

    def _non_finite(self, reading, batch: int) -> TrainingError:
        return TrainingError(
            f"the training loss became {reading.bad_value} at step {reading.bad_step + 1} (epoch {self.epoch}): "
            f"{diagnose(self.vae, self.engine.images(batch))}. The last good checkpoint, {self.run.last}, is "
            "kept; try a smaller train.lr, or KL warm-up (train.kl_warmup_epochs)"
        )

    def end_epoch(self, train_loss: float, epoch_time: float) -> None:
        """Evaluate valid and test, log a metrics line, checkpoint (and keep the best on valid)."""
        kw = dict(batch_size=self.cfg.train.eval_batch_size, seed=self.cfg.eval.seed)
        valid = evaluate(self.vae, self.x_valid, **kw)["neg_elbo"]
        test = evaluate(self.vae, self.x_test, **kw)["neg_elbo"]
        n = self.x_train.shape[0]
        record = {
            "epoch": self.epoch, "step": self.step, "train_neg_elbo": train_loss, "valid_neg_elbo": valid.mean,
            "test_neg_elbo": test.mean, "lr": float(self.optim.param_groups[0]["lr"]), "epoch_time_s": epoch_time,
            "kl_weight": kl_weight(self.step, self.warmup_steps) or 1.0, "images_per_s": n / epoch_time,
        }  # fmt: skip
        if self.ctx.main:
            _append_jsonl(self.run.metrics, record)
            log.info("epoch %d: train %.2f, valid %.2f, test %.2f nats (%.0f images/s)", self.epoch, train_loss,
                     valid.mean, test.mean, record["images_per_s"])  # fmt: skip
        improved = valid.mean < self.best
        self.best, self.stale = (valid.mean, 0) if improved else (self.best, self.stale + 1)
        self.checkpoint([self.run.best, self.run.last] if improved else [self.run.last], self.epoch)


def _open_run(run: RunDir, cfg: ExperimentConfig, ctx: distributed.Context, resume: bool) -> dict[str, Any] | None:
    """Check the run folder (a new run needs an empty one; a resumed run a compatible config) and
    write its config; returns the checkpoint to resume from, or None."""
    state = None
    if resume:
        state = load_checkpoint(run.last)
        check_resume_config(from_dict(state["config"]), cfg)
        if state.get("world_size", 1) != ctx.world_size:
            raise ConfigError(f"{run.last} was written by {state.get('world_size', 1)} processes; resume it with as "
                              f"many (this is {ctx.world_size})")  # fmt: skip
    elif run.last.exists():
        raise ConfigError(f"{run.root} already holds a run; resume it, or choose a new folder")
    distributed.barrier(ctx)  # every rank has checked the folder before rank 0 writes to it
    if ctx.main:
        run.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
        for stale_tmp in run.last.parent.glob(".*.tmp"):  # left by a process killed mid-write
            stale_tmp.unlink()
        if state is not None:
            _truncate_metrics(run.metrics, state["epoch"])
        elif run.metrics.exists():
            run.metrics.unlink()
    return state


def fit(cfg: ExperimentConfig, out: str | Path, resume: bool = False, progress: bool = True,
        figures: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train ``cfg`` into run folder ``out`` (or continue it with ``resume``); return the summary.

    Every epoch: one pass over the shuffled training split with the configured ELBO and Adam (run
    by the step engine of :mod:`pyro_vae.engine`), then the negative ELBO of the valid and test
    splits, a line in ``metrics.jsonl`` and an atomic checkpoint. At the end the best-on-valid
    weights are evaluated with the IWAE bound. Under torchrun it trains data-parallel
    (:mod:`pyro_vae.distributed`): rank 0 writes the run folder and returns the summary, the other
    ranks return ``{}``.
    """
    run, t_start = RunDir(Path(out)), time.perf_counter()
    device = resolve_device(cfg.train.device)
    ctx = distributed.from_environment(device.type == "cuda")
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    state = _open_run(run, cfg, ctx, resume)
    with matmul_precision(cfg.train.matmul_precision):
        trainer = _Trainer(cfg, run, device, ctx, state, progress and ctx.main)
        with _StopRequests() as stop:
            while not trainer.should_stop():
                trainer.end_epoch(*trainer.train_epoch(stop))
                if _any_rank(stop.received is not None, ctx):
                    raise _interrupted(stop.received or signal.SIGTERM, f"epoch {trainer.epoch}", run)
        distributed.shutdown(ctx)
        if not ctx.main:
            return {}
        summary = finish(run, cfg, trainer.vae, trainer.data, device, trainer.epoch, progress)
    n = trainer.x_train.shape[0]
    summary.update(wall_time_s=time.perf_counter() - t_start, train_time_s=trainer.train_time,
                   images_per_s=trainer.epoch * n / trainer.train_time if trainer.train_time else None,
                   engine=trainer.engine.choice.name, matmul_precision=cfg.train.matmul_precision)  # fmt: skip
    text = json.dumps(summary, indent=2)
    run.summary.write_text(text)
    summary = json.loads(text)  # what the file says (tuples become lists)
    if figures:
        from .plots import make_figures

        make_figures(run.root, trainer.vae, trainer.data)
    return summary


def finish(run: RunDir, cfg: ExperimentConfig, vae: VAE, data: Splits, device: torch.device,
           epochs_run: int, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Load the best-on-valid weights into ``vae`` and evaluate them (ELBO, and IWAE on test)."""
    best = load_checkpoint(run.best, map_location=device)
    vae.load_state_dict(best["model"])
    kw = dict(batch_size=cfg.train.eval_batch_size, seed=cfg.eval.seed)
    results = {s: evaluate(vae, data.stored(s).to(device), **kw)["neg_elbo"] for s in ("train", "valid")}
    x_test = data.stored("test")
    x_test = x_test[evenly_spaced(x_test.shape[0], cfg.eval.iwae_images)].to(device)
    n_iw = x_test.shape[0]
    k = cfg.eval.iwae_k
    # IWAE batches are smaller: K samples per image are in flight.
    test = evaluate(vae, x_test, k=k, progress=progress, desc=f"test log p(x), K={k}",
                    batch_size=max(1, min(cfg.train.eval_batch_size, 100)), seed=cfg.eval.seed)  # fmt: skip
    log.info("best epoch %d: test negative ELBO %s, test NLL (K=%d) %s nats", best["epoch"],
             test["neg_elbo"], k, test.get("nll", test["neg_elbo"]))  # fmt: skip
    return {
        "config": cfg.to_dict(),
        "environment": environment(device),
        "epochs_run": epochs_run,
        "best_epoch": best["epoch"],
        "final": {
            "unit": "nats per image",
            "train_neg_elbo": dataclasses.asdict(results["train"]),
            "valid_neg_elbo": dataclasses.asdict(results["valid"]),
            **{f"test_{name}": value for name, value in as_dict(test).items()},
            "iwae_k": k,
            "iwae_images": n_iw,
        },
    }


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> tuple[ExperimentConfig, VAE, Splits]:
    """Rebuild a trained run: its config, the VAE with the ``best`` or ``last`` weights, its data."""
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise ValueError(f"run folder {run.root} does not exist")
    if which not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
    from .config import load_config

    cfg = load_config(run.config)
    state = load_checkpoint(getattr(run, which))
    if from_dict(state["config"]) != cfg:  # keys added since the run was written take their defaults on both sides
        raise ConfigError(f"{run.config} does not match the config stored in {getattr(run, which)}")
    data = load_data(cfg.data)
    vae = build_vae(cfg.model, data.data_dim)
    vae.load_state_dict(state["model"])
    return cfg, vae.to(resolve_device(device)).eval(), data
