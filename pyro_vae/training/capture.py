"""Whether a training step can be captured in a CUDA graph, decided on any device (the CPU included).

A CUDA graph replays the kernels a step launched; it cannot hold what needs the host in the middle
of the step. :func:`check_capture` runs one step body of a :class:`~pyro_vae.training.engine.StepEngine`
under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every aten operation and
reports the first of:

- a host sync: ``aten._local_scalar_dense`` (``.item()``, ``bool()``, ``float()`` of a tensor, so
  also every argument check of a distribution with validation on);
- a tensor made from Python data inside the step (``aten.lift_fresh``: ``torch.tensor(0.5)``, which
  on a GPU is a host-to-device copy);
- an operation whose output shape depends on the data (``nonzero``, ``masked_select``, indexing
  with a boolean mask, ``unique``);
- a copy between devices (``aten._to_copy`` to another device).

Everything the step changes (parameters, optimizer state, the engine's counters, the RNG) is put
back afterwards, so checking changes nothing a run computes. :func:`capture_choice` is the one place
that turns a problem into a decision: ``train.engine=auto`` runs eagerly (one log line naming the
operation and where it came from), an engine that captures by name is a ``ConfigError``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_vae.config import ConfigError
from pyro_vae.seeding import fork_rng
from pyro_vae.training.engine import Choice, StepEngine, _init_optimizer_state

aten = torch.ops.aten
SYNC = "a host sync (.item(), bool() or float() of a device tensor)"
FORBIDDEN = {
    aten._local_scalar_dense: SYNC,
    aten.lift_fresh: "a tensor made from Python data inside the step (torch.tensor(...): a host-to-device copy)",
    aten.nonzero: "an output shape that depends on the data (nonzero, boolean indexing)",
    aten.masked_select: "an output shape that depends on the data (masked_select)",
    aten._unique2: "an output shape that depends on the data (unique)",
    aten.unique_dim: "an output shape that depends on the data (unique)",
    aten.unique_consecutive: "an output shape that depends on the data (unique_consecutive)",
}
_TORCH = str(Path(torch.__file__).parent)
_HERE = str(Path(__file__))


@dataclass(frozen=True)
class CaptureProblem:
    """What a CUDA graph could not hold in the step: the first forbidden operation, what it means,
    the innermost frame outside torch that issued it, and how many forbidden operations one step ran."""

    op: str
    what: str
    where: str
    count: int

    def __str__(self) -> str:
        return f"{self.what}: {self.op} at {self.where} ({self.count} such operation{'s' * (self.count > 1)} a step)"


def _issuer() -> str:
    """The innermost frame that is neither torch's nor this module's: the code that asked for the op."""
    frames = [f for f in traceback.extract_stack() if not f.filename.startswith(_TORCH) and f.filename != _HERE]
    frame = frames[-1]
    return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} ({frame.name})"


class _Watch(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.first: tuple[str, str, str] | None = None  # op, what it means, where it came from
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = FORBIDDEN.get(func.overloadpacket)
        if what is None and func.overloadpacket in (aten.index, aten.index_put, aten._index_put_impl_):
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                what = "an output shape that depends on the data (boolean indexing)"
        if what is None and func.overloadpacket is aten._to_copy and "device" in kwargs:
            source = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
            if source is not None and torch.device(kwargs["device"]) != source:
                what = f"a copy between devices ({source} -> {kwargs['device']})"
        if what is not None:
            self.count += 1
            if self.first is None:
                self.first = (str(func), what, _issuer())
        return func(*args, **kwargs)


def check_capture(engine: StepEngine, size: int | None = None, validation: bool = False) -> CaptureProblem | None:
    """Run one step body of ``engine`` (batches of ``size`` images, default its batch size) as a
    capture would, watched; return what a CUDA graph could not hold, or None. ``validation``: with
    distribution argument checks on (the engine turns them off around its step)."""
    size = size or engine.bs
    _init_optimizer_state(engine.optim)
    state = engine._state_tensors()
    saved = [t.clone() for t in state]
    grads = [p.grad for group in engine.optim.param_groups for p in group["params"]]
    watch = _Watch()
    try:
        with fork_rng(engine.x.device), pyro.validation_enabled(validation), watch:
            engine._body(size)
    finally:
        with torch.no_grad():
            for t, value in zip(state, saved):
                t.copy_(value)
        for p, g in zip((p for group in engine.optim.param_groups for p in group["params"]), grads):
            p.grad = g
    return None if watch.first is None else CaptureProblem(*watch.first, watch.count)


def capture_choice(choice: Choice, requested: str, problem: CaptureProblem | None) -> Choice:
    """The engine that runs once the step has been checked: ``choice`` when it captures nothing or
    the check found nothing; eager with the reason under ``train.engine=auto``; a ``ConfigError``
    when ``train.engine`` named an engine that captures."""
    if not choice.capture or problem is None:
        return choice
    if requested != "auto":
        raise ConfigError(f"train.engine={requested} captures the training step in a CUDA graph, which cannot hold "
                          f"{problem}. Use train.engine=auto (it then runs eagerly) or train.engine=eager")  # fmt: skip
    return Choice("eager", False, False, f"train.engine=auto runs eagerly: a CUDA graph cannot hold {problem}")


def checked_choice(choice: Choice, requested: str, make_engine) -> Choice:
    """:func:`capture_choice` after checking the step of ``make_engine(capturing_choice)`` (a
    :class:`StepEngine` built for capture, with the loss uncompiled) when ``choice`` captures."""
    if not choice.capture:
        return choice
    problem = check_capture(make_engine(Choice(choice.name, True, False)))
    return capture_choice(choice, requested, problem)
