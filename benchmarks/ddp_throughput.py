"""Training throughput against the number of data-parallel processes (torch.distributed).

    python benchmarks/ddp_throughput.py [--device cpu|cuda] [--procs 1,2] [--batch 512] [--steps 60]
                                        [--repeats 3] [--out benchmarks/results/ddp_throughput_DEVICE.json]

For each process count N it launches ``torchrun --nproc_per_node=N`` on this script's worker
(``--device cpu``, the default: gloo with ``cpu_count / N`` torch threads per process;
``--device cuda``: nccl with one GPU per process, so N may not exceed the GPUs),
which times ``--steps`` training steps of the default model on a global batch of ``--batch``
static-binarized-MNIST images after a warm-up, exactly as ``fit`` runs them (sharded batch, DDP
gradient averaging, the per-step loss reduction). Launches are interleaved over ``--repeats``
rounds; the JSON holds every repeat, the medians, and the speed-up over one process.
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

from pyro_vae import cpu_kernels

HERE = Path(__file__).resolve().parent


def worker(args) -> None:
    import pyro
    import torch

    from pyro_vae.config import load_config
    from pyro_vae.data import load_data
    from pyro_vae.model import build_vae
    from pyro_vae.objectives.fast import build_loss
    from pyro_vae.training import distributed
    from pyro_vae.training.engine import make_optimizer, train_step

    use_cuda = args.device == "cuda"
    ctx = distributed.from_environment(use_cuda)
    device = torch.device("cuda", ctx.local_rank) if use_cuda else torch.device("cpu")
    if not use_cuda:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
    pyro.enable_validation(False)
    pyro.set_rng_seed(0)
    cfg = load_config()
    x = load_data(cfg.data).train.to(device)
    vae = build_vae(cfg.model, x.shape[1]).to(device)
    optim = make_optimizer(vae, 1e-3)
    step = distributed.wrap_loss(vae, build_loss(vae, cfg.train, x[: args.batch]), ctx)
    g = torch.Generator().manual_seed(0)

    def run(n: int) -> float:
        if use_cuda:
            torch.cuda.synchronize(device)
        distributed.barrier(ctx)
        t = time.perf_counter()
        for _ in range(n):
            batch = torch.randint(x.shape[0], (args.batch,), generator=g).to(device)
            train_step(step, optim, x[distributed.shard(batch, ctx)], None, args.batch / ctx.world_size, ctx).item()
        if use_cuda:
            torch.cuda.synchronize(device)
        distributed.barrier(ctx)
        return time.perf_counter() - t

    run(10)
    seconds = run(args.steps)
    if ctx.main:
        print(json.dumps({"images_per_s": args.steps * args.batch / seconds, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="default: benchmarks/results/ddp_throughput_DEVICE.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu_kernels.choose()  # first: the CPU kernels `pyro-vae` runs, for every variant here
    if args.worker:
        return worker(args)
    procs = [int(p) for p in args.procs.split(",")]
    if args.device == "cuda":
        import torch

        from pyro_vae.training.distributed import check_gpus_per_node

        check_gpus_per_node(max(procs), torch.cuda.device_count())
    out_path = Path(args.out or HERE / "results" / f"ddp_throughput_{args.device}.json")
    runs: dict[int, list[dict]] = {p: [] for p in procs}
    for _ in range(args.repeats):
        for p in procs:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={p}",
                "--standalone",
                __file__,
                "--worker",
                "--device",
                args.device,
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[p].append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    from common import machine

    medians = {p: statistics.median(r["images_per_s"] for r in runs[p]) for p in procs}
    result = {
        "command": "python benchmarks/ddp_throughput.py " + shlex.join(sys.argv[1:]),
        "global_batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "machine": machine(torch.device(args.device)),
        "runs": {str(p): runs[p] for p in procs},
        "median_images_per_s": {str(p): medians[p] for p in procs},
        "speedup_over_1": {str(p): medians[p] / medians[procs[0]] for p in procs},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    for p in procs:
        print(f"{p} process(es): {medians[p]:8.0f} images/s  x{medians[p] / medians[procs[0]]:.2f}")


if __name__ == "__main__":
    main()
