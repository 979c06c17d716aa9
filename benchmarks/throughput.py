"""Training-step throughput: the project's Pyro path against hand-written PyTorch.

    python benchmarks/throughput.py [--device cpu|cuda] [--batch-sizes 32,128,512,2048,4096]
        [--particles 1,4] [--precisions highest,high] [--implementations NAME,...] [--repeats 7]
        [--out benchmarks/results/throughput_cpu.json]

For every batch size and particle count, the implementations below take turns (interleaved
repeats, after a burn-in), each timed over enough steps to last about a quarter of a second, with
CUDA synchronised around the timed stage. Reported: median images/s and ms/step with the
interquartile range, achieved GFLOP/s and its share of the machine's measured matmul rate at the
same precision (``highest``: fp32; ``high``: TF32 where the GPU has it), the median over repeats of
each implementation's speed ratio to the hand-written steps (measured side by side), peak RSS and,
on CUDA, peak allocated memory. Writes JSON, a plot and the Markdown
tables of the README's Performance section next to it.

Implementations (default model 784-400-50, softplus, Adam):
  hand-written         plain PyTorch: fused encoder head, closed-form loss, Adam(fused=True)
  hand-written graph   the same step captured in one CUDA graph (CUDA only): the fair fast baseline
  pyro-vae             the step `pyro-vae train` runs (Trace_ELBO semantics, fast path on, the
                       default engine for a 30-epoch run at that batch size: a CUDA graph on CUDA;
                       on a CPU the compiled whole step for runs of 10,000 steps or more, else
                       eager), batches gathered on the device from the image pool as `fit` does
  pyro-vae eager       the same with train.engine=eager (CUDA only)
  pyro-vae compiled    the same with train.engine=compiled (torch.compile of the loss; captured on CUDA)
  pyro-vae NAME        the same step for every other ELBO in the registry (train.elbo=NAME; the
                       JIT ones run Pyro's compiled estimator, iwae only with >= 2 particles)
  Trace_ELBO           stock Pyro Trace_ELBO.differentiable_loss every step (fast path off)
  TraceMeanField_ELBO  stock Pyro TraceMeanField_ELBO every step
  pyro-vae NETWORK     the default step with model.network=NETWORK (gated_mlp, conv, resnet; their
                       FLOPs counted by torch.utils.flop_counter, the MLP's by the dense formula)
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from common import (
    config,
    counted_flops_per_image,
    flops_per_image,
    hand_written_step,
    machine,
    matmul_gflops,
    no_validation,
    project_step,
    sync,
)
from pyro_vae import cpu_kernels
from pyro_vae.components.nets import NETWORKS
from pyro_vae.objectives.elbos import ELBOS

HAND_WRITTEN = ("hand-written", "hand-written graph")
IMPLEMENTATIONS = {
    "hand-written": (),
    "hand-written graph": (),
    "pyro-vae": ("train.elbo=trace",),
    "pyro-vae eager": ("train.elbo=trace", "train.engine=eager"),
    "pyro-vae compiled": ("train.elbo=trace", "train.engine=compiled"),
    **{f"pyro-vae {name}": (f"train.elbo={name}",) for name in ELBOS.names() if name != "trace"},
    **{f"pyro-vae {name}": ("train.elbo=trace", f"model.network={name}") for name in NETWORKS.names() if name != "mlp"},
    "Trace_ELBO": ("train.elbo=trace", "train.fast_path=false"),
    "TraceMeanField_ELBO": ("train.elbo=mean_field", "train.fast_path=false"),
}
CUDA_ONLY = ("hand-written graph", "pyro-vae eager")  # on a CPU the graph needs CUDA and eager is the default


def _runs_with(name: str, particles: int, device: torch.device) -> bool:
    """Whether an implementation runs here (the iwae bound needs at least two particles)."""
    if name in CUDA_ONLY and device.type != "cuda":
        return False
    elbo = next((o.split("=", 1)[1] for o in IMPLEMENTATIONS[name] if o.startswith("train.elbo=")), "trace")
    return particles >= ELBOS.get(elbo).min_particles


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def measure(
    device: torch.device,
    batch: int,
    particles: int,
    repeats: int,
    gflops: float,
    max_steps: int = 200,
    names: list[str] | None = None,
) -> list[dict]:
    # Each row builds new losses; without a reset, Dynamo's recompiles pile up across rows and past
    # its limit (8) the compiled rows would silently run eagerly.
    torch._dynamo.reset()
    pool = torch.bernoulli(torch.full((max(2 * batch, 4096), 784), 0.13, device=device))
    n_batches = pool.shape[0] // batch
    steps = max(min(5, max_steps), min(max_steps, 40_000 // (batch * particles)))
    base = (f"train.num_particles={particles}", f"train.batch_size={batch}")
    impls = {}
    for name, extra in IMPLEMENTATIONS.items():
        if not _runs_with(name, particles, device) or (names is not None and name not in names):
            continue
        cfg = config(*base, *extra)
        if name in HAND_WRITTEN:
            impls[name] = hand_written_step(cfg, device, particles, graph=name.endswith("graph"))[0]
        else:
            impls[name] = project_step(cfg, device, pool)[0]
    times: dict[str, list[float]] = {name: [] for name in impls}
    for rep in range(repeats + 1):  # repeat 0 is the burn-in
        for name, step in impls.items():
            for i in range(3 if rep else 10):  # (burn-in: CUDA graphs are captured, compiled losses built)
                step(pool[(i % n_batches) * batch : (i % n_batches + 1) * batch])
            sync(device)
            t = time.perf_counter()  # (the pyro-vae steps read their batches from the pool themselves)
            for i in range(steps):
                step(pool[(i % n_batches) * batch : (i % n_batches + 1) * batch])
            sync(device)
            if rep:
                times[name].append((time.perf_counter() - t) / steps)
    dense = flops_per_image(config(), particles=particles)
    rows = []
    for name, ts in times.items():
        network = next((o.split("=", 1)[1] for o in IMPLEMENTATIONS[name] if o.startswith("model.network=")), "mlp")
        flops = dense if network == "mlp" else counted_flops_per_image(config(*IMPLEMENTATIONS[name]), particles)
        rates = [batch / t for t in ts]
        lo, med, hi = _quartiles(rates)
        row = {
            "implementation": name,
            "engine": getattr(impls[name], "engine", None),
            "batch_size": batch,
            "particles": particles,
            "matmul_precision": torch.get_float32_matmul_precision(),
            "images_per_s": med,
            "images_per_s_iqr": [lo, hi],
            "ms_per_step": 1e3 * statistics.median(ts),
            "gflops": med * flops / 1e9,
            "share_of_compute_limit": med * flops / 1e9 / gflops,
            "steps_timed": steps,
            "repeats": repeats,
        }
        for base_name in HAND_WRITTEN:  # speed ratios measured side by side, repeat by repeat
            if base_name in times:
                key = "ratio_to_" + base_name.replace("-", "_").replace(" ", "_")
                row[key] = statistics.median(h / t for h, t in zip(times[base_name], ts))
        rows.append(row)
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [r for r in result["results"] if r["particles"] == 1 and r["matmul_precision"] == "highest"]
    for name in IMPLEMENTATIONS:
        pts = sorted((r["batch_size"], r["images_per_s"]) for r in rows if r["implementation"] == name)
        if pts:
            ax.plot(*zip(*pts), "o-", label=name)
    ax.axhline(
        result["compute_limit_images_per_s"],
        color="k",
        ls="--",
        lw=1,
        label=f"compute limit ({result['matmul_gflops']:.0f} GFLOP/s matmul)",
    )
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="batch size",
        ylabel="training images / s",
        title=f"Training-step throughput ({result['machine']['device']})",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _rate(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k"


def markdown_tables(result: dict) -> str:
    """One table per matmul precision and particle count: images/s and, in brackets, the ratio to
    the hand-written step measured side by side (on CUDA, to the hand-written CUDA graph)."""
    out = []
    present = {key for r in result["results"] for key in r if key.startswith("ratio_to_")}
    cuda = result["machine"]["device"].startswith("cuda")
    preferred = "ratio_to_hand_written_graph" if cuda else "ratio_to_hand_written"
    base = preferred if preferred in present else next(iter(sorted(present)), None)  # (any subset of implementations)
    groups = sorted({(r["matmul_precision"], r["particles"]) for r in result["results"]})
    for precision, particles in groups:
        rows = [r for r in result["results"] if (r["matmul_precision"], r["particles"]) == (precision, particles)]
        batches = sorted({r["batch_size"] for r in rows})
        title = f"{particles} particle{'s' if particles > 1 else ''}, matmul precision {precision}"
        relative = f" (x: speed relative to {base[len('ratio_to_') :].replace('_', ' ')})" if base else ""
        lines = [
            f"{title}{relative}:",
            "",
            "| implementation | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---" * (len(batches) + 1) + "|",
        ]
        for name in IMPLEMENTATIONS:
            cells = {r["batch_size"]: r for r in rows if r["implementation"] == name}
            if cells:
                lines.append(
                    f"| {name} | "
                    + " | ".join(
                        (f"{_rate(c['images_per_s'])}" + (f" (x{c[base]:.2f})" if base in c else ""))
                        if (c := cells.get(b))
                        else "-"
                        for b in batches
                    )
                    + " |"
                )
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="32,128,512,2048,4096")
    parser.add_argument("--particles", default="1,4")
    parser.add_argument(
        "--precisions", default=None, help="matmul precisions (default: highest on a CPU, highest,high on CUDA)"
    )
    parser.add_argument("--implementations", default=None, help="comma-separated names (default: all that run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max-steps", type=int, default=200, help="most steps in one timed stage")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput_DEVICE.json)")
    args = parser.parse_args()
    cpu_kernels.choose()  # first: the CPU kernels `pyro-vae` runs, for every variant here
    no_validation()
    device = torch.device(args.device)
    out = Path(args.out or Path(__file__).parent / "results" / f"throughput_{device.type}.json")
    names = args.implementations.split(",") if args.implementations else list(IMPLEMENTATIONS)
    unknown = sorted(set(names) - set(IMPLEMENTATIONS) | ({"hand-written"} - set(names)))
    if unknown:
        parser.error(
            f"--implementations: {unknown} (unknown, or hand-written left out: every ratio needs it); "
            f"known: {', '.join(IMPLEMENTATIONS)}"
        )
    precisions = (args.precisions or ("highest,high" if device.type == "cuda" else "highest")).split(",")
    gflops, rows = {}, []
    for precision in precisions:
        torch.set_float32_matmul_precision(precision)
        gflops[precision] = matmul_gflops(device)
        for particles in _ints(args.particles):
            for batch in _ints(args.batch_sizes):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                new = measure(device, batch, particles, args.repeats, gflops[precision], args.max_steps, names)
                if device.type == "cuda":
                    new[-1]["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                for r in new:
                    print(
                        f"{precision:<7} B={batch:<5} P={particles} {r['implementation']:<24} "
                        f"{r['images_per_s']:>10.0f} img/s {r['ms_per_step']:>8.2f} ms  "
                        f"x{r['ratio_to_hand_written']:.3f} of hand-written  {r['gflops']:>7.1f} GFLOP/s "
                        f"({100 * r['share_of_compute_limit']:.1f}% of the matmul limit)",
                        file=sys.stderr,
                    )
                rows += new
    torch.set_float32_matmul_precision("highest")
    flops = flops_per_image(config())
    result = {
        "command": "python benchmarks/throughput.py " + shlex.join(sys.argv[1:]),
        "machine": machine(device),
        "matmul_gflops": gflops[precisions[0]],
        "matmul_gflops_by_precision": gflops,
        "flops_per_image": flops,
        "compute_limit_images_per_s": gflops[precisions[0]] * 1e9 / flops,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    tables = markdown_tables(result)
    out.with_suffix(".md").write_text(tables)
    print(tables)
    print(f"wrote {out}, {out.with_suffix('.png')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
