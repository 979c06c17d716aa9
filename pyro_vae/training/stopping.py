"""How a run stops: its rules (:func:`stop_reason`: out of epochs, of time, of patience), a
non-finite loss (:class:`TrainingError`) or a signal (:class:`StopRequests` turns SIGINT / SIGTERM
into a flag, the loop checkpoints and raises :class:`TrainingInterrupted`). Under data parallelism
every rank stops at the same step (:func:`any_rank`)."""

from __future__ import annotations

import signal
import threading

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.training import distributed


def stop_reason(cfg: TrainConfig, epochs_done: int, train_time_s: float, stale_epochs: int) -> str | None:
    """Why training stops after ``epochs_done`` epochs, ``train_time_s`` seconds of training and
    ``stale_epochs`` epochs without a better valid ELBO, or None to go on: ``train.epochs``,
    ``train.time_limit_min`` (checked after each epoch), ``train.patience``."""
    if epochs_done >= cfg.epochs:
        return f"train.epochs = {cfg.epochs} reached"
    if cfg.time_limit_min and train_time_s >= 60 * cfg.time_limit_min:
        return f"train.time_limit_min = {cfg.time_limit_min:g} reached ({train_time_s / 60:.1f} minutes of training)"
    if cfg.patience and stale_epochs >= cfg.patience:
        return f"train.patience = {cfg.patience}: no better valid ELBO for {stale_epochs} epochs"
    return None


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived: the current step finished and a checkpoint was written."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number


class StopRequests:
    """While active, SIGINT and SIGTERM set a flag instead of stopping the process, so the
    training loop can finish its step and write a checkpoint. Main thread only (elsewhere the
    signals keep their usual behaviour)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def any_rank(flag: bool, ctx: distributed.Context) -> bool:
    """``flag`` on any rank (so that every rank stops at the same step). The flag travels as a
    tensor on the process group's device (NCCL reduces CUDA tensors only)."""
    if not ctx.active:
        return flag
    return bool(distributed.all_sum(torch.tensor([float(flag)], device=distributed.device(ctx)), ctx).item() > 0)


def interrupted(signal_number: int | None, where: str, last_checkpoint, run_root) -> TrainingInterrupted:
    """The exception for a stop by ``signal_number`` (SIGTERM when another rank received it)."""
    number = signal_number or signal.SIGTERM
    name = signal.Signals(number).name
    return TrainingInterrupted(
        f"{name} received: stopped after {where} and wrote {last_checkpoint}; continue with --resume {run_root}",
        number,
    )
