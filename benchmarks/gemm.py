"""The default model's matrix products in PyTorch (MKL, oneDNN) and in XLA (the NumPyro peer's JAX),
side by side: how much of the CPU step's gap to NumPyro is the matrix library's.

    python benchmarks/gemm.py --peer-python PY [--rounds 3] [--batch-sizes 128,2048] [--threads 1,2]

The three products of the 784 x 400 layer in a training step (the two 784 x 400 layers are about
90% of the default model's multiply-adds): the forward pass ``x @ W.T`` (batch x 784 by 784 x 400),
the weight's gradient ``g.T @ x`` and the input's gradient ``g @ W``, in float32. Each library runs
in its own process (``torch`` here; ``jax`` in ``--peer-python``, a Python with jax, which is not a
pyro-vae dependency), with 1 thread pinned to one core (``sched_setaffinity``) and with 2 threads on
both cores; the processes alternate, ``--rounds`` times, and each reports the median of 5 timed
blocks of 20 products after 3 of warm-up. oneDNN's forward product (``mkldnn._linear_pointwise``,
what inductor uses for frozen inference graphs) is timed in the torch process for comparison; it has
no autograd formula, so a training step cannot use it as it is. Run it with the machine otherwise
idle. Writes benchmarks/results/gemm_cpu.json: GFLOP/s per product, library and thread count, and
the median ratio of MKL's time to XLA's for the three products together.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = ("forward x @ W.T", "weight gradient g.T @ x", "input gradient g @ W")


def _median_ms(fn, sync, n: int = 20) -> float:
    for _ in range(3):
        sync(fn())
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            out = fn()
        sync(out)
        blocks.append((time.perf_counter() - start) / n * 1e3)
    return statistics.median(blocks)


def _pin(threads: int) -> None:
    if threads == 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def serve_torch(batch: int, threads: int) -> dict:
    _pin(threads)
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x, w, g = (torch.rand(shape, generator=gen) for shape in ((batch, 784), (400, 784), (batch, 400)))
    products = (
        lambda: torch.nn.functional.linear(x, w),
        lambda: g.t() @ x,
        lambda: g @ w,
    )
    result = {name: _median_ms(fn, lambda out: None) for name, fn in zip(SHAPES, products)}
    if torch.backends.mkldnn.is_available():  # (a build without oneDNN: MKL's products alone)
        result["onednn forward x @ W.T"] = _median_ms(
            lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), lambda out: None
        )
    result["versions"] = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return result


def serve_jax(batch: int, threads: int) -> dict:
    _pin(threads)
    if threads == 1:
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x, w, g = (jnp.asarray(rng.random(shape), jnp.float32) for shape in ((batch, 784), (400, 784), (batch, 400)))
    products = (
        (jax.jit(lambda x, w: x @ w.T), (x, w)),
        (jax.jit(lambda g, x: g.T @ x), (g, x)),
        (jax.jit(lambda g, w: g @ w), (g, w)),
    )
    result = {
        name: _median_ms(lambda fn=fn, args=args: fn(*args), lambda out: out.block_until_ready())
        for name, (fn, args) in zip(SHAPES, products)
    }
    result["versions"] = {"jax": jax.__version__}
    return result


def _child(python: str, library: str, batch: int, threads: int) -> dict:
    out = subprocess.run(
        [python, __file__, "--serve", library, "--batch", str(batch), "--thread-count", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", help="a Python with jax (the NumPyro peer's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="128,2048")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default=str(HERE / "results" / "gemm_cpu.json"))
    parser.add_argument("--serve", choices=["torch", "jax"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--thread-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve = serve_torch if args.serve == "torch" else serve_jax
        print(json.dumps(serve(args.batch, args.thread_count)))
        return
    pythons = {"torch": sys.executable}
    if args.peer_python:
        pythons["jax"] = args.peer_python
    batches = [int(b) for b in args.batch_sizes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    runs: dict[str, list[dict]] = {}
    versions = {}
    for r in range(args.rounds):
        order = list(pythons) if r % 2 == 0 else list(reversed(pythons))
        for batch in batches:
            for threads in thread_counts:
                for library in order:
                    result = _child(pythons[library], library, batch, threads)
                    versions[library] = result.pop("versions")
                    runs.setdefault(f"{library} batch {batch} threads {threads}", []).append(result)
                    print(
                        f"round {r + 1}: {library:5s} batch {batch:5d} threads {threads}: "
                        + ", ".join(f"{v:.3f}" for v in result.values())
                        + " ms",
                        flush=True,
                    )

    summary = {}
    for key, rounds in runs.items():
        batch = int(key.split()[2])
        flops = 2 * batch * 784 * 400
        medians = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        summary[key] = {name: {"ms": ms, "gflops": flops / ms / 1e6} for name, ms in medians.items()}
    ratios = {}
    if "jax" in pythons:
        for batch in batches:
            for threads in thread_counts:
                t, j = runs[f"torch batch {batch} threads {threads}"], runs[f"jax batch {batch} threads {threads}"]
                ratios[f"batch {batch} threads {threads}"] = statistics.median(
                    sum(a[s] for s in SHAPES) / sum(b[s] for s in SHAPES) for a, b in zip(t, j)
                )
    sys.path.insert(0, str(HERE))
    import torch

    from common import machine

    record = {
        "command": "python benchmarks/gemm.py " + shlex.join(sys.argv[1:]),
        "machine": machine(torch.device("cpu")),
        "versions": versions,
        "rounds": args.rounds,
        "medians": summary,
        "mkl time / xla time, the three products together (median over rounds)": ratios,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
