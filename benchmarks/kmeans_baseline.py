"""The pixel baseline of a clustering VAE: k-means on binarized MNIST's pixels.

    python benchmarks/kmeans_baseline.py [--k 10] [--seeds 0 1 2] [--subset N] [--threads 1] [--out FILE]

Fits :func:`pyro_vae.evaluation.clustering.kmeans` (k-means++ then Lloyd) on the training split's
pixels once per seed, assigns every test image to its nearest centre and scores the test split
against its digit labels: clustering accuracy (the best one-to-one map of clusters to digits) and
NMI. Writes benchmarks/results/kmeans_baseline.json with each seed's scores and seconds, their mean
and sample standard deviation over seeds, the command and the machine. ``--subset N`` uses N evenly
spaced images of every split (a quick run).
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

from common import machine
from pyro_vae.config import DataConfig
from pyro_vae.data import load_data
from pyro_vae.evaluation.clustering import assign, cluster_accuracy, kmeans, nmi


def spread(values: list[float]) -> dict:
    """Mean and sample standard deviation over seeds (None for one seed)."""
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=10, help="clusters")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one k-means fit per seed")
    parser.add_argument("--iters", type=int, default=100, help="at most this many Lloyd iterations")
    parser.add_argument("--subset", type=int, default=0, help="N evenly spaced images of every split (0 = all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kmeans_baseline.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(DataConfig(subset=args.subset))
    train, test, labels = data.train, data.test, data.test_labels
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        centres, _ = kmeans(train, args.k, seed=seed, iters=args.iters)
        pred = assign(test, centres)
        rows.append(
            {
                "seed": seed,
                "accuracy": cluster_accuracy(pred, labels),
                "nmi": nmi(pred, labels),
                "seconds": time.perf_counter() - t,
            }
        )
        print(f"seed {seed}: accuracy {rows[-1]['accuracy']:.4f}, NMI {rows[-1]['nmi']:.4f}", file=sys.stderr)
    record = {
        "command": "python benchmarks/kmeans_baseline.py " + shlex.join(sys.argv[1:]),
        "machine": machine(torch.device("cpu")),
        "data": data.source,
        "train_images": train.shape[0],
        "test_images": test.shape[0],
        "k": args.k,
        "iters": args.iters,
        "results": rows,
        "accuracy": spread([r["accuracy"] for r in rows]),
        "nmi": spread([r["nmi"] for r in rows]),
        "seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({key: record[key] for key in ("accuracy", "nmi", "seconds")}))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
