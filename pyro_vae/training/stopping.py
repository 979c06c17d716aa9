"""How a run stops: its rules (:func:`stop_reason`: out of epochs, of time, of patience; before
patience stops it, :func:`lr_drop_due` may restart it from its best weights at a lower rate), a
non-finite loss (:class:`TrainingError`) or a signal (:class:`StopRequests` turns SIGINT / SIGTERM
into a flag, the loop checkpoints and raises :class:`TrainingInterrupted`). Under data parallelism
every rank stops at the same step (:func:`any_rank`)."""

from __future__ import annotations

import signal
import threading

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.training import distributed


def stop_reason(
    cfg: TrainConfig, epochs_done: int, train_time_s: float, stale_epochs: int, drops_done: int = 0
) -> str | None:
    """Why training stops after ``epochs_done`` epochs, ``train_time_s`` seconds of training,
    ``stale_epochs`` epochs without a better valid ELBO and ``drops_done`` learning-rate drops, or
    None to go on: ``train.epochs``, ``train.time_limit_min`` (checked after each epoch),
    ``train.patience`` once its ``train.lr_drops`` are used (:func:`lr_drop_due`)."""
    if epochs_done >= cfg.epochs:
        return f"train.epochs = {cfg.epochs} reached"
    if cfg.time_limit_min and train_time_s >= 60 * cfg.time_limit_min:
        return f"train.time_limit_min = {cfg.time_limit_min:g} reached ({train_time_s / 60:.1f} minutes of training)"
    if cfg.patience and stale_epochs >= cfg.patience and drops_done >= cfg.lr_drops:
        drops = f" (after {drops_done} learning-rate drops)" if cfg.lr_drops else ""
        return f"train.patience = {cfg.patience}: no better valid ELBO for {stale_epochs} epochs{drops}"
    return None


def lr_drop_due(cfg: TrainConfig, stale_epochs: int, drops_done: int) -> bool:
    """Patience has run out and a drop of ``train.lr_drops`` is left: instead of stopping, training
    goes back to the best-on-valid weights with the learning rate times ``train.lr_drop_factor``."""
    return bool(cfg.patience) and stale_epochs >= cfg.patience and drops_done < cfg.lr_drops


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
