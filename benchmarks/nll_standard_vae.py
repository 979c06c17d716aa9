"""Long recipe: test NLL (IWAE bound, K=5000, nats) of the standard VAE on static binarized MNIST.

    python benchmarks/nll_standard_vae.py [--threads N] [--set section.key=value ...]

Trains ``benchmarks/configs/standard_vae.toml`` with :func:`pyro_vae.fit` into
``runs/NAME`` (default ``nll_standard_vae``; resumable: rerun the command to continue an
interrupted run), then writes ``benchmarks/results/NAME.json`` with the test NLL, its standard error,
epochs, wall time and the machine. Reference points for this model class: 88.71 nats (Burda
et al. 2016, 784-200-200-50) and 89.78 nats (pythae's reproduction, 200 samples).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from pyro_vae import fit, load_config
from pyro_vae.train import RunDir

HERE = Path(__file__).resolve().parent
REFERENCES = {"Burda et al. 2016 (VAE k=1, 784-200-200-50)": 88.71, "pythae reproduction (200 samples)": 89.78}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=HERE / "configs" / "standard_vae.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="nll_standard_vae", help="names the run folder runs/NAME and the result")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--runs", default="runs", help="folder of the run folder")
    parser.add_argument("--results", default=HERE / "results", help="folder of the result JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    args.out = Path(args.runs) / args.name
    args.result = Path(args.results) / f"{args.name}.json"
    t0 = time.perf_counter()
    summary = fit(cfg, args.out, resume=RunDir(Path(args.out)).last.exists(), progress=False)
    final = summary["final"]
    result = {
        "recipe": str(Path(args.config).relative_to(HERE.parent))
        if Path(args.config).is_absolute()
        else str(args.config),
        "overrides": args.overrides,
        "command": " ".join(
            ["python benchmarks/nll_standard_vae.py", f"--name {args.name}"]
            + ([f"--threads {args.threads}"] if args.threads else [])
            + [f"--set {o}" for o in args.overrides]
        ),
        "test_nll": final["test_nll"],
        "test_neg_elbo": final["test_neg_elbo"],
        "iwae_k": final["iwae_k"],
        "iwae_images": final["iwae_images"],
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "train_time_s": summary["train_time_s"],
        "wall_time_s_this_invocation": time.perf_counter() - t0,
        "environment": summary["environment"],
        "references_nats": REFERENCES,
        "config": summary["config"],
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("test_nll", "epochs_run", "best_epoch", "train_time_s")}, indent=2))


if __name__ == "__main__":
    main()
