"""Whether ``torch.compile`` can build CPU code here, asked once before relying on it.

Inductor writes C++ for the CPU and needs a compiler for it; without one, the first compiled call
fails deep inside inductor. The training engine (:func:`pyro_vae.training.engine.choose_engine`)
asks :func:`compiler_problem` first and runs eagerly, saying why, when it names a problem.
"""

from __future__ import annotations

import functools


@functools.cache
def compiler_problem() -> str | None:
    """Why ``torch.compile`` cannot build CPU code here (no working C++ compiler), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # (a missing compiler raises from inside inductor, in several ways)
        return f"no C++ compiler for torch.compile ({type(exc).__name__}: {exc})"
    return None
