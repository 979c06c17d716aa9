"""Whether a training step can be captured in a CUDA graph, decided on any device (the CPU included).

A CUDA graph replays the kernels a step launched; it cannot hold what needs the host in the middle
of the step. :meth:`StepEngine.check_capture <pyro_vae.training.engine.StepEngine.check_capture>`
runs one step body of the engine (through :func:`watched`) under a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every aten operation and
reports the first of:

- a host sync: ``aten._local_scalar_dense`` (``.item()``, ``bool()``, ``float()`` of a tensor, so
  also every argument check of a distribution with validation on);
- a tensor made from Python data inside the step (``aten.lift_fresh``: ``torch.tensor(0.5)``, which
  on a GPU is a host-to-device copy);
- an operation whose output shape depends on the data (``nonzero``, ``masked_select``, indexing
  with a boolean mask, ``unique``);
- a copy between devices (``aten._to_copy`` to another device).

One case is allowed: Pyro's ``pyro.plate`` without a ``device`` makes an empty tensor on the default
(CPU) device, once per plate entry, only to read its ``.device`` (``_Subsample.__init__``); it is
never copied to the GPU, and the structures pass ``device=`` anyway, so only a plugin's own plates
make it.

Everything the step changes (parameters, optimizer state, the engine's counters, the RNG) is put
back afterwards, so checking changes nothing a run computes. :func:`~pyro_vae.training.engine.capture_choice`
is the one place that turns a problem into a decision: ``train.engine=auto`` runs eagerly (one log line naming the
operation and where it came from), an engine that captures by name is a ``ConfigError``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_vae.seeding import fork_rng

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


def _from_pyros_plate() -> bool:
    return any(
        f.filename.endswith("pyro/poutine/subsample_messenger.py") and f.name == "__init__"
        for f in traceback.extract_stack()
    )


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
        if what is not None and func.overloadpacket is aten.lift_fresh and _from_pyros_plate():
            what = None  # the device probe of pyro.plate without device= (see the module's docstring)
        if what is not None:
            self.count += 1
            if self.first is None:
                self.first = (str(func), what, _issuer())
        return func(*args, **kwargs)


def watched(step: Callable[[], None], device: torch.device, validation: bool = False) -> CaptureProblem | None:
    """Run ``step`` (one training step body) under the watch, its random draws borrowed
    (:func:`~pyro_vae.seeding.fork_rng`); what a CUDA graph could not hold, or None. ``validation``:
    with distribution argument checks on. :meth:`pyro_vae.training.engine.StepEngine.check_capture`
    runs its own step this way and puts back what the step changed."""
    watch = _Watch()
    with fork_rng(device), pyro.validation_enabled(validation), watch:
        step()
    return None if watch.first is None else CaptureProblem(*watch.first, watch.count)
