"""Time to a test negative ELBO of 100 nats on static binarized MNIST, default model.

    python benchmarks/time_to_quality.py [--device cpu|cuda] [--target 100] [--set train.lr=...]
                                         [--check-every 0.5]

Trains the default model (784-400-50) with one recipe side by side: with the step `pyro-vae train`
runs (its step engine, ``train.engine``: a CUDA graph on CUDA) and with the hand-written PyTorch
step (benchmarks/common.py), eager and, on CUDA, captured in a CUDA graph. The pyro-vae step runs
its own shuffled passes over the training split (every image, the last batch short); the
hand-written one drops the last partial batch; the learning rate decays every 50,000 images for both.
``--set train.matmul_precision=high`` times TF32. Every
``--check-every`` epochs the test negative ELBO (all 10,000 images, seeded, the same evaluation
for both) is measured outside the timed region; the run stops at the first check at or below the
target. Reports training seconds (the timed region) and wall seconds (checks included), epochs,
and the recipe. The splits live on ``--device`` (default cpu) and the timed region ends with a
device synchronisation. Writes benchmarks/results/time_to_quality.json (CPU) or
time_to_quality_cuda.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from common import config, hand_written_step, machine, no_validation, project_step, sync
from pyro_vae import cpu_kernels, load_data
from pyro_vae.evaluation.metrics import evaluate
from pyro_vae.model import VAE

# Chosen by small sweeps with the pyro-vae step (batch 256..512, lr 4e-3..8e-3, decay 0.88..0.93 per
# epoch; test ELBO checked every half epoch): batch 384 runs near the throughput of 512 while
# needing fewer epochs, and a gentle decay keeps the rate useful until 100 nats (batch 256 with
# lr 4e-3, decay 0.9 took 39.4 s; batch 384, lr 4e-3, decay 0.93 took 31.0 s). The analytic-KL
# estimator, whose encoder gradients have the higher signal-to-noise ratio (see `pyro-vae compare`).
RECIPE = ("train.batch_size=384", "train.lr=0.004", "train.lr_decay=0.93", "train.elbo=mean_field")


def run(
    name: str, step, vae: VAE, optim, x_train, x_test, cfg, target: float, check_every: float, max_epochs: float
) -> dict:
    n, bs, device = x_train.shape[0], cfg.train.batch_size, x_train.device
    steps_per_check = max(1, round(check_every * n / bs))
    shuffle = torch.Generator().manual_seed(cfg.train.seed)

    def new_order() -> torch.Tensor:
        return torch.randperm(n, generator=shuffle).to(device)

    perm, pos, steps, train_s, t_start = new_order(), 0, 0, 0.0, time.perf_counter()
    history = []
    while steps * bs / n < max_epochs:
        t = time.perf_counter()
        for _ in range(steps_per_check):
            if pos + bs > n:  # a new epoch (the last partial batch is dropped)
                perm, pos = new_order(), 0
                for group in optim.param_groups:
                    group["lr"] *= cfg.train.lr_decay
            step(x_train[perm[pos : pos + bs]])
            pos += bs
            steps += 1
        sync(device)
        train_s += time.perf_counter() - t
        test = evaluate(vae, x_test, seed=cfg.eval.seed)["neg_elbo"].mean
        history.append({"epochs": steps * bs / n, "train_s": train_s, "test_neg_elbo": test})
        print(f"{name:<14} epoch {steps * bs / n:6.2f}  {train_s:6.1f} s  test {test:.2f}", file=sys.stderr)
        if test <= target:
            break
    reached = history[-1]["test_neg_elbo"] <= target
    return {
        "implementation": name,
        "reached": reached,
        "train_s": train_s if reached else math.nan,
        "wall_s": time.perf_counter() - t_start,
        "epochs": history[-1]["epochs"],
        "steps": steps,
        "history": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--target", type=float, default=100.0)
    parser.add_argument("--check-every", type=float, default=0.5, help="epochs between test evaluations")
    parser.add_argument("--max-epochs", type=float, default=60)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="default: benchmarks/results/time_to_quality.json (cpu), _cuda.json (cuda)")
    args = parser.parse_args()
    cpu_kernels.choose()  # first: the CPU kernels `pyro-vae` runs, for every variant here
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    out = Path(args.out or Path(__file__).parent / "results" / f"time_to_quality{suffix}.json")
    no_validation()
    cfg = config(*RECIPE, *args.overrides)
    data = load_data(cfg.data)
    device = torch.device(args.device)
    x_train, x_test = data.train.to(device), data.test.to(device)
    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    results = []
    for name in ("pyro-vae", "hand-written", *(("hand-written graph",) if device.type == "cuda" else ())):
        torch.manual_seed(cfg.train.seed)
        if name == "pyro-vae":
            step, vae, optim = project_step(cfg, device, x_train)
        else:
            step, vae, optim = hand_written_step(cfg, device, graph=name.endswith("graph"))
        results.append(
            run(name, step, vae, optim, x_train, x_test, cfg, args.target, args.check_every, args.max_epochs)
        )
    record = {
        "command": "python benchmarks/time_to_quality.py " + shlex.join(sys.argv[1:]),
        "target_test_neg_elbo": args.target,
        "recipe": {"model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"]},
        "machine": machine(device),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for r in results:
        print(
            f"{r['implementation']}: {'reached' if r['reached'] else 'did not reach'} {args.target} nats after "
            f"{r['epochs']:.2f} epochs, {r['train_s']:.1f} s of training ({r['wall_s']:.1f} s with checks)"
        )


if __name__ == "__main__":
    main()
