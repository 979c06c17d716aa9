"""The whole training step as one compiled function (the CPU's ``compiled`` engine).

Forward, backward and Adam run in one graph of :func:`torch.compile` (``fullgraph=True``), as the
peers compile theirs (NumPyro's jitted SVI update, a functional PyTorch step): the batch gathered
and decoded, the loss of the structure's parameters (:func:`torch.func.functional_call`), its
gradient (:func:`torch.func.grad_and_value`), Adam's update of the parameters and of the optimizer's
own state tensors (``exp_avg``, ``exp_avg_sq``, ``step``: the checkpoint and a later eager or
captured step read them as they read a ``torch.optim.Adam`` step's), and the engine's accumulators
(the epoch's loss sum, the first non-finite step, after which no update is made). One graph for the
batch size, compiled on first use (the engine runs an epoch's last, smaller batch eagerly on the
same state rather than compiling a second graph for one step an epoch).

The random draws (``z``, dynamic binarization) are torch's own (inductor's ``fallback_random``), so
a compiled step draws what the eager step draws; the arithmetic is fused, so its numbers equal the
eager step's to rounding, not bit for bit.
"""

from __future__ import annotations

import logging
import math
import time
import types
from collections.abc import Callable

import torch
from torch import nn

from pyro_vae.data.pixels import decode

log = logging.getLogger(__name__)

