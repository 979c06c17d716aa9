"""Which of ATen's vectorised CPU kernels a ``pyro-vae`` command runs: AVX-512 or AVX2.

PyTorch's x86 wheels carry each elementwise kernel built twice, for AVX2 and for AVX-512, and use
the widest the CPU has. The widest is not always the fastest: on this project's AMD EPYC host
(Zen 4, torch 2.14) the AVX-512 build of ``log1p`` took 4 to 12 times the AVX2 one's time in our probes,
and ``softplus`` (the default activation), ``log_sigmoid`` and the Bernoulli log-probability are
built on it; the IWAE evaluation spends most of its time there (``docs/performance.md``).

ATen reads the choice once, from the environment variable ``ATEN_CPU_CAPABILITY``, at the first
vectorised kernel a process runs (inductor's generated code follows the same variable), so it is
a choice for a whole process, made before its first tensor operation. :func:`choose`, called
first by the ``pyro-vae`` command and the benchmarks, makes it:

- ``ATEN_CPU_CAPABILITY`` already set: that is the choice, nothing is measured;
- a CPU without AVX-512 (or not Linux on x86): nothing to choose;
- otherwise the two builds of the kernels pyro-vae's models use are timed once on this machine,
  each in its own short process (one thread; A, B, B, A, the faster of each build's two), under a
  lock so that processes starting together measure once, and the result is cached in
  ``~/.cache/pyro_vae/cpu_kernels.json`` for this CPU model, torch version and probe; AVX2 is
  chosen where it takes at most :data:`SWITCH_BELOW` of AVX-512's time. A measurement that fails is
  cached too (torch's default kept), so that it is not retried on every command.

With a build other than AVX-512 running on an AVX-512 CPU (chosen here or by the variable),
``torch.compile``'s code is cached in a folder of its own (its default folder's name with
``_avx2``, say, unless ``TORCHINDUCTOR_CACHE_DIR`` is set): inductor's cache does not tell the
builds apart, and a process of one build running code compiled by the other can crash.

In your own Python program, call :func:`choose` before the first tensor operation, or set
``ATEN_CPU_CAPABILITY`` (``avx2``, ``avx512``, ``default``) before starting Python.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import platform
import re
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

VARIABLE = "ATEN_CPU_CAPABILITY"
# Inductor's cache is keyed without the build: a process of one build that loads code compiled by a
# process of the other can crash (torch 2.14 here: "malloc(): unaligned tcache chunk detected" in an
# AVX-512 process after an AVX2 one had compiled the same step). With AVX2 chosen, and no cache
# folder named by the user, inductor caches beside its default folder, in one of AVX2's own.
INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"
# AVX2 is chosen where the timed kernels take at most this fraction of AVX-512's time.
SWITCH_BELOW = 0.8
CACHE_BYTES = 64 * 1024  # a cache file larger than this is not read (it holds a few hundred bytes)
PROBE_TIMEOUT_S = 60
PROBE_VERSION = 2  # in the cache key: a changed probe or rule measures again

# Timed in a fresh process per build: the elementwise kernels of the default model's step and of
# its evaluation (activation, likelihood, reparameterised draw), on one thread, best of 5.
PROBE = """
import sys
del sys.path[0]  # the working folder: nothing in it is imported (the command's own rule)
import json, time, torch, torch.nn.functional as F
torch.set_num_threads(1)
x = torch.linspace(-8.0, 8.0, 256 * 784).reshape(256, 784)
ops = {
    "softplus": lambda: F.softplus(x),
    "log_sigmoid": lambda: F.logsigmoid(x),
    "log1p": lambda: torch.log1p(x.abs()),
    "exp": lambda: torch.exp(x),
    "tanh": lambda: torch.tanh(x),
    "sigmoid": lambda: torch.sigmoid(x),
}
seconds = {}
for name, op in ops.items():
    op()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            op()
        best = min(best, time.perf_counter() - t)
    seconds[name] = best / 10
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "seconds": seconds}))
"""


def cache_path() -> Path:
    return Path.home() / ".cache" / "pyro_vae" / "cpu_kernels.json"


@functools.cache
def _first_cpu() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (read once: a command asks for its flags
    and its model; empty where there is no such file)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if not line.strip():
                if fields:
                    break
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_model() -> str:
    """The first CPU's model name, family, model and stepping (``/proc/cpuinfo``)."""
    cpu = _first_cpu()
    wanted = ("model name", "cpu family", "model", "stepping")
    return " / ".join(cpu[k] for k in wanted if k in cpu) or platform.processor() or platform.machine()


