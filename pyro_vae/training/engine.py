"""The training step and the engines that run it: eagerly, captured in one CUDA graph, or compiled
(on CUDA the loss, on a CPU the whole step: :mod:`pyro_vae.training.whole_step`).

Every engine runs the same step body (:meth:`StepEngine._body`), written so that it never waits for
the host: the batch is gathered from the device-resident training split through a device-side
permutation (indexed by a device batch counter when captured), uint8 levels are decoded and
dynamic binarization drawn there, the KL warm-up weight is computed from a device step counter,
the loss is backpropagated and a fused Adam steps (its learning rate a device tensor when
captured, updated in place by the scheduler).
The epoch's loss sum and the index of the first non-finite step are accumulated on the device; once
a loss is not finite, Adam's ``found_inf`` flag skips every later update, so the parameters stay
exactly those of the last good step. The host reads the accumulators (:meth:`StepEngine.read`)
every few steps and at the end of an epoch, never every step on a GPU.

- ``eager``: the body as Python calls it (short CPU runs; Pyro's own ELBOs run only this way).
- ``graph``: the body captured once per batch shape in a :class:`torch.cuda.CUDAGraph` and
  replayed (the CUDA default whenever the fast ELBO applies): one launch per step.
- ``compiled``: on CUDA the fast loss wrapped in :func:`torch.compile` (default mode), the body
  then captured as well; on a CPU the whole step, Adam included, in one compiled graph (the CPU
  default for runs of :data:`COMPILE_MIN_STEPS` steps or more).

:func:`choose_engine` turns ``train.engine`` (``auto`` by default) into the engine that will run,
with the reason whenever it falls back to eager.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyro
import torch

from pyro_vae.compiling import compiler_problem
from pyro_vae.config import TRAIN_ENGINES as ENGINES
from pyro_vae.config import ConfigError
from pyro_vae.data.pixels import decode
from pyro_vae.training import distributed
from pyro_vae.training.capture import CaptureProblem, watched
from pyro_vae.training.whole_step import WholeStep, normalize_gradients

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager runs on a side stream before a capture (lazy initialisation, cuBLAS workspaces)
# cuDNN as it is held through the warm-up and the capture of a step (the convolutional networks):
# enabled, autotuned once per shape during the warm-up (benchmark; the capture then reuses the
# chosen algorithms and never times kernels itself), non-deterministic algorithms allowed. TF32 is
# not touched: it follows ``torch.backends.cudnn.allow_tf32`` as the user left it.
CAPTURE_CUDNN = {"enabled": True, "benchmark": True, "deterministic": False}


@contextlib.contextmanager
def cudnn_for_capture() -> Iterator[dict[str, bool]]:
    """Hold :data:`CAPTURE_CUDNN` for the block and put the previous cuDNN flags back after it, so a
    warm-up and its capture select algorithms under the same, known settings whatever the code
    around them (or a user) set before."""
    flags = torch.backends.cudnn
    before = {name: getattr(flags, name) for name in CAPTURE_CUDNN}
    for name, value in CAPTURE_CUDNN.items():
        setattr(flags, name, value)
    try:
        yield dict(CAPTURE_CUDNN)
    finally:
        for name, value in before.items():
            setattr(flags, name, value)


def make_optimizer(vae: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam over every parameter of the VAE, fused into one kernel per step."""
    return torch.optim.Adam(vae.parameters(), lr=lr, fused=True)


def kl_warmup_weight(step, warmup_steps: float, kl_weight: float = 1.0):
    """The KL term's weight at training step ``step`` (1-based; a float or a device tensor):
    ``kl_weight * min(step / warmup_steps, 1)`` (never 0: a zero scale would drop the KL's
    gradient), ``kl_weight`` (beta of a beta-VAE) throughout without warm-up."""
    if not warmup_steps:
        return kl_weight
    if torch.is_tensor(step):
        return torch.clamp(step / warmup_steps, max=1.0) * kl_weight
    return min(step / warmup_steps, 1.0) * kl_weight


