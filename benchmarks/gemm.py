"""The default model's matrix products in PyTorch (MKL, oneDNN), in NumPy (OpenBLAS) and in XLA (the
NumPyro peer's JAX), side by side: how much of the CPU step's gap to NumPyro is the matrix library's.

    python benchmarks/gemm.py --peer-python PY [--rounds 3] [--batch-sizes 128,2048] [--threads 1,2]
                              [--images 20000]

The three products of the 784 x 400 layer in a training step (the two 784 x 400 layers are about
90% of the default model's multiply-adds): the forward pass ``x @ W.T`` (batch x 784 by 784 x 400),
the weight's gradient ``g.T @ x`` and the input's gradient ``g @ W``, in float32. Each library runs
in its own process (``torch`` here; ``jax`` in ``--peer-python``, a Python with jax, which is not a
pyro-vae dependency), with 1 thread pinned to one core (``sched_setaffinity``) and with 2 threads on
both cores; the processes alternate, ``--rounds`` times, and each reports the median of 5 timed
blocks of 20 products after 3 of warm-up. oneDNN's forward product (``mkldnn._linear_pointwise``,
what inductor uses for frozen inference graphs) is timed in the torch process for comparison; it has
no autograd formula, so a training step cannot use it as it is.

A product repeated in a loop runs with its operands and the library's buffers hot, which a training
step never sees. So each process also times **the step's products in sequence**: the eleven
products of one training step of the default model (784-400-50, the encoder's two heads fused, as
pyro-vae's and the plain steps' are) in the order backpropagation issues them, the weights in each
step's own layout (PyTorch's out x in, the NumPyro peer's in x out), then a plain gradient-descent
update of the four weights, so that every step reads and writes them as Adam would; a new batch of
binary images each step; the median of 5 blocks of about ``--images`` (20,000) images after one of
warm-up.
PyTorch runs it through MKL (``@`` on views, as autograd does) and through oneDNN
(``mkldnn._linear_pointwise`` on contiguous copies of the transposed operands), NumPy (a third
process, this Python) through the BLAS of its wheel (OpenBLAS), JAX as one jitted ``lax.scan`` over
the steps, as the peer runs its SVI steps. Run it with the machine otherwise idle. Writes
benchmarks/results/gemm_cpu.json: GFLOP/s per product, library and thread count, the median ratio
of MKL's time to XLA's for the three products together, and each library's time for the step's
products in sequence with its median ratio to XLA's.
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
LAYERS = ((400, 784), (100, 400), (400, 50), (784, 400))  # (out, in): encoder, its two heads, decoder
STEP_FLOPS = 2 * (2 * sum(o * i for o, i in LAYERS) + sum(o * i for o, i in LAYERS[1:]))  # per image


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


def _sequence_steps(batch: int, images: int) -> int:
    return max(10, images // batch)


def _step(ops, ws: list, x):
    """One training step's products of the default model in backpropagation's order, then a plain
    update of the weights; returns the new weights and the output. The network is linear (the
    fused heads' two halves summed into ``z``), so the products are the exact gradients of
    ``|y|^2 / (2 batch)``. ``ops``: a library's products (:func:`torch_products`,
    :func:`array_products`: forward, weight gradient, input gradient, the fused heads' gradient from
    ``z``'s), then the update."""
    fwd, wgrad, igrad, heads, update = ops
    w1, w2, w3, w4 = ws
    h1 = fwd(x, w1)
    o = fwd(h1, w2)
    z = o[:, :50] + o[:, 50:]
    h3 = fwd(z, w3)
    y = fwd(h3, w4)
    gy = y * (1.0 / x.shape[0])
    g4, gh3 = wgrad(gy, h3), igrad(gy, w4)
    g3, gz = wgrad(gh3, z), igrad(gh3, w3)
    go = heads(gz)
    g2, gh1 = wgrad(go, h1), igrad(go, w2)
    g1 = wgrad(gh1, x)
    return [update(w, g) for w, g in zip(ws, (g1, g2, g3, g4))], y


def torch_products() -> dict:
    """PyTorch's libraries for :func:`_step`, each as (forward, weight gradient, input gradient, the
    fused heads' gradient) on PyTorch's layout: MKL through ``@`` on views, as autograd calls it, and
    (in a build with it) oneDNN's ``mkldnn._linear_pointwise`` (``a @ w.T``) on contiguous copies of
    the transposes."""
    import torch

    def heads(g):
        return torch.cat([g, g], 1)

    products = {"mkl": (lambda a, w: a @ w.t(), lambda g, a: g.t() @ a, lambda g, w: g @ w, heads)}
    if torch.backends.mkldnn.is_available():
        lp = torch.ops.mkldnn._linear_pointwise
        products["onednn"] = (
            lambda a, w: lp(a.contiguous(), w, None, "none", [], ""),
            lambda g, a: lp(g.t().contiguous(), a.t().contiguous(), None, "none", [], ""),
            lambda g, w: lp(g, w.t().contiguous(), None, "none", [], ""),
            heads,
        )
    return products


def array_products(xp, peer_layout: bool) -> tuple:
    """(forward, weight gradient, input gradient, the fused heads' gradient) for :func:`_step` on
    arrays of ``xp`` (``numpy`` or ``jax.numpy``): PyTorch's layout (out x in), or the peer's (in x
    out, ``x @ w``)."""

    def heads(g):
        return xp.concatenate([g, g], 1)

    if peer_layout:
        return (lambda a, w: a @ w, lambda g, a: a.T @ g, lambda g, w: g @ w.T, heads)
    return (lambda a, w: a @ w.T, lambda g, a: g.T @ a, lambda g, w: g @ w, heads)


def _block_ms(block, steps: int) -> float:
    """Median ms per step over 5 timed blocks, after one block of warm-up (and compilation)."""
    block()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        block()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(times)


def _pin(threads: int) -> None:
    if threads == 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def serve_torch(batch: int, threads: int, images: int) -> dict:
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
    libraries = torch_products()
    if "onednn" in libraries:  # (a build without oneDNN: MKL's products alone)
        result["onednn forward x @ W.T"] = _median_ms(lambda: libraries["onednn"][0](x, w), lambda out: None)
    xs = torch.rand((_sequence_steps(batch, images), batch, 784), generator=gen) < 0.13
    xs = xs.float()
    for name, library in libraries.items():
        ws = [(torch.rand(shape, generator=gen) * 2 - 1) / shape[1] ** 0.5 for shape in LAYERS]
        ops = (*library, lambda w, g: w.sub_(1e-6 * g))

        def block(ws=ws, ops=ops) -> None:
            for batch_x in xs:
                _step(ops, ws, batch_x)

        result[f"{name} step's products in sequence"] = _block_ms(block, len(xs))
    result["versions"] = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return result


def serve_numpy(batch: int, threads: int, images: int) -> dict:
    """The step's products in sequence through NumPy's BLAS (OpenBLAS in NumPy's wheels)."""
    _pin(threads)
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    import numpy as np

    rng = np.random.default_rng(0)
    xs = (rng.random((_sequence_steps(batch, images), batch, 784), dtype=np.float32) < 0.13).astype(np.float32)
    ws = [(rng.random(shape, dtype=np.float32) * 2 - 1) / np.float32(shape[1] ** 0.5) for shape in LAYERS]

    def update(w, g):
        w -= np.float32(1e-6) * g
        return w

    ops = (*array_products(np, peer_layout=False), update)

    def block() -> None:
        for x in xs:
            _step(ops, ws, x)

    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return {
        "openblas step's products in sequence": _block_ms(block, len(xs)),
        "versions": {"numpy": np.__version__, "blas": f"{config.get('name')} {config.get('version')}"},
    }


def serve_jax(batch: int, threads: int, images: int) -> dict:
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
    xs = jnp.asarray(rng.random((_sequence_steps(batch, images), batch, 784)) < 0.13, jnp.float32)
    # the peer's layout (in x out: NumPyro's parameters)
    ws = [jnp.asarray((rng.random((i, o)) * 2 - 1) / i**0.5, jnp.float32) for o, i in LAYERS]
    ops = (*array_products(jnp, peer_layout=True), lambda w, g: w - 1e-6 * g)
    scan = jax.jit(lambda ws, xs: jax.lax.scan(lambda ws, x: _step(ops, ws, x), ws, xs))
    state = {"ws": ws}

    def block() -> None:
        state["ws"], ys = scan(state["ws"], xs)
        ys.block_until_ready()

    result["xla step's products in sequence"] = _block_ms(block, xs.shape[0])
    result["versions"] = {"jax": jax.__version__}
    return result


def _child(python: str, library: str, batch: int, threads: int, images: int) -> dict:
    out = subprocess.run(
        [
            python,
            __file__,
            "--serve",
            library,
            "--batch",
            str(batch),
            "--thread-count",
            str(threads),
            "--images",
            str(images),
        ],
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
    parser.add_argument(
        "--images", type=int, default=20_000, help="images per timed block of the step's products in sequence"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "gemm_cpu.json"))
    parser.add_argument("--serve", choices=["torch", "numpy", "jax"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--thread-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve = {"torch": serve_torch, "numpy": serve_numpy, "jax": serve_jax}[args.serve]
        print(json.dumps(serve(args.batch, args.thread_count, args.images)))
        return
    pythons = {"torch": sys.executable, "numpy": sys.executable}
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
                    result = _child(pythons[library], library, batch, threads, args.images)
                    versions[library] = result.pop("versions")
                    runs.setdefault(f"{library} batch {batch} threads {threads}", []).append(result)
                    print(
                        f"round {r + 1}: {library:6s} batch {batch:5d} threads {threads}: "
                        + ", ".join(f"{v:.3f}" for v in result.values())
                        + " ms",
                        flush=True,
                    )

    summary = {}
    for key, rounds in runs.items():
        batch = int(key.split()[2])
        medians = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        summary[key] = {
            name: {"ms": ms, "gflops": (STEP_FLOPS if "sequence" in name else 2 * 784 * 400) * batch / ms / 1e6}
            for name, ms in medians.items()
        }
    ratios, sequence_ratios = {}, {}
    if "jax" in pythons:
        for batch in batches:
            for threads in thread_counts:
                key_tail = f"batch {batch} threads {threads}"
                t, j = runs[f"torch {key_tail}"], runs[f"jax {key_tail}"]
                ratios[key_tail] = statistics.median(
                    sum(a[s] for s in SHAPES) / sum(b[s] for s in SHAPES) for a, b in zip(t, j)
                )
                xla = [b["xla step's products in sequence"] for b in j]
                rows = {k: [r[k] for r in t] for k in t[0] if "sequence" in k}
                rows["openblas"] = [r["openblas step's products in sequence"] for r in runs[f"numpy {key_tail}"]]
                sequence_ratios[key_tail] = {
                    name.split()[0]: statistics.median(a / b for a, b in zip(times, xla))
                    for name, times in rows.items()
                }
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
        "time / xla time, the step's products in sequence (median over rounds)": sequence_ratios,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"ratios": ratios, "the step's products in sequence": sequence_ratios}, indent=2))


if __name__ == "__main__":
    main()