def _has_avx512() -> bool:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    return "avx512f" in _first_cpu().get("flags", "").split()


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


def cache_key() -> str:
    """What a cached measurement holds for: this CPU model and this torch."""
    return f"{_cpu_model()} | torch {_torch_version()} | probe {PROBE_VERSION}, switch below {SWITCH_BELOW}"


def probe(capability: str) -> dict[str, float]:
    """Seconds per call of each kernel in :data:`PROBE` under ``ATEN_CPU_CAPABILITY=capability``,
    measured in a fresh process. Raises ``RuntimeError`` if that process fails or did not run
    the build asked for."""
    env = {**os.environ, VARIABLE: capability, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {capability} probe failed: {done.stderr.strip()[-500:]}")
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
        ran, seconds = str(out["capability"]), {str(k): float(v) for k, v in out["seconds"].items()}
    except (IndexError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RuntimeError(f"the {capability} probe printed no timings ({done.stdout.strip()[-200:]!r})") from exc
    if ran.lower() != capability:
        raise RuntimeError(f"asked for {capability}, the probe ran {ran}")
    return seconds


def decide(avx512: dict[str, float], avx2: dict[str, float]) -> str:
    """``avx2`` where the AVX2 kernels take at most :data:`SWITCH_BELOW` of AVX-512's total time."""
    return "avx2" if sum(avx2.values()) <= SWITCH_BELOW * sum(avx512.values()) else "avx512"


def _read_cache(path: Path, key: str) -> dict | None:
    """The cached measurement for ``key``, or None (missing, unreadable, oversized, malformed, for
    another CPU, torch or probe, or reached through a link: the file is data, checked before use).
    The choice is worked out again from the cached ratio, not taken from the file."""
    from pyro_vae.files import open_folder

    try:
        with open_folder(path.parent, path.parent.parent, create=False) as folder:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                raw = os.read(fd, CACHE_BYTES + 1)
            finally:
                os.close(fd)
        if len(raw) > CACHE_BYTES:
            return None
        entry = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    ratio = entry.get("ratio_avx2_to_avx512")
    if ratio is None and isinstance(entry.get("failed"), str):  # a measurement that failed here
        return {**entry, "choice": "avx512"}
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1e6:
        return None
    return {**entry, "choice": "avx2" if ratio <= SWITCH_BELOW else "avx512"}


def measure(path: Path | None = None) -> dict:
    """Time both builds here (A, B, B, A: each build's faster run) and cache the result atomically;
    a measurement that fails is cached as such. Returns the cache entry."""
    path = path or cache_path()
    t0 = time.perf_counter()
    try:
        runs = [probe(build) for build in ("avx512", "avx2", "avx2", "avx512")]
        avx512 = {k: min(runs[0][k], runs[3][k]) for k in runs[0]}
        avx2 = {k: min(runs[1][k], runs[2][k]) for k in runs[1]}
        entry = {
            "key": cache_key(),
            "choice": decide(avx512, avx2),
            "ratio_avx2_to_avx512": sum(avx2.values()) / sum(avx512.values()),
            "seconds": {"avx512": avx512, "avx2": avx2},
        }
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        log.warning("could not time the CPU kernels (%s); torch's default kernels are used", exc)
        entry = {"key": cache_key(), "choice": "avx512", "ratio_avx2_to_avx512": None, "failed": str(exc)[:500]}
    entry["measured_in_s"] = time.perf_counter() - t0
    _write_cache(path, entry)
    return entry


def _write_cache(path: Path, entry: dict) -> None:
    from pyro_vae.files import write_atomic

    try:
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(entry, indent=2) + "\n", path.parent.parent)
    except (OSError, ValueError) as exc:  # read-only, or a link on the way: the choice still holds here
        log.warning("could not cache the CPU kernel measurement in %s (%s)", path, exc)


@contextmanager
def _locked(path: Path):
    """An exclusive lock beside the cache file while one process measures (others wait, then read
    its result); no lock where the folder cannot hold one."""
    from pyro_vae.files import open_folder

    try:
        with open_folder(path.parent, path.parent.parent) as folder:
            fd = os.open(f".{path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=folder)
    except (OSError, ValueError):
        yield
        return
    import fcntl  # (POSIX; only reached on Linux, see _has_avx512)

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def choose(path: Path | None = None) -> str | None:
    """Set ``ATEN_CPU_CAPABILITY`` for this process where AVX2 is measurably faster here (see the
    module's docstring). Call it before the first tensor operation. Returns the capability set, or
    None where the choice was left to torch or to the variable already set. Never raises: the
    choice is only a matter of speed."""
    try:
        return _choose(path or cache_path())
    except Exception as exc:  # noqa: BLE001 (whatever went wrong, the command runs on torch's default)
        log.warning(
            "could not choose the CPU kernels (%s: %s); torch's default kernels are used", type(exc).__name__, exc
        )
        return None


def _choose(path: Path) -> str | None:
    if not _has_avx512():
        return None
    if os.environ.get(VARIABLE):  # the user's choice: inductor's cache kept apart if it is not AVX-512
        _own_inductor_cache(capability())
        return None
    key = cache_key()
    entry = _read_cache(path, key)
    if entry is None:
        with _locked(path):
            entry = _read_cache(path, key)  # (measured by another process while this one waited)
            if entry is None:
                log.info("timing ATen's AVX-512 and AVX2 CPU kernels once on this CPU (cached in %s)", path)
                entry = measure(path)
    if entry["choice"] != "avx2":
        return None
    os.environ[VARIABLE] = "avx2"
    if capability() != "AVX2":  # ATen chose at an earlier tensor operation of this process
        del os.environ[VARIABLE]  # (so that inductor's code keeps to ATen's choice)
        log.info(
            "CPU kernels: AVX2 would be faster on this CPU, but this process had already run a tensor "
            "operation; set %s=avx2 before starting Python to use them",
            VARIABLE,
        )
        return None
    _own_inductor_cache("AVX2")
    log.info(
        "CPU kernels: AVX2, which takes %.0f%% of AVX-512's time on this CPU (measured once, cached in "
        "%s; set %s=avx512 to keep AVX-512)",
        100 * entry["ratio_avx2_to_avx512"],
        path,
        VARIABLE,
    )
    return "avx2"


def _own_inductor_cache(build: str) -> None:
    """Inductor's cache in a folder for ``build`` (what ATen runs: ``AVX2``, ``DEFAULT``, ...), beside
    its default folder, unless the build is AVX-512 or a folder is named. (Torch's default folder's
    name, made here without importing inductor: ``tempfile.gettempdir()/torchinductor_USER``.)"""
    if os.environ.get(INDUCTOR_CACHE) or build.upper() == "AVX512":
        return
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}"
    user = re.sub(r'[\\/:*?"<>|]', "_", user)
    os.environ[INDUCTOR_CACHE] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}_{build.lower()}")


def capability() -> str:
    """The build of ATen's kernels this process runs (``AVX2``, ``AVX512``, ``DEFAULT``, ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
