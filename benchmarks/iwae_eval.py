"""Time of the paper-style evaluation: the IWAE bound with K importance samples on the test split.

    python benchmarks/iwae_eval.py [--device cpu|cuda] [--k 5000] [--images 10000] [--repeats 3]
                                   [--set section.key=value ...]

Builds the default model (or a trained run's, with ``--run RUN_DIR``), then times
:func:`pyro_vae.evaluate` (negative ELBO and IWAE bound, the chunk size chosen for the device) on
the first ``--images`` test images, synchronised, median over ``--repeats``. Writes
benchmarks/results/iwae_eval_DEVICE.json. The issue's target on an H100: K = 5000 on all 10,000
test images in under 10 s.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from common import config, machine, no_validation, sync
from pyro_vae import build_vae, cpu_kernels, load_data
from pyro_vae.evaluation.metrics import evaluate, max_elements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100, help="images per evaluation batch (fit uses 100)")
    parser.add_argument("--run", help="a trained run folder (default: a freshly initialised default model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="default: benchmarks/results/iwae_eval_DEVICE.json")
    args = parser.parse_args()
    cpu_kernels.choose()  # first: the CPU kernels `pyro-vae` runs, for every variant here
    no_validation()
    device = torch.device(args.device)
    if args.run:
        from pyro_vae import open_model

        model = open_model(args.run, device=args.device)
        cfg, vae, data = model.config, model.vae, model.data
    else:
        cfg = config(*args.overrides)
        data = load_data(cfg.data)
        torch.manual_seed(0)
        vae = build_vae(cfg.model, data.data_dim).to(device).eval()
    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    x = data.stored("test")[: args.images].to(device)
    times, result = [], None
    for _ in range(args.repeats):
        sync(device)
        t = time.perf_counter()
        result = evaluate(vae, x, k=args.k, batch_size=args.batch_size, seed=cfg.eval.seed)
        sync(device)
        times.append(time.perf_counter() - t)
    record = {
        "command": "python benchmarks/iwae_eval.py " + shlex.join(sys.argv[1:]),
        "machine": machine(device),
        "k": args.k,
        "images": x.shape[0],
        "batch_size": args.batch_size,
        "chunk_elements": max_elements(device),
        "matmul_precision": cfg.train.matmul_precision,
        "seconds_median": statistics.median(times),
        "seconds": times,
        "test_nll": result["nll"].mean if "nll" in result else None,
        "test_neg_elbo": result["neg_elbo"].mean,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"iwae_eval_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"K={args.k}, {x.shape[0]} images on {device}: {record['seconds_median']:.2f} s (median of {args.repeats}); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
