"""ATen's AVX-512 kernels against its AVX2 kernels on this CPU: the kernels alone and the evaluation.

    python benchmarks/cpu_kernels.py [--rounds 3] [--k 1000] [--images 1000] [--run RUN_DIR]

What :mod:`pyro_vae.cpu_kernels` decides from, measured in full: (1) its probe (the elementwise
kernels of the default model, one thread, each build in its own process); (2) the IWAE evaluation
of the default model (``benchmarks/iwae_eval.py``: a fresh seeded model, or a trained run's with
``--run``) on the first ``--images`` test images with ``--k`` samples, each build in its own process
(``ATEN_CPU_CAPABILITY`` set for it), the builds alternated ``--rounds`` times, the order reversed
every other round. Reports the medians, the median of each round's ratio and how far the two
builds' results differ. Torch's thread count is the environment's (``OMP_NUM_THREADS``). Writes
benchmarks/results/cpu_kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILDS = ("avx512", "avx2")


def evaluation(build: str, args: argparse.Namespace) -> dict:
    """One timed evaluation in a fresh process running ``build``'s kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = [sys.executable, str(HERE / "iwae_eval.py"), "--device", "cpu", "--k", str(args.k)]
        cmd += ["--images", str(args.images), "--repeats", "1", "--out", str(out)]
        cmd += ["--run", args.run] if args.run else []
        env = {**os.environ, "ATEN_CPU_CAPABILITY": build}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {build} evaluation failed (status {done.returncode}):\n{done.stderr[-2000:]}")
        record = json.loads(out.read_text())
    if record["machine"]["cpu_kernels"].lower() != build:
        raise RuntimeError(f"asked for {build}, the evaluation ran {record['machine']['cpu_kernels']}")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--run", help="a trained run folder (default: a freshly initialised default model)")
    parser.add_argument("--out", default=str(HERE / "results" / "cpu_kernels.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from pyro_vae import cpu_kernels

    probe = {build: cpu_kernels.probe(build) for build in BUILDS}
    rounds = []
    for r in range(args.rounds):
        order = BUILDS if r % 2 == 0 else BUILDS[::-1]
        rounds.append({build: evaluation(build, args) for build in order})
        print(f"round {r + 1}: " + "; ".join(f"{b} {rounds[-1][b]['seconds_median']:.1f} s" for b in BUILDS))
    seconds = {b: [rd[b]["seconds_median"] for rd in rounds] for b in BUILDS}
    nll = {b: rounds[0][b]["test_nll"] for b in BUILDS}
    machine = dict(rounds[0]["avx2"]["machine"])
    machine.pop("cpu_kernels")
    record = {
        "command": "python benchmarks/cpu_kernels.py " + shlex.join(sys.argv[1:]),
        "machine": machine,
        "cache_key": cpu_kernels.cache_key(),
        "probe_seconds_per_call": probe,
        "probe_ratio_avx2_to_avx512": sum(probe["avx2"].values()) / sum(probe["avx512"].values()),
        "probe_choice": cpu_kernels.decide(probe["avx512"], probe["avx2"]),
        "evaluation": {
            "model": args.run or "the default model, freshly initialised (seed 0)",
            "k": args.k,
            "images": args.images,
            "seconds": seconds,
            "seconds_median": {b: statistics.median(s) for b, s in seconds.items()},
            "ratio_avx2_to_avx512": statistics.median(
                rd["avx2"]["seconds_median"] / rd["avx512"]["seconds_median"] for rd in rounds
            ),
            "test_nll": nll,
            "test_neg_elbo": {b: rounds[0][b]["test_neg_elbo"] for b in BUILDS},
            "nll_difference": abs(nll["avx2"] - nll["avx512"]),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    ev = record["evaluation"]
    print(
        f"probe: AVX2 takes {record['probe_ratio_avx2_to_avx512']:.2f} of AVX-512's time; evaluation "
        f"(K={args.k}, {args.images} images): {ev['seconds_median']['avx512']:.1f} s on AVX-512, "
        f"{ev['seconds_median']['avx2']:.1f} s on AVX2 (x{ev['ratio_avx2_to_avx512']:.2f}); "
        f"NLL {nll['avx512']:.4f} and {nll['avx2']:.4f}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
