"""``fit``: the SVI training loop, read top to bottom.

:func:`fit` opens the run folder (:mod:`pyro_vae.runs.folder`), sets up a :class:`Trainer` (data,
VAE, the checks, optimiser, schedule, the step engine of :mod:`pyro_vae.training.engine`), then
runs epochs until a stop rule says enough (epochs, time, patience, the last after any
learning-rate drops of ``train.lr_drops``; a signal or a non-finite loss:
:mod:`pyro_vae.training.stopping`), and ends by evaluating the best-on-valid weights with the
IWAE bound (:func:`finish`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.components.likelihoods import density_note
from pyro_vae.config import ConfigError, ExperimentConfig
from pyro_vae.data import Splits, load_data
from pyro_vae.data.load import check_binarize
from pyro_vae.data.pixels import decode, evenly_spaced
from pyro_vae.evaluation.label_scores import classification_report, clustering_report, describe, watched_scores
from pyro_vae.evaluation.latent import active_units_per_layer
from pyro_vae.evaluation.metrics import as_dict, evaluate, with_bits_per_dim
from pyro_vae.files import check_regular
from pyro_vae.model import VAE, Structure, build_vae
from pyro_vae.objectives.elbos import ELBOS, build_elbo
from pyro_vae.objectives.fast import build_loss
from pyro_vae.runs import writer
from pyro_vae.runs.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from pyro_vae.runs.device import environment, resolve_device
from pyro_vae.runs.folder import RunDir, check_resumable, check_resume_config, saved_device, stored_config
from pyro_vae.training import distributed
from pyro_vae.training.checks import check_compatible, check_data, diagnose
from pyro_vae.training.engine import (
    StepEngine,
    checked_choice,
    choose_engine,
    kl_warmup_weight,
    make_optimizer,
    restart_optimizer,
)
from pyro_vae.training.labelled import labelled_order, labelled_plan
from pyro_vae.training.stopping import StopRequests, TrainingError, any_rank, interrupted, lr_drop_due, stop_reason
from pyro_vae.training.tensorboard import TensorBoard, require_tensorboard

log = logging.getLogger(__name__)


def fit(
    cfg: ExperimentConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    overwrite: bool = False,
    eval_threads: int = 0,
) -> dict[str, Any]:
    """Train ``cfg`` into run folder ``out`` (or continue it with ``resume``); return the summary.
    ``eval_threads``: torch's threads for the final evaluation (0: those it trained with; restored
    after it), for a run trained on one core beside another whose core is free again by then.

    Every epoch: one pass over the shuffled training split with the configured ELBO and Adam (run
    by the step engine of :mod:`pyro_vae.training.engine`), then the negative ELBO of the valid and test
    splits, a line in ``metrics.jsonl`` and an atomic checkpoint. At the end the best-on-valid
    weights are evaluated with the IWAE bound. Under torchrun it trains data-parallel
    (:mod:`pyro_vae.training.distributed`): rank 0 writes the run folder and returns the summary, the other
    ranks return ``{}``.

    The folder is locked while training (:mod:`pyro_vae.runs.writer`), and nothing in it is written
    until the config, data and model have been built and checked. A new run needs a folder free of
    another run's files, or ``overwrite``: the old run is then moved aside and deleted only once
    the new one has its first checkpoint.
    """
    run, t_start = RunDir(Path(out)), time.perf_counter()
    device = resolve_device(cfg.train.device)
    ctx = distributed.from_environment(device.type == "cuda")
    if ctx.active and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    if cfg.train.tensorboard:
        require_tensorboard()  # before the run folder is touched
    if not resume:
        check_binarize(cfg.data)  # (a run made before the check, with the setting ignored, still resumes)
    with _claimed(run, ctx, resume, overwrite) as claim:
        with matmul_precision(cfg.train.matmul_precision):
            state = _resume_state(run, cfg, ctx) if resume else None
            trainer = Trainer(cfg, run, device, ctx, state, progress and ctx.main)  # all checked; nothing written yet
            claim.start(cfg, state)
            trainer.open_board(state)
            with StopRequests() as stop:
                try:
                    while not trainer.should_stop():
                        trainer.end_epoch(*trainer.train_epoch(stop))
                        claim.checkpointed()
                        if any_rank(stop.received is not None, ctx):
                            raise interrupted(stop.received, f"epoch {trainer.epoch}", run.last, run.root)
                finally:
                    if trainer.board is not None:
                        trainer.board.writer.flush()  # what a stopped run logged stays
            distributed.shutdown(ctx)
            if not ctx.main:
                return {}
            threads = torch.get_num_threads()
            torch.set_num_threads(eval_threads or threads)
            try:
                summary = finish(run, cfg, trainer.vae, trainer.data, device, trainer.epoch, progress)
            finally:
                torch.set_num_threads(threads)
            if trainer.board is not None:
                trainer.board.close(cfg, summary["final"])
        summary.update(
            wall_time_s=time.perf_counter() - t_start,
            train_time_s=trainer.train_time,
            images_per_s=trainer.epoch * trainer.epoch_rows / trainer.train_time if trainer.train_time else None,
            engine=trainer.engine.choice.name,
            compile_time_s=trainer.engine.compile_seconds,
            matmul_precision=cfg.train.matmul_precision,
            lr_drops=trainer.lr_drops,
        )
        run.write_summary(summary)
        summary = json.loads(json.dumps(summary))  # what the file says (tuples become lists)
        if figures:
            from pyro_vae.evaluation.plots import make_figures

            make_figures(run.root, trainer.vae, trainer.data)
    return summary


class _Claim:
    """Rank 0's hold on the run folder while it trains (:func:`_claimed`)."""

    def __init__(self, run: RunDir, ctx: distributed.Context, resume: bool, overwrite: bool) -> None:
        self.run, self.ctx, self.resume, self.overwrite = run, ctx, resume, overwrite
        self.lock, self.made_root, self.moved, self.started = None, False, [], False

    def check(self) -> None:
        """Lock the folder and check that this run may write it; reads only (but for the lock)."""
        run = self.run
        if not self.resume:
            if run.root.exists() and not run.root.is_dir():
                raise ConfigError(f"--out {run.root} is a file; give a folder for the run (it is made if missing)")
            self.made_root = not run.root.exists()
        lock_existed = os.path.lexists(run.lock)
        self.lock = writer.RunLock(run).acquire()
        if self.resume:
            if os.path.lexists(run.replaced) and not os.path.lexists(run.last):
                raise ConfigError(
                    f"{run.root} was being replaced (--overwrite) and stopped before the new run's first "
                    f"checkpoint; the previous run is in {run.replaced}: move its files back to resume "
                    "it, or start a new run with --overwrite"
                )
            for path in (run.last, run.best):
                check_regular(path, "checkpoint file")
            if not run.last.exists():
                raise ConfigError(
                    f"{run.root} has no checkpoint to resume from: the run stopped before its first "
                    f"epoch ended. Start it again: pyro-vae train --config {run.config} --out "
                    f"{run.root}"
                )
        else:
            writer.check_new_run(run, self.overwrite, lock_existed)

    def start(self, cfg: ExperimentConfig, state: dict[str, Any] | None) -> None:
        """The first writes: the old run moved aside (``--overwrite``), the config, the plugins, the metrics."""
        distributed.barrier(self.ctx)  # every rank has built and checked its run before rank 0 writes
        if not self.ctx.main:
            return
        run = self.run
        if state is None:
            self.moved = writer.move_aside(run)
        self.started = True
        run.write_config(cfg)
        if state is None:
            run.record_plugins(cfg)
        for stale_tmp in run.root.glob(".*.tmp"):  # left by a process killed mid-write
            stale_tmp.unlink()
        if run.last.parent.is_dir() and not run.last.parent.is_symlink():
            for stale_tmp in run.last.parent.glob(".*.tmp"):
                stale_tmp.unlink()
        if state is not None:
            run.truncate_metrics(state["epoch"])
        elif run.metrics.exists():
            run.metrics.unlink()  # (a run of ours that stopped before its first checkpoint)

    def checkpointed(self) -> None:
        """After an epoch's checkpoint: the replaced run is no longer needed."""
        if self.moved and self.ctx.main:
            writer.drop_replaced(self.run)
            self.moved = []

    def failed(self) -> None:
        """Before the first checkpoint: put the replaced run back; leave no folder that only the lock made."""
        if not self.ctx.main:
            return
        if self.moved:
            writer.restore(self.run, self.moved)
        elif not self.started and self.made_root:
            shutil.rmtree(self.run.root, ignore_errors=True)
        elif not self.started and self.lock is not None and self.lock.created:
            self.run.lock.unlink(missing_ok=True)


