"""Which of ATen's vectorised CPU kernels a ``pyro-vae`` command runs: AVX-512 or AVX2.

PyTorch's x86 wheels carry each elementwise kernel built twice, for AVX2 and for AVX-512, and use
the widest the CPU has. The widest is not always the fastest: on this project's AMD EPYC host
(Zen 4, torch 2.14) the AVX-512 build of ``log1p`` is about twelve times slower than the AVX2 one,
and ``softplus`` (the default activation), ``log_sigmoid`` and the Bernoulli log-probability are
built on it; the IWAE evaluation spends most of its time there (``docs/performance.md``).

ATen reads the choice once, from the environment variable ``ATEN_CPU_CAPABILITY``, at the first
vectorised kernel a process runs (inductor's generated code follows the same variable), so it is
a choice for a whole process, made before its first tensor operation. :func:`choose`, called
first by the ``pyro-vae`` command and the benchmarks, makes it:

- ``ATEN_CPU_CAPABILITY`` already set: that is the choice, nothing is measured;
- a CPU without AVX-512 (or not Linux on x86): nothing to choose;
- otherwise the two builds of the kernels pyro-vae's models use are timed once on this machine,
  each in its own short process (one thread), and the result is cached in
  ``~/.cache/pyro_vae/cpu_kernels.json`` for this CPU model and torch version; AVX2 is chosen
  where it takes at most :data:`SWITCH_BELOW` of AVX-512's time.

With a build other than AVX-512 running on an AVX-512 CPU (chosen here or by the variable),
``torch.compile``'s code is cached in a folder of its own (its default folder's name with
``_avx2``, say, unless ``TORCHINDUCTOR_CACHE_DIR`` is set): inductor's cache does not tell the
builds apart, and a process of one build running code compiled by the other can crash.

In your own Python program, call :func:`choose` before the first tensor operation, or set
``ATEN_CPU_CAPABILITY`` (``avx2``, ``avx512``, ``default``) before starting Python.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
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
PROBE_TIMEOUT_S = 120

# Timed in a fresh process per build: the elementwise kernels of the default model's step and of
# its evaluation (activation, likelihood, reparameterised draw), on one thread, best of 5.
PROBE = """
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


def _cpu_model() -> str:
    """The first CPU's model name, family, model and stepping (``/proc/cpuinfo``)."""
    wanted = ("model name", "cpu family", "model", "stepping")
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in wanted:
                found.setdefault(name.strip(), value.strip())
            elif not line.strip() and found:
                break
    except OSError:
        pass
    return " / ".join(found[k] for k in wanted if k in found) or platform.processor() or platform.machine()


def _has_avx512() -> bool:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return False
    return "avx512f" in flags.split()


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"


def cache_key() -> str:
    """What a cached measurement holds for: this CPU model and this torch."""
    return f"{_cpu_model()} | torch {_torch_version()}"


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
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if out["capability"].lower() != capability:
        raise RuntimeError(f"asked for {capability}, the probe ran {out['capability']}")
    return {name: float(s) for name, s in out["seconds"].items()}


def decide(avx512: dict[str, float], avx2: dict[str, float]) -> str:
    """``avx2`` where the AVX2 kernels take at most :data:`SWITCH_BELOW` of AVX-512's total time."""
    return "avx2" if sum(avx2.values()) <= SWITCH_BELOW * sum(avx512.values()) else "avx512"


def _read_cache(path: Path, key: str) -> dict | None:
    """The cached measurement for ``key``, or None (missing, unreadable, oversized, malformed or
    for another CPU or torch: the file is data, checked before use)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > CACHE_BYTES:
            return None
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or entry.get("choice") not in ("avx2", "avx512"):
        return None
    ratio = entry.get("ratio_avx2_to_avx512")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1e6:
        return None
    return entry


def measure(path: Path | None = None) -> dict:
    """Time both builds here and cache the result (atomically); returns the cache entry."""
    from pyro_vae.files import write_atomic

    path = path or cache_path()
    t0 = time.perf_counter()
    avx512, avx2 = probe("avx512"), probe("avx2")
    entry = {
        "key": cache_key(),
        "choice": decide(avx512, avx2),
        "ratio_avx2_to_avx512": sum(avx2.values()) / sum(avx512.values()),
        "seconds": {"avx512": avx512, "avx2": avx2},
        "measured_in_s": time.perf_counter() - t0,
    }
    try:
        path.parent.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(entry, indent=2) + "\n", path.parent.parent)
    except (OSError, ValueError) as exc:  # read-only, or a link on the way: the choice still holds here
        log.warning("could not cache the CPU kernel measurement in %s (%s)", path, exc)
    return entry


def choose(path: Path | None = None) -> str | None:
    """Set ``ATEN_CPU_CAPABILITY`` for this process where AVX2 is measurably faster here (see the
    module's docstring). Call it before the first tensor operation. Returns the capability set, or
    None where the choice was left to torch or to the variable already set."""
    if not _has_avx512():
        return None
    if os.environ.get(VARIABLE):  # the user's choice
        _own_inductor_cache(os.environ[VARIABLE])
        return None
    path = path or cache_path()
    entry = _read_cache(path, cache_key())
    if entry is None:
        log.info("timing ATen's AVX-512 and AVX2 CPU kernels once on this CPU (cached in %s)", path)
        try:
            entry = measure(path)
        except (OSError, RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
            log.warning("could not time the CPU kernels (%s); torch's default kernels are used", exc)
            return None
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
    _own_inductor_cache("avx2")
    log.info(
        "CPU kernels: AVX2, which takes %.0f%% of AVX-512's time on this CPU (measured once, cached in "
        "%s; set %s=avx512 to keep AVX-512)",
        100 * entry["ratio_avx2_to_avx512"],
        path,
        VARIABLE,
    )
    return "avx2"


def _own_inductor_cache(build: str) -> None:
    """Inductor's cache in a folder for ``build`` (not AVX-512's default one), unless one is named."""
    if os.environ.get(INDUCTOR_CACHE) or build.lower() == "avx512":
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    os.environ[INDUCTOR_CACHE] = f"{default_cache_dir()}_{build.lower()}"


def capability() -> str:
    """The build of ATen's kernels this process runs (``AVX2``, ``AVX512``, ``DEFAULT``, ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