# torch's RNG in the graph (the eager step's draws); guards on the tensors only: everything else the
# step reads (the engine's settings, the structure's modules, the loss) is fixed for the life of one
# WholeStep, which compiles its own copy of the code (Dynamo keeps its graphs per code object, so
# two WholeSteps never share one), and the batch size is the shape of an argument. (Dynamo's guards
# on the modules cost about as much as the rest of the step's Python at a small batch.)
COMPILE_OPTIONS = {"fallback_random": True, "guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe}


class _Objective(nn.Module):
    """``loss_fn(x, beta)`` as the forward of a module that holds ``structure``, so that
    :func:`torch.func.functional_call` can run it on other parameter tensors."""

    def __init__(self, structure: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.structure, self.loss_fn = structure, loss_fn

    def forward(self, x: torch.Tensor, beta, labels: torch.Tensor | None) -> torch.Tensor:
        kw = {} if labels is None else {"labels": labels}
        return self.loss_fn(x, **kw) if beta is None else self.loss_fn(x, beta, **kw)


def adam_settings(optim: torch.optim.Optimizer, params: list[torch.Tensor]) -> dict:
    """The one parameter group of a plain Adam over exactly ``params`` (betas, eps), or
    ``ValueError`` saying what the compiled step does not reproduce."""
    if type(optim) is not torch.optim.Adam or len(optim.param_groups) != 1:
        raise ValueError("the compiled step writes out torch.optim.Adam with one parameter group")
    group = optim.param_groups[0]
    if {id(p) for p in group["params"]} != {id(p) for p in params} or len(group["params"]) != len(params):
        raise ValueError("the optimizer's parameters are not the structure's")
    unsupported = [k for k in ("amsgrad", "maximize", "weight_decay", "decoupled_weight_decay") if group.get(k)]
    if unsupported:
        raise ValueError(f"the compiled step writes out plain Adam, not Adam with {', '.join(unsupported)}")
    beta1, beta2 = group["betas"]
    return {"beta1": float(beta1), "beta2": float(beta2), "eps": float(group["eps"])}


class WholeStep:
    """``whole(size)``: one training step on the next batch of ``engine`` (a
    :class:`~pyro_vae.training.engine.StepEngine`), compiled on first use. The
    engine's state (its permutation, batch and step counters, accumulators) and the optimizer's
    are read and written in place. ``compile_seconds`` maps each batch size to its compile time."""

    def __init__(self, engine, structure: nn.Module, loss_fn: Callable) -> None:
        self.engine = engine
        self.names = [name for name, _ in structure.named_parameters()]
        self.params = [p for _, p in structure.named_parameters()]
        self.adam = adam_settings(engine.optim, self.params)
        # The compiled function takes the parameters detached (the same storage): it differentiates
        # the loss itself, so nothing outside it records their in-place update.
        self.values = [p.detach() for p in self.params]
        self.objective = _Objective(structure, loss_fn)
        # Adam's step size and sqrt(bias correction 2) for the coming step, computed here from the
        # step count (all the group's parameters share it): inside the graph a scalar power would
        # be recomputed for every vector of every parameter.
        self.scalars = torch.zeros(2)
        self.compile_seconds: dict[int, float] = {}
        self._offsets: dict[int, torch.Tensor] = {}
        own = types.FunctionType(WholeStep._step.__code__.replace(), globals(), "_step")
        self._compiled = torch.compile(
            types.MethodType(own, self), fullgraph=True, dynamic=False, options=COMPILE_OPTIONS
        )

    def __call__(self, size: int) -> None:
        group = self.engine.optim.param_groups[0]
        t = float(self.engine.optim.state[self.params[0]]["step"]) + 1
        beta1, beta2 = self.adam["beta1"], self.adam["beta2"]
        self.scalars[0], self.scalars[1] = float(group["lr"]) / (1 - beta1**t), math.sqrt(1 - beta2**t)
        offsets = self._offsets.get(size)
        if offsets is not None:
            self._compiled(offsets, self.values, *self._state(), self.scalars)
            return
        t = time.perf_counter()
        self._offsets[size] = offsets = self.engine.offsets[:size].clone()
        self._compiled(offsets, self.values, *self._state(), self.scalars)
        self.compile_seconds[size] = time.perf_counter() - t
        log.info("compiled the training step for batches of %d images in %.1f s", size, self.compile_seconds[size])

    def _state(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        state = self.engine.optim.state
        return (
            [state[p]["exp_avg"] for p in self.params],
            [state[p]["exp_avg_sq"] for p in self.params],
            [state[p]["step"] for p in self.params],
        )

    def _step(self, offsets, params, exp_avgs, exp_avg_sqs, steps, scalars) -> None:
        e, size = self.engine, offsets.shape[0]
        idx = e.perm.index_select(0, e.batch * e.bs + offsets)
        xb = decode(e.x.index_select(0, idx))
        if e.binarize:
            xb = torch.bernoulli(xb)
        yb = None if e.labels is None else e.labels.index_select(0, idx)
        beta, denominator = e._beta(xb), size / e.world

        def loss(values):
            swapped = {f"structure.{name}": value for name, value in zip(self.names, values)}
            return torch.func.functional_call(self.objective, swapped, (xb, beta, yb)) / denominator

        grads, value = torch.func.grad_and_value(loss)(tuple(params))
        ok = e._account(value.detach(), size)  # the engine's bookkeeping, as its eager step keeps it
        e.batch.add_(1)
        if e.normalize_grads:
            grads = normalize_gradients(list(grads))
        _adam(params, grads, exp_avgs, exp_avg_sqs, steps, scalars, ok, **self.adam)


NORM_GRAD_EPS = 1e-7  # Tomczak & Welling's AdamNormGrad: g / (||g|| + 1e-7)


def normalize_gradients(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each gradient divided by its L2 norm (plus :data:`NORM_GRAD_EPS`): what Tomczak & Welling's
    AdamNormGrad does before Adam's update (``train.normalize_grads``). In place (the ``.grad`` s
    of the eager step, the fresh gradients of the compiled one); returns them. No host sync."""
    if not grads:
        return grads
    norms = torch._foreach_norm(grads)
    torch._foreach_add_(norms, NORM_GRAD_EPS)
    torch._foreach_div_(grads, norms)
    return grads


def _adam(params, grads, exp_avgs, exp_avg_sqs, steps, scalars, ok, *, beta1, beta2, eps) -> None:
    """torch.optim.Adam's update (no weight decay, amsgrad or maximize), made only where ``ok``;
    ``scalars``: the step size lr / (1 - beta1^t) and sqrt(1 - beta2^t) of this step t."""
    step_size, bias2_sqrt = scalars[0], scalars[1]
    for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        m_new = m + (g - m) * (1 - beta1)
        v_new = v * beta2 + g * g * (1 - beta2)
        p_new = p - step_size * m_new / (v_new.sqrt() / bias2_sqrt + eps)
        p.copy_(torch.where(ok, p_new, p))
        m.copy_(torch.where(ok, m_new, m))
        v.copy_(torch.where(ok, v_new, v))
        s.copy_(torch.where(ok, s + 1, s))