@contextmanager
def _claimed(run: RunDir, ctx: distributed.Context, resume: bool, overwrite: bool):
    """Hold ``run`` for this training: locked and checked on entry (rank 0), released on exit; a
    failure before the first checkpoint undoes what the start did (:meth:`_Claim.failed`)."""
    claim = _Claim(run, ctx, resume, overwrite)
    try:
        if ctx.main:
            claim.check()
        yield claim
    except BaseException:
        if ctx.main and os.path.lexists(run.last):
            claim.checkpointed()  # a checkpoint (an interrupted epoch's too) can be resumed: the new run stands
        else:
            claim.failed()
        raise
    finally:
        if claim.lock is not None:
            claim.lock.release()


def _resume_state(run: RunDir, cfg: ExperimentConfig, ctx: distributed.Context) -> dict[str, Any]:
    """The checkpoint to resume from, once its config and world size are checked against ``cfg``."""
    for warning in run.require_plugins():
        log.warning(warning)
    state = load_checkpoint(run.last)
    check_resume_config(stored_config(state, run.last), cfg)
    if state.get("world_size", 1) != ctx.world_size:
        raise ConfigError(
            f"{run.last} was written by {state.get('world_size', 1)} processes; resume it with as "
            f"many (this is {ctx.world_size})"
        )
    written, running = state.get("cpu_kernels"), torch.backends.cpu.get_cpu_capability()
    if isinstance(written, str) and written != running:
        log.warning(
            "%s was written running ATen's %s CPU kernels, this process runs %s: the run continues, but "
            "its numbers will equal an uninterrupted run's to float rounding only, not bit for bit "
            "(set ATEN_CPU_CAPABILITY=%s to resume on the same kernels)",
            run.last,
            written,
            running,
            written.lower(),
        )
    return state


