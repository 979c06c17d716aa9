"""The peer the GPU/CPU step targets are set against: NumPyro SVI with ``Trace_ELBO`` on the same
model (784-400-50, softplus, Bernoulli likelihood, diagonal-Gaussian encoder, Adam), steps run by
``jax.lax.scan`` inside one XLA-compiled call, on whatever device JAX picks.

    pip install "jax[cpu]" numpyro          # (or jax[cuda12]); not a pyro-vae dependency
    python benchmarks/numpyro_peer.py [--batch-sizes 128,2048] [--repeats 5] [--out FILE]

Prints and writes median training images/s per batch size (timed over enough steps to last about
half a second, after a compiling call). JAX computes float32 matrix products in TF32 on recent
NVIDIA GPUs unless JAX_DEFAULT_MATMUL_PRECISION=highest is set; the JSON records the setting.
Run it back to back with ``benchmarks/throughput.py`` on the same machine to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO

D, H, L = 784, 400, 50


def _linear(name: str, key, fan_in: int, fan_out: int):
    bound = 1 / fan_in**0.5  # torch.nn.Linear's initialisation
    kw, kb = jax.random.split(key)
    w = numpyro.param(f"{name}_w", jax.random.uniform(kw, (fan_in, fan_out), minval=-bound, maxval=bound))
    b = numpyro.param(f"{name}_b", jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound))
    return w, b


def model(x):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    w1, b1 = _linear("dec1", k1, L, H)
    w2, b2 = _linear("dec2", k2, H, D)
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([L]).to_event(1))
        logits = jax.nn.softplus(z @ w1 + b1) @ w2 + b2
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def guide(x):
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    w1, b1 = _linear("enc1", k1, D, H)
    w2, b2 = _linear("enc2", k2, H, 2 * L)
    out = jax.nn.softplus(x @ w1 + b1) @ w2 + b2
    loc, scale = out[:, :L], jax.nn.softplus(out[:, L:]) + 1e-5
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def compiled_stage(batch: int, steps: int):
    """``stage()``: ``steps`` SVI updates of ``batch`` images in one jitted ``lax.scan`` (compiled
    here), returning images/s."""
    key = jax.random.PRNGKey(0)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    xs = (jax.random.uniform(key, (steps, batch, D)) < 0.13).astype(jnp.float32)
    holder = {"state": svi.init(key, xs[0])}

    @jax.jit
    def run(state, xs):
        return jax.lax.scan(lambda s, xb: svi.update(s, xb), state, xs)

    def stage() -> float:
        t = time.perf_counter()
        holder["state"], losses = run(holder["state"], xs)
        losses.block_until_ready()
        return steps * batch / (time.perf_counter() - t)

    stage()  # compile
    return stage


def images_per_s(batch: int, repeats: int) -> list[float]:
    stage = compiled_stage(batch, max(10, min(400, 200_000 // batch)))
    return [stage() for _ in range(repeats)]


def serve(batches: list[int], images: int) -> None:
    """Serve timed stages for benchmarks/cpu_step.py: after compiling every batch size, one
    ``lax.scan`` over about ``images`` images per ``run BATCH`` line on stdin (images/s on stdout),
    until ``stop``; then the peak RSS."""
    stages = {b: compiled_stage(b, max(10, images // b)) for b in batches}
    print(json.dumps({"ready": True, "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__}}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "stop":
            break
        print(json.dumps({"images_per_s": stages[int(command[1])]()}), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="128,2048")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/numpyro_peer_DEVICE.json)")
    parser.add_argument("--serve", action="store_true", help="serve timed stages to benchmarks/cpu_step.py")
    parser.add_argument("--images", type=int, default=20_000, help="images per stage (--serve)")
    args = parser.parse_args()
    if args.serve:
        serve([int(b) for b in args.batch_sizes.split(",")], args.images)
        return
    device = jax.devices()[0]
    results = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rates = images_per_s(batch, args.repeats)
        results.append({"batch_size": batch, "images_per_s": statistics.median(rates), "all": rates})
        print(f"NumPyro SVI Trace_ELBO, batch {batch}: {statistics.median(rates):,.0f} images/s")
    record = {
        "command": "python benchmarks/numpyro_peer.py " + shlex.join(sys.argv[1:]),
        "device": str(device),
        "platform": device.platform,
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION", "default"),
        "results": results,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"numpyro_peer_{device.platform}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
