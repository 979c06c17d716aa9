"""Where a CPU training step's time goes: the torch profiler's self time per step, by kind of work,
for the plain PyTorch steps and pyro-vae's, eager and compiled.

    python benchmarks/cpu_profile.py [--batch-size 128] [--steps 100] [--variants NAME,...] [--out FILE]

Each variant runs in its own process: a burn-in (with any compilation), then ``--steps`` steps
timed without the profiler (ms per step) and as many under it (self CPU time per step, grouped:
matrix products, the compiled graph's own kernels, Adam, the other aten operators, Dynamo's guard
check and wrappers, and the rest of the profiled time: Python outside any operator). The profiler
adds its own overhead, so compare the shares and the differences between variants, not the sums
with the timed ms. Writes benchmarks/results/cpu_profile.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pyro_vae import cpu_kernels

HERE = Path(__file__).resolve().parent
VARIANTS = ("plain eager", "pyro-vae eager", "plain compiled", "pyro-vae compiled")
GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "Adam": ("aten::_fused_adam_", "Optimizer.step#Adam.step", "Optimizer.zero_grad#Adam.zero_grad"),
    "dynamo and wrappers": ("TorchDynamo Cache Lookup", "Pregraph bytecode", "AOTDispatcher Runtime Wrapper Prologue"),
}


def _group(name: str) -> str:
    if name.startswith("## Call CompiledFxGraph") or name.startswith("Torch-Compiled Region"):
        return "compiled graph's kernels"
    for group, names in GROUPS.items():
        if name in names:
            return group
    return "other operators and autograd"


def measure(name: str, batch: int, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from common import config, no_validation, plain_step, project_step

    no_validation()
    pool = torch.bernoulli(torch.full((8192, 784), 0.13))
    n_batches = pool.shape[0] // batch
    if name.startswith("plain"):
        plain = plain_step(config(f"train.batch_size={batch}"), "trace", 1, compiled=name.endswith("compiled"))

        def step(i: int) -> None:
            plain(pool[(i % n_batches) * batch : (i % n_batches + 1) * batch])
    else:
        engine = "compiled" if name.endswith("compiled") else "eager"
        cfg = config(f"train.batch_size={batch}", f"train.engine={engine}")
        project = project_step(cfg, torch.device("cpu"), pool)[0]

        def step(i: int) -> None:
            project()

    for i in range(30):
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    ms = 1e3 * (time.perf_counter() - t) / steps
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        profiled_ms = 1e3 * (time.perf_counter() - t) / steps
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        if event.self_cpu_time_total > 0:
            key = _group(event.key)
            groups[key] = groups.get(key, 0.0) + event.self_cpu_time_total / 1e3 / steps
    groups["outside any operator (Python)"] = profiled_ms - sum(groups.values())
    return {"ms_per_step": ms, "profiled_ms_per_step": profiled_ms, "profiled_self_ms_per_step": groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=str(HERE / "results" / "cpu_profile.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu_kernels.choose()  # first: the CPU kernels `pyro-vae` runs, for every variant here
    sys.path.insert(0, str(HERE))
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size, args.steps)))
        return
    import torch

    from common import machine

    names = [n for n in args.variants.split(",") if n]
    if set(names) - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(set(names) - set(VARIANTS))}; known: {', '.join(VARIANTS)}")
    rows = {}
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--batch-size", str(args.batch_size)]
        out = subprocess.run([*cmd, "--steps", str(args.steps)], cwd=HERE, capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(rows[name]["profiled_self_ms_per_step"].items()))
        print(f"{name:<18} {rows[name]['ms_per_step']:.2f} ms/step; profiled self ms/step: {parts}")
    record = {
        "command": "python benchmarks/cpu_profile.py " + shlex.join(sys.argv[1:]),
        "machine": machine(torch.device("cpu")),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "variants": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