# The auto size of the final IWAE evaluation (eval.iwae_images = 0): all test images unless that
# would cost more than EVAL_BUDGET times the training's image passes (K decoder passes per image),
# and never fewer than MIN_IWAE_IMAGES. make run (30 epochs of 50,000 images, K = 1000) gets all
# 10,000; a 3-epoch run gets 1,500; a 3-epoch run on a 2,000-image subset gets 250.
EVAL_BUDGET = 10
MIN_IWAE_IMAGES = 250


def iwae_images(cfg: ExperimentConfig, epochs_run: int, train_images: int, test_images: int) -> tuple[int, bool]:
    """How many evenly spaced test images the final log p(x) estimate uses, and whether that was
    sized down to a short run (``eval.iwae_images = 0``, the default: see :data:`EVAL_BUDGET`);
    a positive ``eval.iwae_images`` is used as given (all images at or above the split's size)."""
    if cfg.eval.iwae_images > 0:
        return min(cfg.eval.iwae_images, test_images), False
    budget = EVAL_BUDGET * max(epochs_run, 1) * train_images // max(cfg.eval.iwae_k, 1)
    images = min(test_images, max(MIN_IWAE_IMAGES, budget))
    return images, images < test_images


def finish(
    run: RunDir,
    cfg: ExperimentConfig,
    vae: VAE,
    data: Splits,
    device: torch.device,
    epochs_run: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the best-on-valid weights into ``vae`` and evaluate them (ELBO, and IWAE on test)."""
    best = load_checkpoint(run.best, map_location=device)
    vae.load_state_dict(best["model"])
    kw = dict(batch_size=cfg.train.eval_batch_size, seed=cfg.eval.seed)
    results = {s: evaluate(vae, data.stored(s).to(device), **kw)["neg_elbo"] for s in ("train", "valid")}
    x_test = data.stored("test")
    k = cfg.eval.iwae_k
    images, sized = iwae_images(cfg, epochs_run, data.stored("train").shape[0], x_test.shape[0])
    if sized:
        log.info(
            "the test log p(x) uses %d evenly spaced test images of %d, sized to this short run "
            "(eval.iwae_images = 0 is auto; set it to %d for all)",
            images,
            x_test.shape[0],
            x_test.shape[0],
        )
    x_test = x_test[evenly_spaced(x_test.shape[0], images)].to(device)
    n_iw = x_test.shape[0]
    # IWAE batches are smaller: K samples per image are in flight.
    test = evaluate(
        vae,
        x_test,
        k=k,
        progress=progress,
        desc=f"test log p(x), K={k}",
        batch_size=max(1, min(cfg.train.eval_batch_size, 100)),
        seed=cfg.eval.seed,
    )
    test = with_bits_per_dim(test, x_test)
    log.info(
        "best epoch %d: test negative ELBO %s, test NLL (K=%d) %s nats",
        best["epoch"],
        test["neg_elbo"],
        k,
        test.get("nll", test["neg_elbo"]),
    )
    note = density_note(vae.likelihood, cfg.model.likelihood, data.stored("test"))
    if note:
        log.warning("%s", note)
    with torch.no_grad():
        units = active_units_per_layer(vae, data.stored("test").to(device))
    clustering = clustering_report(vae, data, device, cfg.train.eval_batch_size)
    classification = classification_report(vae, data, device, cfg.train.eval_batch_size)
    return {
        "config": cfg.to_dict(),
        "environment": environment(device),
        "epochs_run": epochs_run,
        "best_epoch": best["epoch"],
        "objective": objective(cfg),
        "train_bound": training_bound(cfg),
        **({"likelihood_note": note} if note else {}),
        "final": {
            "unit": "nats per image",
            "train_neg_elbo": dataclasses.asdict(results["train"]),
            "valid_neg_elbo": dataclasses.asdict(results["valid"]),
            **{f"test_{name}": value for name, value in as_dict(test).items()},
            "iwae_k": k,
            "iwae_images": n_iw,
        },
        # Burda et al.'s active units per latent layer (top first): Cov_x(E_q[z_u|x]) > 0.01 on the test split
        "active_units": {
            layer: {"active": u["active"], "of": len(u["activity"]), "threshold": u["threshold"]}
            for layer, u in units.items()
        },
        **({"clustering": clustering} if clustering else {}),
        **({"classification": classification} if classification else {}),
        **({"labels": {"count": cfg.data.labels, "protocol": data.label_protocol}} if data.label_protocol else {}),
    }


def objective(cfg: ExperimentConfig) -> str:
    """What training optimised, for reports: the ELBO, or a beta-weighted one. Evaluation always
    uses beta = 1 (the ELBO and IWAE bounds, in nats)."""
    if cfg.model.structure == "semi_supervised":
        return (
            f"the {cfg.train.elbo} ELBO of labelled and unlabelled images plus Kingma's classification term "
            "(alpha log q(y | x) on the labelled ones): metrics.jsonl's train_neg_elbo includes that term; valid, "
            "test and NLL are the ELBO and bound of log p(x) with y summed out"
        )
    if cfg.train.kl_weight == 1.0:
        return f"the {cfg.train.elbo} ELBO"
    return (
        f"a beta-weighted {cfg.train.elbo} objective (beta = train.kl_weight = {cfg.train.kl_weight:g}): "
        "metrics.jsonl's train_neg_elbo is that objective; valid, test and NLL are evaluated at beta = 1"
    )


def training_bound(cfg: ExperimentConfig) -> str:
    """What the "train" number of each epoch is, for the logs and the curves: the training
    objective as minimised (a negative bound), which is the ELBO only for an ELBO estimator at
    beta = 1 without warm-up; "valid" and "test" are always the negative ELBO at beta = 1."""
    name, k = cfg.train.elbo, cfg.train.num_particles
    flags = ELBOS.get(name)
    if cfg.model.structure == "semi_supervised":
        bound = "-ELBO + classification term"
    elif getattr(flags, "importance_weighted", False):
        groups = f", M={cfg.train.iw_groups}" if getattr(flags, "grouped", False) else ""
        bound = f"-{name} bound (K={k}{groups})"
    elif getattr(flags, "relaxes", False):
        bound = "-relaxed ELBO"
    else:
        bound = "-ELBO"
    if cfg.train.kl_weight != 1.0:
        bound += ", beta-weighted"
    return bound + (", KL warm-up" if cfg.train.kl_warmup_epochs > 0 else "")


class Trainer:
    """The objects of one training run (data, VAE, optimiser, schedule, step engine) and where it
    stands (epoch, step, best valid, patience count, learning-rate drops, training time, a part-done
    epoch), set up for a new run or restored from the checkpoint ``state``. :func:`fit` drives it."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        run: RunDir,
        device: torch.device,
        ctx: distributed.Context,
        state: dict[str, Any] | None,
        progress: bool,
    ) -> None:
        self.cfg, self.run, self.device, self.ctx, self.progress = cfg, run, device, ctx, progress
        # 1. The data and the model, checked against each other (the seed first: it draws the weights).
        pyro.set_rng_seed(cfg.train.seed)
        self.data = load_data(cfg.data)
        self.vae = build_vae(cfg.model, self.data.data_dim, self.data.image_shape)
        check_data(self.vae, self.data)
        self.vae.to(device)
        # 2. The splits on the device in their stored form (uint8 levels for 8-bit images; batches are
        #    decoded), and for a structure that learns from labels, the labels and an epoch's plan.
        self.x_train, self.x_valid, self.x_test = (self.data.stored(s).to(device) for s in ("train", "valid", "test"))
        self.plan, self.labels = self._labels(cfg, self.data, self.vae)
        # 3. The ELBO, checked on a first batch as training makes it; then the data-dependent
        #    initialisation, the optimiser, its schedule and the loss.
        elbo = build_elbo(cfg.train)  # resolved once: the checks and the loss take the object
        first, first_labels = self._first_batch()
        check_compatible(self.vae, cfg, elbo, first)
        init_from_data(self.vae, self.x_train, cfg.train.seed)
        self.optim = make_optimizer(self.vae, cfg.train.lr)
        self.sched = torch.optim.lr_scheduler.ExponentialLR(self.optim, gamma=cfg.train.lr_decay)
        loss = build_loss(self.vae, cfg.train, first, elbo, labels=first_labels)
        # 4. Where the run stands: new, or restored from its checkpoint.
        self.shuffle = torch.Generator().manual_seed(cfg.train.seed)
        if ctx.active:
            pyro.set_rng_seed((cfg.train.seed + ctx.rank) % 2**32)  # every rank draws its own z (NumPy takes < 2**32)
        self.epoch, self.step, self.best, self.stale, self.train_time = 0, 0, math.inf, 0, 0.0
        self.lr_drops = 0  # learning-rate drops made (train.lr_drops)
        self.partial: dict[str, Any] | None = None  # an epoch stopped part-way by a signal
        if state is not None:
            self._restore(state)
        self.board = None  # TensorBoard, on rank 0 when train.tensorboard is set (open_board)
        # 5. An epoch's shape, and the engine that runs its steps.
        self.epoch_rows = self.plan.length if self.plan is not None else self.x_train.shape[0]
        self.steps_per_epoch = math.ceil(self.epoch_rows / cfg.train.batch_size)
        self.warmup_steps = cfg.train.kl_warmup_epochs * self.steps_per_epoch
        self.bound = training_bound(cfg)
        self.engine = self._engine(loss)
        self.sync_every = cfg.train.sync_every or (100 if device.type == "cuda" else 1)

    def _first_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first training batch as training makes it (labelled images among the others for a
        structure that learns from labels), decoded, and its labels (None without)."""
        cfg = self.cfg
        rows = torch.arange(min(cfg.train.batch_size, self.x_train.shape[0]))
        labels = None
        if self.plan is not None:
            order = labelled_order(self.data.train_labels, self.plan, torch.Generator().manual_seed(cfg.train.seed))
            rows = order[: cfg.train.batch_size]
            labels = self.labels[rows.to(self.device)]
        first = decode(self.x_train[rows.to(self.device)])
        return ((first > 0.5).to(first.dtype) if self.data.dynamic_binarization else first), labels

    def _engine(self, loss) -> StepEngine:
        """The step engine for ``loss``: the one train.engine names, or where that cannot run the
        step (a CUDA graph that cannot hold it, a loss that does not compile), the eager one, with
        one log line saying why (a warning where an engine was asked for by name)."""
        cfg, ctx = self.cfg, self.ctx
        step_loss = distributed.wrap_loss(self.vae, loss.fn, ctx)  # DDP broadcasts rank 0's weights here

        def engine(choice):
            return StepEngine(
                step_loss,
                self.optim,
                self.x_train,
                cfg.train.batch_size,
                choice,
                binarize=self.data.dynamic_binarization,
                warmup_steps=self.warmup_steps,
                kl_weight=cfg.train.kl_weight,
                ctx=ctx,
                fallback=cfg.train.engine == "auto",
                module=self.vae,
                labels=self.labels,
                epoch_length=self.epoch_rows,
                normalize_grads=cfg.train.normalize_grads,
            )  # a failed capture or compilation continues eagerly

        steps_left = max(cfg.train.epochs - self.epoch, 0) * self.steps_per_epoch
        choice = choose_engine(cfg.train.engine, self.device, loss.static, ctx.active, loss.compilable, steps_left)
        choice = checked_choice(choice, cfg.train.engine, engine)
        if choice.reason and ctx.main:
            log.log(logging.INFO if cfg.train.engine == "auto" else logging.WARNING, "%s", choice.reason)
        return engine(choice)

    @staticmethod
    def _labels(cfg: ExperimentConfig, data: Splits, vae: Structure):
        """For a structure that learns from labels: the plan of an epoch and the training labels on
        the device (-1 where unknown), the structure's labelled terms weighed for this split; else
        Nones. ``ConfigError`` when it has no labels to learn from."""
        if not vae.uses_labels:
            return None, None
        if data.train_labels is None:
            raise ConfigError(
                f"model.structure={cfg.model.structure} learns from labels, but data.labels = {cfg.data.labels}: "
                "set data.labels to the labels it may see (data.labels=100: 10 of each digit)"
            )
        plan = labelled_plan(data.train_labels, cfg.train.batch_size, vae.labelled_per_batch)
        vae.weigh_labels(data.train_labels.numel(), plan.labelled, plan.repeats)
        return plan, data.train_labels.to(next(vae.parameters()).device)

    def open_board(self, state: dict[str, Any] | None) -> None:
        """Start TensorBoard logging into the run folder (rank 0, when ``train.tensorboard`` is set)."""
        if self.cfg.train.tensorboard and self.ctx.main:
            test = self.data.stored("test")
            fixed = test[evenly_spaced(test.shape[0], 8)]
            self.board = TensorBoard(self.run.root, fixed, self.data.draw, self.step if state else None)

    def _restore(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.run.last, self.vae)
        self.vae.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self.shuffle.set_state(state["shuffle_rng"])
        set_rng_state(state["rng_ranks"][self.ctx.rank] if "rng_ranks" in state else state["rng"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best_valid"]
        self.stale, self.lr_drops = state.get("stale", 0), state.get("lr_drops", 0)
        self.partial = state.get("partial")
        self.train_time = state.get("train_time", 0.0) - (self.partial["epoch_time"] if self.partial else 0.0)
        log.info("resumed %s at epoch %d (step %d)", self.run.root, self.epoch, self.step)
        if saved_device(state) != self.device.type and self.ctx.main:
            log.warning(
                "this run was trained on %s and continues on %s: the weights, optimiser, schedule and data "
                "order carry over, but the random draws differ, so the result is not bit-exact with an "
                "uninterrupted run",
                saved_device(state),
                self.device.type,
            )

    def should_stop(self) -> bool:
        """A stop rule of :func:`~pyro_vae.training.stopping.stop_reason` applies (logged once);
        where patience has run out with a learning-rate drop left, the drop is made instead."""
        reason = stop_reason(self.cfg.train, self.epoch, self.train_time, self.stale, self.lr_drops)
        if reason is None and lr_drop_due(self.cfg.train, self.stale, self.lr_drops):
            self.drop_lr()
        if reason and self.ctx.main:
            log.info("training stops: %s", reason)
        return reason is not None

    def drop_lr(self) -> None:
        """Go back to the best-on-valid weights (``best.pt``, written at least ``train.patience``
        epochs ago; read by rank 0 and broadcast, since only rank 0's machine is sure to see the
        run folder), multiply the learning rate by ``train.lr_drop_factor`` and restart Adam
        (moments and step count), in place (the engines hold these tensors). Nothing is drawn, so a
        run resumed from the checkpoint before the drop makes the same drop and continues exactly."""
        best_epoch = -1
        if self.ctx.main:
            best = load_checkpoint(self.run.best, map_location="cpu")
            self.vae.load_state_dict(best["model"])
            best_epoch = best["epoch"]
            del best
        distributed.broadcast_module(self.vae, self.ctx)
        before, stale = float(self.optim.param_groups[0]["lr"]), self.stale
        restart_optimizer(self.optim, self.cfg.train.lr_drop_factor)
        self.stale, self.lr_drops = 0, self.lr_drops + 1
        if self.ctx.main:
            log.info(
                "no better valid ELBO for %d epochs: back to the best weights (epoch %d, valid -ELBO %.2f) with "
                "the learning rate %.3g -> %.3g (drop %d of %d)",
                stale,
                best_epoch,
                self.best,
                before,
                float(self.optim.param_groups[0]["lr"]),
                self.lr_drops,
                self.cfg.train.lr_drops,
            )

    def checkpoint(self, paths: list[Path], epoch_done: int, **extra) -> None:
        """Write the run's state (with every rank's RNG state) to each path; a collective call."""
        rngs = distributed.gather(get_rng_state(), self.ctx)
        if self.ctx.main:
            ckpt = {
                "model": self.vae.state_dict(),
                "optim": self.optim.state_dict(),
                "sched": self.sched.state_dict(),
                "epoch": epoch_done,
                "step": self.step,
                "best_valid": self.best,
                "shuffle_rng": self.shuffle.get_state(),
                "rng": get_rng_state(),
                "config": self.cfg.to_dict(),
                "device": self.device.type,
                "world_size": self.ctx.world_size,
                "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # (pyro_vae.cpu_kernels)
                "rng_ranks": rngs,
                "train_time": self.train_time,
                "stale": self.stale,
                "lr_drops": self.lr_drops,
                **extra,
            }
            for path in paths:
                save_checkpoint(ckpt, path, self.run.root)

    def train_epoch(self, stop: StopRequests) -> tuple[float, float]:
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
            order = (
                labelled_order(self.data.train_labels, self.plan, self.shuffle)
                if self.plan is not None
                else torch.randperm(n, generator=self.shuffle)
            )
            perm, start, total, time_before = order.to(self.device), 0, 0.0, 0.0
        engine.start_epoch(perm, start, total, self.step)
        first_step, seen, read_at, t0 = self.step, total, start, time.perf_counter()
        bar = tqdm(
            range(start, self.steps_per_epoch),
            desc=f"epoch {self.epoch}/{self.cfg.train.epochs}",
            unit="step",
            initial=start,
            total=self.steps_per_epoch,
            disable=not self.progress or None,
            leave=False,
        )
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
                images = min((i + 1) * bs, self.epoch_rows) - read_at * bs  # trained on since the previous read
                running = (reading.total - seen) / images
                bar.set_postfix(loss=f"{running:.2f}", refresh=False)
                if self.board is not None:
                    self.board.read(self.step, running)
                seen, read_at = reading.total, i + 1
                if not last and any_rank(stop.received is not None, self.ctx):
                    elapsed = time_before + time.perf_counter() - t0
                    self.checkpoint(
                        [self.run.last],
                        self.epoch - 1,
                        train_time=self.train_time + elapsed,
                        partial={"perm": perm.cpu(), "batch": i + 1, "total": reading.total, "epoch_time": elapsed},
                    )
                    raise interrupted(
                        stop.received,
                        f"step {self.step} (epoch {self.epoch}, batch {i + 1} of {self.steps_per_epoch})",
                        self.run.last,
                        self.run.root,
                    )
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
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_neg_elbo": train_loss,
            "train_bound": self.bound,
            "valid_neg_elbo": valid.mean,
            "test_neg_elbo": test.mean,
            "lr": float(self.optim.param_groups[0]["lr"]),
            "lr_drops": self.lr_drops,  # made before this epoch (each went back to the best weights)
            "epoch_time_s": epoch_time,
            "kl_weight": kl_warmup_weight(self.step, self.warmup_steps, self.cfg.train.kl_weight),
            "images_per_s": self.epoch_rows / epoch_time,
        }
        # watched against the test labels, never used to choose the best epoch (valid's ELBO does)
        record.update(watched_scores(self.vae, self.data, self.device, self.cfg.train.eval_batch_size))
        if self.ctx.main:
            self.run.append_metrics(record)
            if self.board is not None:
                self.board.epoch(record, self.vae)
            log.info(
                "epoch %d: train %s %.2f, valid -ELBO %.2f, test -ELBO %.2f nats%s (%.0f images/s)",
                self.epoch,
                self.bound,
                train_loss,
                valid.mean,
                test.mean,
                describe(record),
                record["images_per_s"],
            )
        improved = valid.mean < self.best
        self.best, self.stale = (valid.mean, 0) if improved else (self.best, self.stale + 1)
        self.checkpoint([self.run.best, self.run.last] if improved else [self.run.last], self.epoch)


def init_from_data(vae: VAE, x: torch.Tensor, seed: int) -> None:
    """Data-dependent initialisation: every component with an ``init_from_data(x, generator)``
    method (the VampPrior's pseudo-inputs) gets the training images (float32, or uint8 levels:
    see :func:`pyro_vae.data.pixels.decode`) and a seeded generator."""
    for module in vae.modules():
        if module is not vae and callable(getattr(module, "init_from_data", None)):
            module.init_from_data(x, torch.Generator().manual_seed(seed))


@contextmanager
def matmul_precision(precision: str):
    """``torch.set_float32_matmul_precision(precision)`` while training, restored afterwards."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
