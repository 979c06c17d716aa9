"""What speeds up the CPU training step: the default step against its variants, and the NumPyro peer.

    python benchmarks/cpu_levers.py [--rounds 3] [--peer-python /path/to/python-with-jax]
                                    [--batch-sizes 128,2048] [--stages 5] [--steps N]

Each variant runs in its own process (``ATEN_CPU_CAPABILITY`` is read when torch loads), in
alternating rounds: the step ``fit`` runs (benchmarks/common.py ``project_step``, default model,
batches gathered from an image pool) timed at batch 128 and 2048, median of 5 timed stages after a
burn-in that includes any compilation. Variants: ``eager`` (the default), ``compiled``
(``train.engine=compiled``), ``avx2`` (eager with ``ATEN_CPU_CAPABILITY=avx2``), ``avx2-compiled``,
``one-thread`` (``torch.set_num_threads(1)``), ``tf32-high`` (``train.matmul_precision=high``) and,
with ``--peer-python``, benchmarks/numpyro_peer.py under that interpreter. Writes
benchmarks/results/cpu_levers.json (every round, and per variant the median over rounds and its
ratio to the peer).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCHES = (128, 2048)
VARIANTS = {
    "eager": ((), {}),
    "compiled": (("train.engine=compiled",), {}),
    "avx2": ((), {"ATEN_CPU_CAPABILITY": "avx2"}),
    "avx2-compiled": (("train.engine=compiled",), {"ATEN_CPU_CAPABILITY": "avx2"}),
    "one-thread": ((), {"THREADS": "1"}),
    "tf32-high": (("train.matmul_precision=high",), {}),
}


def measure(overrides: list[str]) -> dict[int, float]:
    """Images/s of the project's step at each batch size (runs in the child process)."""
    import torch

    from common import config, no_validation, project_step

    no_validation()
    if os.environ.get("THREADS"):
        torch.set_num_threads(int(os.environ["THREADS"]))
    out = {}
    batches, stages = _ints(os.environ.get("LEVERS_BATCHES", "")) or BATCHES, int(os.environ.get("LEVERS_STAGES", 5))
    for batch in batches:
        cfg = config(f"train.batch_size={batch}", "train.device=cpu", *overrides)
        torch.set_float32_matmul_precision(cfg.train.matmul_precision)
        pool = torch.bernoulli(torch.full((8192, 784), 0.13))
        step = project_step(cfg, torch.device("cpu"), pool)[0]
        steps = int(os.environ.get("LEVERS_STEPS", 0)) or max(20, 40_000 // batch)
        for _ in range(min(15, steps)):
            step()
        rates = []
        for _ in range(stages):
            t = time.perf_counter()
            for _ in range(steps):
                step()
            rates.append(steps * batch / (time.perf_counter() - t))
        out[batch] = statistics.median(rates)
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _child(variant: str, sizes: dict[str, str]) -> dict[int, float]:
    overrides, env = VARIANTS[variant]
    result = subprocess.run(
        [sys.executable, __file__, "--child", *overrides],
        cwd=HERE,
        env={**os.environ, **env, **sizes},
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


def _peer(python: str, tmp: Path, batches: list[int]) -> dict[int, float]:
    out = tmp / "peer.json"
    subprocess.run(
        [python, str(HERE / "numpyro_peer.py"), "--batch-sizes", ",".join(map(str, batches)), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return {r["batch_size"]: r["images_per_s"] for r in json.loads(out.read_text())["results"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--peer-python", help="a Python with jax and numpyro (not a pyro-vae dependency)")
    parser.add_argument("--out", default=HERE / "results" / "cpu_levers.json")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCHES)))
    parser.add_argument("--stages", type=int, default=5, help="timed stages per batch size (the median is kept)")
    parser.add_argument("--steps", type=int, default=0, help="steps per stage (default: enough for 40,000 images)")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    sys.path.insert(0, str(HERE))
    import torch

    from common import machine

    names, batches = args.variants.split(","), _ints(args.batch_sizes)
    sizes = {"LEVERS_BATCHES": args.batch_sizes, "LEVERS_STAGES": str(args.stages), "LEVERS_STEPS": str(args.steps)}
    rounds = []
    for r in range(args.rounds):
        row = {name: _child(name, sizes) for name in names}
        if args.peer_python:
            row["numpyro peer"] = _peer(args.peer_python, Path(args.out).parent, batches)
        rounds.append(row)
        print(
            f"round {r + 1}: "
            + "; ".join(f"{n} " + ", ".join(f"B={b} {v:,.0f}" for b, v in row[n].items()) for n in row),
            file=sys.stderr,
        )
    medians = {n: {b: statistics.median(rd[n][b] for rd in rounds) for b in batches} for n in rounds[0]}
    peer = medians.get("numpyro peer")
    record = {
        "command": "python benchmarks/cpu_levers.py " + " ".join(sys.argv[1:]),
        "machine": machine(torch.device("cpu")),
        "unit": "training images/s",
        "rounds": rounds,
        "median": medians,
        "ratio_to_peer": {n: {b: m[b] / peer[b] for b in batches} for n, m in medians.items()} if peer else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    for n, m in medians.items():
        print(
            f"{n:<14} "
            + "   ".join(
                f"batch {b}: {m[b]:>8,.0f}" + (f" (x{m[b] / peer[b]:.2f} of the peer)" if peer else "") for b in batches
            )
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