def loss_and_backward(
    loss_fn,
    optim: torch.optim.Optimizer,
    x: torch.Tensor,
    beta,
    denominator: float,
    ctx: distributed.Context | None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-image loss of the batch ``x`` (its KL term weighted by ``beta`` unless None; its
    ``labels`` given to a structure that learns from them), its gradients (the optimizer's old
    ones dropped), and the value (detached; under data parallelism the mean over ranks, identical
    on every rank)."""
    kw = {} if labels is None else {"labels": labels}
    loss = (loss_fn(x, **kw) if beta is None else loss_fn(x, beta, **kw)) / denominator
    optim.zero_grad(set_to_none=True)
    loss.backward()
    value = loss.detach()
    if ctx is not None and ctx.active:
        value = distributed.all_sum(value, ctx) / ctx.world_size
    return value


def train_step(
    loss_fn,
    optim: torch.optim.Optimizer,
    x: torch.Tensor,
    beta: float | None = None,
    denominator: float | None = None,
    ctx: distributed.Context | None = None,
) -> torch.Tensor:
    """One SVI step on the batch ``x``, for hand-written loops: the negative ELBO per image (its KL
    term weighted by ``beta`` when given), its gradients, an optimizer step. Returns the loss
    (detached); a non-finite loss is returned without stepping (this reads the loss on the host).

    Data-parallel (``ctx`` with several ranks, ``loss_fn`` a DDP module): ``x`` is this rank's
    shard and ``denominator`` the global batch size over the world size, so the averaged gradient
    is the global batch's; the returned loss is the global mean, identical on every rank."""
    value = loss_and_backward(loss_fn, optim, x, beta, x.shape[0] if denominator is None else denominator, ctx)
    if torch.isfinite(value):
        optim.step()
    return value


@dataclass(frozen=True)
class Reading:
    """The device's accumulators, read by the host: the epoch's loss sum (images x per-image loss,
    good steps only), the global index (0-based) of the first step whose loss was not finite (None
    if none was) and that loss."""

    total: float
    bad_step: int | None
    bad_value: float


@dataclass(frozen=True)
class Choice:
    """The engine that runs (``eager`` / ``graph`` / ``compiled``), whether the body is captured
    and whether the loss is compiled, and why it differs from the request (None when it does not)."""

    name: str
    capture: bool
    compile_loss: bool
    reason: str | None = None
    whole: bool = False  # the whole step (forward, backward, Adam) in one compiled graph (the CPU's compiled)


# The CPU's auto engine compiles the whole step for runs of at least this many steps. Measured on the
# 2-core host at batch 128 (benchmarks/cpu_step.py, docs/performance.md): a compiled step saves about
# 2 ms; compiling takes about 27 s in a fresh process with an empty inductor cache and a few seconds
# from the cache, so a cold compilation pays for itself after about 12,000 steps (the default run
# has 11,730) and a cached one after a few thousand. Shorter runs (tests, smoke runs) stay eager.
COMPILE_MIN_STEPS = 10_000


def choose_engine(
    requested: str,
    device: torch.device,
    static: bool,
    data_parallel: bool,
    compilable: bool = True,
    steps: int | None = None,
) -> Choice:
    """What ``train.engine = requested`` runs on ``device``. ``static``: the loss is one of pyro-vae's
    estimators on a structure whose sites are the same every step (``Loss.static``: capture and
    compilation need it); ``data_parallel``: several processes (capture with NCCL's collectives is
    not made safe here, so DDP runs uncaptured); ``compilable``: the loss survives ``torch.compile``
    (``Loss.compilable``: the lean path without gradient hooks on z, which the compiled backward
    drops: ``iwae_dreg``'s gradients came out wrong in a side-by-side check); ``steps``: the steps
    the run will take (on a CPU, ``auto`` compiles only runs of :data:`COMPILE_MIN_STEPS` or more).

    On CUDA, ``auto`` captures the step in a CUDA graph and ``compiled`` compiles the loss (and
    captures the step). On a CPU, ``compiled`` (and ``auto`` where it pays) compiles the whole step
    into one graph (:mod:`pyro_vae.training.whole_step`); under data parallelism the loss only."""
    if requested not in ENGINES:
        raise ValueError(f"train.engine must be one of {ENGINES}, got {requested!r}")
    cuda = device.type == "cuda"
    if requested == "eager":
        return Choice("eager", False, False)
    if requested == "auto" and not cuda:
        return _cpu_auto(static, data_parallel, compilable, steps)
    name = "graph" if requested == "auto" else requested
    why = None
    if not static:
        why = "the loss is Pyro's own ELBO (a JIT or plugin ELBO class) or its sites change between steps"
    elif name == "graph" and not cuda:
        why = "CUDA graphs need a CUDA device"
    elif name == "graph" and data_parallel:
        why = "capture under data parallelism (NCCL collectives inside a graph) is not supported"
    elif name == "compiled" and not cuda and compilable and not data_parallel:
        why = compiler_problem()
    if why:
        return Choice("eager", False, False, f"train.engine={requested} runs eagerly: {why}")
    if name == "compiled" and not compilable:
        capture = cuda and not data_parallel
        return Choice(
            "graph" if capture else "eager",
            capture,
            False,
            f"train.engine=compiled runs {'as graph' if capture else 'eagerly'}: this ELBO reweights "
            "gradients with hooks on z, which torch.compile does not keep, or the loss runs through "
            "Pyro's effect handlers (train.fast_path=false, or a structure without stories)",
        )
    if name == "compiled" and not cuda and not data_parallel:
        return Choice("compiled", False, False, whole=True)
    return Choice(name, cuda and not data_parallel, name == "compiled")


def _cpu_auto(static: bool, data_parallel: bool, compilable: bool, steps: int | None) -> Choice:
    """``train.engine=auto`` on a CPU: the whole step compiled where it pays, else eager (with the
    reason, which ``fit`` logs as one line)."""
    why = None
    if not (static and compilable):
        why = "this loss cannot be compiled (Pyro's own ELBO, gradient hooks on z, or Pyro's effect handlers)"
    elif data_parallel:
        why = "the whole-step compilation does not cover data parallelism"
    elif steps is not None and steps < COMPILE_MIN_STEPS:
        why = f"a run of {steps} steps is shorter than compiling pays for ({COMPILE_MIN_STEPS} steps or more)"
    else:
        why = compiler_problem()
    if why:
        return Choice("eager", False, False, f"train.engine=auto runs eagerly: {why}")
    return Choice("compiled", False, False, whole=True)


def capture_choice(choice: Choice, requested: str, problem: CaptureProblem | None) -> Choice:
    """The engine that runs once the step has been checked: ``choice`` when it captures nothing or
    the check found nothing; eager with the reason under ``train.engine=auto``; a ``ConfigError``
    when ``train.engine`` named an engine that captures."""
    if not choice.capture or problem is None:
        return choice
    if requested != "auto":
        raise ConfigError(
            f"train.engine={requested} captures the training step in a CUDA graph, which cannot hold "
            f"{problem}. Use train.engine=auto (it then runs eagerly) or train.engine=eager"
        )
    return Choice("eager", False, False, f"train.engine=auto runs eagerly: a CUDA graph cannot hold {problem}")


def checked_choice(choice: Choice, requested: str, make_engine: Callable[[Choice], StepEngine]) -> Choice:
    """:func:`capture_choice` after checking the step of ``make_engine(capturing_choice)`` (a
    :class:`StepEngine` built for capture, with the loss uncompiled) when ``choice`` captures."""
    if not choice.capture:
        return choice
    problem = make_engine(Choice(choice.name, True, False)).check_capture()
    return capture_choice(choice, requested, problem)


class StepEngine:
    """Runs training steps over ``x_train`` (the stored split, on the training device) with
    ``optim`` (a fused Adam, set up here for the engine: build this after loading its state).

    Per epoch: :meth:`start_epoch` with the epoch's permutation, then :meth:`step` once per batch
    (batch ``batch_size`` images, the last one the remainder), :meth:`read` whenever the host
    needs the loss sum or the non-finite flag. The KL term is weighted by
    ``kl_weight * min((step + 1) / warmup_steps, 1)`` at global step ``step`` (0-based), by
    ``kl_weight`` (beta) throughout when ``warmup_steps`` is 0."""

    def __init__(
        self,
        loss_fn: Callable,
        optim: torch.optim.Optimizer,
        x_train: torch.Tensor,
        batch_size: int,
        choice: Choice,
        *,
        binarize: bool = False,
        warmup_steps: float = 0.0,
        kl_weight: float = 1.0,
        ctx: distributed.Context | None = None,
        fallback: bool = False,
        module: torch.nn.Module | None = None,
        labels: torch.Tensor | None = None,
        epoch_length: int | None = None,
        normalize_grads: bool = False,
    ) -> None:
        device = x_train.device
        self.optim, self.x, self.bs, self.choice, self.fallback = optim, x_train, batch_size, choice, fallback
        self.binarize, self.warmup_steps, self.ctx = binarize, float(warmup_steps), ctx or distributed.Context()
        self.kl_weight, self.labels = float(kl_weight), labels
        self.normalize_grads = normalize_grads  # AdamNormGrad: each gradient / its norm before Adam
        self.n = epoch_length or x_train.shape[0]  # rows of an epoch's order (labelled images may repeat)
        self.loss_fn = torch.compile(loss_fn) if choice.compile_loss else loss_fn
        self.world = self.ctx.world_size
        self.perm = torch.zeros(self.n, dtype=torch.long, device=device)
        self.offsets = torch.arange(min(batch_size, self.n), device=device)  # no batch is larger than the split
        self.batch = torch.zeros((), dtype=torch.long, device=device)  # batch index within the epoch
        self.step_count = torch.zeros((), dtype=torch.long, device=device)  # global steps run
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # images x loss, this epoch
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step, -1 if none
        self.bad_value = torch.zeros((), dtype=torch.float64, device=device)  # its loss
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)  # Adam skips its update when 1
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._next = 0  # host copy of the batch index
        _prepare_optimizer(optim, device, choice.capture)
        self.whole = None
        if choice.whole:
            if module is None:
                raise ValueError("the compiled whole step needs the module whose parameters it trains")
            self.whole = WholeStep(self, module, loss_fn)

    # -- host side ----------------------------------------------------------------------------------
    def start_epoch(self, perm: torch.Tensor, start: int = 0, total: float = 0.0, step: int = 0) -> None:
        """Begin (or continue, at batch ``start`` with loss sum ``total``) an epoch whose image order
        is ``perm``; ``step`` is the number of steps run before."""
        self.perm.copy_(perm, non_blocking=True)
        self.batch.fill_(start)
        self.loss_sum.fill_(total)
        self.step_count.fill_(step)
        self.bad_step.fill_(-1)
        self._next = start
        if self.whole is not None:
            _init_optimizer_state(self.optim)  # (the compiled step reads and writes Adam's state)

    def size(self, i: int) -> int:
        """Images in batch ``i`` of an epoch."""
        return min(self.bs, self.n - i * self.bs)

    def step(self) -> None:
        """Queue the next batch's step (nothing waits for the device). Distribution argument checks
        are off for the step: each one reads a device value on the host (the data were validated
        once before training)."""
        size = self.size(self._next)
        with pyro.validation_enabled(False):
            graph = (self.graphs.get(size) or self._capture(size)) if self.choice.capture else None
            if graph is not None:
                graph.replay()
            elif self.whole is not None and size == self.bs:  # (an epoch's last, smaller batch: eager,
                self._whole_step(size)  # rather than a second compilation for one step an epoch)
            else:
                self._body(size)
        self._next += 1

    def _whole_step(self, size: int) -> None:
        """The compiled whole step; under ``fallback``, a compilation that fails (before anything
        ran) is logged once and the run continues eagerly from the same state."""
        try:
            self.whole(size)
        except Exception as exc:
            if not self.fallback or size in self.whole.compile_seconds:
                raise
            log.warning(
                "compiling the training step failed (%s: %s); the run continues eagerly", type(exc).__name__, exc
            )
            self.whole, self.choice = None, Choice("eager", False, False, f"the compilation failed: {exc}")
            self._body(size)

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling the whole step (0 when it is not compiled)."""
        return sum(self.whole.compile_seconds.values()) if self.whole is not None else 0.0

    def read(self) -> Reading:
        """What the device has accumulated this epoch (waits for it)."""
        total, bad, value = torch.stack([self.loss_sum, self.bad_step.double(), self.bad_value]).tolist()
        return Reading(total, None if bad < 0 else int(bad), value)

    def images(self, i: int) -> torch.Tensor:
        """The decoded images of batch ``i`` of the current epoch (this rank's shard)."""
        rows = distributed.shard(self.perm[i * self.bs : i * self.bs + self.size(i)], self.ctx)
        return decode(self.x[rows])

    # -- device side --------------------------------------------------------------------------------
    def _body(self, size: int) -> None:
        if self.choice.capture:  # the batch position from the device counter, which replays advance
            idx = self.perm.index_select(0, self.batch * self.bs + self.offsets[:size])
        else:  # the same rows by a view, without kernels (a few percent of a small CPU step)
            idx = self.perm.narrow(0, self._next * self.bs, size)
        rows = distributed.shard(idx, self.ctx)
        xb = decode(self.x.index_select(0, rows))
        if self.binarize:
            xb = torch.bernoulli(xb)
        yb = None if self.labels is None else self.labels.index_select(0, rows)
        value = loss_and_backward(self.loss_fn, self.optim, xb, self._beta(xb), size / self.world, self.ctx, yb)
        ok = self._account(value, size)
        self.found_inf.copy_((~ok).to(self.found_inf.dtype))
        if self.normalize_grads:
            normalize_gradients([p.grad for g in self.optim.param_groups for p in g["params"] if p.grad is not None])
        self.optim.found_inf = self.found_inf
        self.optim.step()
        if self.choice.capture:
            self.batch.add_(1)

    def _beta(self, xb: torch.Tensor):
        """The KL term's weight at the coming step (from the device step counter), or None."""
        if not (self.warmup_steps or self.kl_weight != 1.0):
            return None
        return kl_warmup_weight((self.step_count + 1).to(xb.dtype), self.warmup_steps, self.kl_weight)

    def _account(self, value: torch.Tensor, size: int) -> torch.Tensor:
        """Book the step's loss ``value`` (per image, ``size`` images) on the device: added to the
        epoch's sum when finite and no earlier step was not, else the first bad step and its value
        recorded; the step counter advanced. Returns whether the step may update (a device bool)."""
        clean = self.bad_step < 0  # no bad step yet this epoch
        ok = torch.isfinite(value) & clean
        first_bad = ~ok & clean
        self.bad_step.copy_(torch.where(first_bad, self.step_count, self.bad_step))
        self.bad_value.copy_(torch.where(first_bad, value.double(), self.bad_value))
        self.loss_sum.add_(torch.where(ok, value.double() * size, 0.0))
        self.step_count.add_(1)
        return ok

    def check_capture(self, size: int | None = None, validation: bool = False) -> CaptureProblem | None:
        """Run one step body (batches of ``size`` images, default the batch size) as a capture
        would, watched (:mod:`pyro_vae.training.capture`): what a CUDA graph could not hold, or None.
        Everything the step changes (parameters, gradients, optimizer state, counters, the RNG) is
        put back. ``validation``: with distribution argument checks on (the step turns them off)."""
        size = size or self.size(0)
        _init_optimizer_state(self.optim)
        state = self._state_tensors()
        saved = [t.clone() for t in state]
        params = [p for group in self.optim.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        try:
            return watched(lambda: self._body(size), self.x.device, validation)
        finally:
            with torch.no_grad():
                for t, value in zip(state, saved):
                    t.copy_(value)
            for p, g in zip(params, grads):
                p.grad = g

    def _state_tensors(self) -> list[torch.Tensor]:
        params = [p for group in self.optim.param_groups for p in group["params"]]
        optim_state = [t for s in self.optim.state.values() for t in s.values() if torch.is_tensor(t)]
        counters = [self.batch, self.step_count, self.loss_sum, self.bad_step, self.bad_value, self.found_inf]
        return [*params, *optim_state, *counters]

    def _capture(self, size: int) -> torch.cuda.CUDAGraph | None:
        """Capture the body for batches of ``size`` images. The warm-up steps it needs run on a side
        stream and are then undone (parameters, optimizer state, counters and the RNG restored in
        place), so capturing changes nothing a run computes. If capturing raises (a case
        :mod:`pyro_vae.training.capture` did not foresee) and ``fallback`` is set, the state is
        restored the same way, the failure logged once, and the engine runs eagerly from here on
        (returns None)."""
        device = self.x.device
        with pyro.validation_enabled(False):  # argument checks synchronise, which a capture forbids
            _init_optimizer_state(self.optim)
            saved = [t.clone() for t in self._state_tensors()]
            rng = _rng_state(device)
            try:
                graph = self._record(size)
            except Exception as exc:
                if not self.fallback:
                    raise
                graph, failure = None, exc
            with torch.no_grad():
                for t, value in zip(self._state_tensors(), saved):
                    t.copy_(value)
            _set_rng_state(device, rng)
        if graph is None:
            log.warning(
                "capturing the training step in a CUDA graph failed (%s: %s); the run continues eagerly "
                "from the same state",
                type(failure).__name__,
                failure,
            )
            self.choice = Choice("eager", False, False, f"the capture failed: {failure}")
            _prepare_optimizer(self.optim, device, False)
            return None
        self.graphs[size] = graph
        log.debug("captured the training step for batches of %d images", size)
        return graph

    def _record(self, size: int) -> torch.cuda.CUDAGraph:
        """Warm up on a side stream, then capture one body, both under :func:`cudnn_for_capture`."""
        device = self.x.device
        with cudnn_for_capture():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._body(size)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body(size)
        return graph


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _prepare_optimizer(optim: torch.optim.Optimizer, device: torch.device, capture: bool) -> None:
    """A captured Adam step needs ``capturable`` and its learning rate as a device tensor (which the
    scheduler then updates in place); an uncaptured one takes a plain float. Applied after any
    ``load_state_dict`` (which brings the saving run's choice), so runs move between engines. The
    tensor is float32; the float it was made from is kept beside it (``lr_exact``) and given back
    when the group returns to a float, unless the tensor has changed since (a scheduler step)."""
    for group in optim.param_groups:
        group["capturable"] = capture
        exact = _exact_lr(group)
        group.pop("lr_exact", None)
        if capture:
            group["lr"], group["lr_exact"] = torch.tensor(exact, device=device), exact
        else:
            group["lr"] = exact


def _exact_lr(group: dict) -> float:
    """A group's learning rate as a float: for a device tensor, the float it was made from
    (``lr_exact``), unless none is kept or a scheduler has changed the tensor since."""
    lr, exact = group["lr"], group.get("lr_exact")
    if not torch.is_tensor(lr) or exact is None or float(torch.tensor(exact, dtype=lr.dtype)) != float(lr):
        return float(lr)
    return float(exact)


def restart_optimizer(optim: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every group's learning rate by ``factor`` and set Adam's state back to a fresh
    optimizer's (zero moments, step 0), in place: a captured or compiled step holds these tensors.
    A learning rate held as a device tensor (a captured step) is filled, with its float beside it."""
    for group in optim.param_groups:
        new = _exact_lr(group) * factor
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(new)
            group["lr_exact"] = new
        else:
            group["lr"] = new
    for state in optim.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.zero_()


def _init_optimizer_state(optim: torch.optim.Optimizer) -> None:
    """Create Adam's state (zero moments, step 0) where it does not exist yet, without changing a
    parameter: a step with zero gradients that ``found_inf`` skips. The state then exists before
    the warm-up, so it can be restored to exactly what a fresh optimizer would start from."""
    params = [p for group in optim.param_groups for p in group["params"] if p not in optim.state]
    if not params:
        return
    grads = [p.grad for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    previous = getattr(optim, "found_inf", None)
    optim.found_inf = torch.ones((), device=params[0].device)
    optim.step()
    optim.found_inf = previous
    for p, g in zip(params, grads):
        p.grad = g
