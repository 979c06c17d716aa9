"""Atomic, safe checkpoints and the random-number state that makes a resumed run exact.

A checkpoint holds only tensors, numbers, strings, ``None`` and lists, tuples and dicts of them
(the random states of Python, NumPy, torch and CUDA included, converted losslessly), and is read
back with ``torch.load(weights_only=True)``: opening a run folder someone else made never
unpickles arbitrary objects, so it cannot run code. :func:`save_checkpoint` refuses to write
anything else, so every checkpoint it writes can be read that way.

Format 1 (pyro-vae 0.1.0 stored NumPy's random state as a NumPy array) is read through the same
restricted unpickler with NumPy arrays allowed (what ``torch.load`` documents for them), and
converted on reading.
"""

from __future__ import annotations

import io
import pickle
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.files import write_atomic

FORMAT_VERSION = 2
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)
# What format 1 needs beyond the defaults: NumPy arrays and their dtypes, nothing that runs code.
_NUMPY_GLOBALS = [np.ndarray((0,)).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value of ``obj`` that a ``weights_only`` load could
    not read back (anything but tensors, numbers, strings, None, lists, tuples, dicts)."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; keys must be str or int")
            check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"{where} is a {type(obj).__module__}.{type(obj).__name__}, which a safe (weights_only) "
            "checkpoint cannot hold; convert it to tensors, numbers, strings, lists or dicts"
        )


def save_checkpoint(state: dict[str, Any], path: str | Path, inside: str | Path | None = None) -> None:
    """Write ``state`` to ``path`` atomically (:func:`pyro_vae.files.write_atomic`): a temporary
    file in the same folder, flushed to disk, then renamed over the old one; a crash mid-write
    leaves the previous checkpoint intact. No folder between ``inside`` (the run folder; default
    ``path``'s folder) and the file may be a link. ``TypeError`` (before anything is written) if
    ``state`` holds a value :func:`check_plain` rejects."""
    state = {"format_version": FORMAT_VERSION, **state}
    check_plain(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue(), inside)


class UnsafeCheckpoint(ValueError):
    """The restricted unpickler refused the file: nothing in it was built or run."""


def _reason(exc: Exception) -> str:
    """The line of torch's weights-only error that says what was refused."""
    boilerplate = (
        "Weights only load failed",
        "In PyTorch",
        "Re-running",
        "Please file",
        "Check the documentation",
        "(1)",
        "(2)",
        "WeightsUnpickler error: $",
    )
    for line in str(exc).replace("WeightsUnpickler error: ", "\n").splitlines():
        if line.strip() and not line.strip().startswith(boilerplate):
            return line.strip()
    return type(exc).__name__


def _load_restricted(path: Path, map_location, allowed: list) -> Any:
    """``torch.load(weights_only=True)`` with the extra classes ``allowed``; whatever the
    restricted unpickler refuses raises :class:`UnsafeCheckpoint`."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(allowed):
            warnings.simplefilter("ignore", UserWarning)  # a plain pickle's protocol: refused or read anyway
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(_reason(exc)) from None


def _safe_load(path: Path, map_location) -> Any:
    try:
        return _load_restricted(path, map_location, [])
    except UnsafeCheckpoint:
        pass  # maybe format 1 (NumPy arrays): retry with those allowed, and nothing else
    state = _load_restricted(path, map_location, _NUMPY_GLOBALS)
    if not isinstance(state, dict) or state.get("format_version") != 1:
        raise UnsafeCheckpoint("NumPy arrays, which only format 1 checkpoints hold")
    return state


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (format 2, or format 1 converted),
    with tensors on ``map_location`` (a checkpoint written on a GPU loads on a CPU-only machine).
    ``ValueError`` if it is missing, corrupt, or holds anything a checkpoint never holds (objects
    whose unpickling could run code are refused before they are built)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"checkpoint {path} is a folder, not a checkpoint file; move it away (a run folder keeps its "
            "checkpoints as files in checkpoints/)"
        )
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = _safe_load(path, map_location)
    except UnsafeCheckpoint as exc:
        raise UnsafeCheckpoint(
            f"{path} is not a pyro-vae checkpoint: the safe loader refused it ({exc}). It is damaged, or it "
            "holds objects that a checkpoint never holds; nothing in it was run (unpickling arbitrary objects "
            "can run code, so pyro-vae never does). Use checkpoints written by pyro-vae"
        ) from None
    except Exception as exc:  # torch raises many types for a damaged file
        raise ValueError(
            f"checkpoint {path} is corrupt or not a pyro-vae checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version == 1:
        state = _from_format_1(state)
    elif version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} is not a pyro-vae checkpoint of format 1 or {FORMAT_VERSION} "
            f"(format_version: {version!r})"
        )
    return state


def _from_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """Format 1 as format 2: NumPy's random state as tensors (the rest is unchanged)."""
    state = dict(state, format_version=FORMAT_VERSION)
    if "rng" in state:
        state["rng"] = _plain_rng(state["rng"])
    if "rng_ranks" in state:
        state["rng_ranks"] = [_plain_rng(r) for r in state["rng_ranks"]]
    return state


def _plain_rng(rng: dict[str, Any]) -> dict[str, Any]:
    numpy_state = rng["numpy"]
    if isinstance(numpy_state, tuple):  # np.random.get_state(): (name, keys, pos, has_gauss, cached)
        name, keys, pos, has_gauss, cached = numpy_state
        numpy_state = {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return dict(rng, numpy=numpy_state)


def get_rng_state() -> dict[str, Any]:
    """The state of every generator that training draws from (Python, NumPy, torch, and CUDA
    where it has been used), as plain values a safe checkpoint can hold."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return _plain_rng(state)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`'s ``state``. CUDA states are restored for the devices both
    machines have; a state without CUDA (a run from a CPU) leaves the CUDA generators alone."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
