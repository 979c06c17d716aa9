"""The supervised baseline of a semi-supervised VAE: its classifier trained on the labels alone.

    python benchmarks/classifier_baseline.py [--config benchmarks/configs/semi_supervised.toml]
        [--seeds 0 1 2] [--label-seeds] [--steps 2000] [--threads 1] [--out FILE] [--set section.key=value ...]

Builds the ``semi_supervised`` structure of the recipe (so the classifier q(y | x) is the same
network, on the same data and labels protocol: ``data.labels``, ``data.seed``; for an ADGM recipe,
M2's q(y | x), without the auxiliary a), and trains its
classifier alone on the labelled training images by cross-entropy (Adam, full batch, ``--steps``
steps; there are no validation labels to stop on), once per seed (``train.seed``: the initial
weights; with ``--label-seeds`` also ``data.seed``: each seed its own draw of the labels and of the
evaluation half, as the VAE's runs of those seeds); scores the test split the VAE is scored on. Writes
benchmarks/results/classifier_baseline.json with each seed's test error, their mean and sample
standard deviation, the protocol, the command and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import machine
from pyro_vae.config import load_config
from pyro_vae.data import load_data
from pyro_vae.data.pixels import decode
from pyro_vae.files import write_atomic
from pyro_vae.model import build_vae

HERE = Path(__file__).resolve().parent


def train_classifier(cfg, data, steps: int, seed: int) -> float:
    """Test error of the structure's classifier trained on the labelled images alone."""
    torch.manual_seed(seed)
    vae = build_vae(cfg.model, data.data_dim, data.image_shape)
    known = data.train_labels >= 0
    x, y = decode(data.stored("train")[known]), data.train_labels[known]
    params = [*vae.class_trunk.parameters(), *vae.classifier.parameters()]
    optim = torch.optim.Adam(params, lr=cfg.train.lr)
    for _ in range(steps):
        loss = F.cross_entropy(vae.classifier(vae.class_trunk(x)), y)
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        pred = vae.classify(decode(data.stored("test")))
    return float((pred != data.test_labels).double().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=HERE / "configs" / "semi_supervised.toml", help="the M2 recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one classifier per seed")
    parser.add_argument("--label-seeds", action="store_true", help="each seed also draws the labels (data.seed = seed)")
    parser.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps on the labelled images")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=HERE / "results" / "classifier_baseline.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # q(y | x) alone: an ADGM recipe's classifier also reads the auxiliary a, so its baseline is M2's
    cfg = load_config(args.config, [*args.overrides, "model.semi_supervised.auxiliary_dim=0"])
    data = load_data(cfg.data)
    t0, errors, protocols = time.perf_counter(), [], {}
    for seed in args.seeds:
        if args.label_seeds:
            data = load_data(dataclasses.replace(cfg.data, seed=seed))
        protocols[str(seed)] = data.label_protocol
        errors.append(train_classifier(cfg, data, args.steps, seed))
        print(f"seed {seed}: test error {errors[-1]:.2%}", flush=True)
    result = {
        "command": shlex.join(
            ["python", "benchmarks/classifier_baseline.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "recipe": str(args.config),
        "overrides": args.overrides,
        "labels": {
            "count": cfg.data.labels,
            "protocol": data.label_protocol,
            **({"protocol_per_seed": protocols} if args.label_seeds else {}),
        },
        "test_images": int(data.test_labels.numel()),
        "steps": args.steps,
        "per_seed": dict(zip(map(str, args.seeds), errors)),
        "test_error": {
            "mean": statistics.mean(errors),
            "std": statistics.stdev(errors) if len(errors) > 1 else None,
        },
        "seconds": time.perf_counter() - t0,
        "machine": machine(torch.device("cpu")),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=2) + "\n", out.parent)
    print(json.dumps(result["test_error"]))


if __name__ == "__main__":
    main()
