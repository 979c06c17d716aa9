"""The CPU training step against the plain PyTorch steps and the NumPyro peer, side by side.

    python benchmarks/cpu_step.py [--rounds 5] [--batch-sizes 128,2048] [--peer-python PY]
                                  [--variants NAME,...] [--images 20000] [--other-tree DIR]

Every variant runs in its own process (compilers and thread pools start fresh): all are started
and burnt in first (any compilation included), one after another, then they take turns: in each
round every variant times one stage of about ``--images`` images per batch size while the others
wait on a pipe, the order reversed every other round, so the variants compared are timed seconds
apart (this shared 2-core machine drifts by tens of percent over minutes). Run it with the machine
otherwise idle. Per round, each variant's speed is divided by its baselines' in the same round;
reported are the medians over rounds of the speeds and of those ratios, and each process's peak
RSS.

Variants (default model 784-400-50, softplus, Bernoulli likelihood, Adam):
  numpyro peer            NumPyro SVI Trace_ELBO, the steps in one jitted lax.scan (--peer-python)
  plain eager             plain PyTorch, Monte-Carlo KL: loss.backward(), Adam(fused=True)
  plain compiled          the same step whole (forward, backward, Adam written out) in one
                          torch.compile(fullgraph=True) of a functional step
  pyro-vae                the step `pyro-vae train` runs by default for a run of 10,000 steps or
                          more (train.engine=auto then compiles the whole step; asked for by name
                          here, so that shorter default runs at batch 2048 measure it too)
  pyro-vae eager          the same with train.engine=eager
  plain eager ELBO, plain compiled ELBO, pyro-vae ELBO
                          for mean_field, iwae K=5 and iwae_dreg K=5 (compiled where the loss
                          compiles; iwae_dreg's hook on z does not, so it and its plain step run
                          eagerly)
With --other-tree DIR (a checkout of another commit, `git worktree add DIR COMMIT`), every variant
asked for also runs from that tree (its package through ``PYTHONPATH``, its own plain steps), as
"NAME @ COMMIT": a change measured side by side with the code before it.
Ratios: the default step to the peer and to the plain steps; every pyro-vae ELBO row to the faster
of its own plain steps; each "NAME" to its "NAME @ COMMIT". Writes benchmarks/results/cpu_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pyro_vae import cpu_kernels

HERE = Path(__file__).resolve().parent
PARTICLES = 5
# name: (kind, ELBO, particles, extra overrides or "compiled" for a plain step)
VARIANTS = {
    "plain eager": ("plain", "trace", 1, False),
    "plain compiled": ("plain", "trace", 1, True),
    "pyro-vae": ("project", "trace", 1, ("train.engine=compiled",)),
    "pyro-vae eager": ("project", "trace", 1, ("train.engine=eager",)),
    "plain eager mean_field": ("plain", "mean_field", 1, False),
    "plain compiled mean_field": ("plain", "mean_field", 1, True),
    "pyro-vae mean_field": ("project", "mean_field", 1, ("train.engine=compiled",)),
    f"plain eager iwae K={PARTICLES}": ("plain", "iwae", PARTICLES, False),
    f"plain compiled iwae K={PARTICLES}": ("plain", "iwae", PARTICLES, True),
    f"pyro-vae iwae K={PARTICLES}": ("project", "iwae", PARTICLES, ("train.engine=compiled",)),
    f"plain eager iwae_dreg K={PARTICLES}": ("plain", "iwae_dreg", PARTICLES, False),
    f"pyro-vae iwae_dreg K={PARTICLES}": ("project", "iwae_dreg", PARTICLES, ("train.engine=compiled",)),
}


def serve(name: str, batches: list[int], images: int) -> None:
    """The child: build the variant's step for every batch size, burn it in (with any
    compilation), say ``ready``, then time one stage of about ``images`` images per ``run BATCH``
    line read from stdin (images/s on stdout), until ``stop``; then its peak RSS."""
    import torch

    from common import config, no_validation, plain_step, project_step

    no_validation()
    kind, elbo, particles, extra = VARIANTS[name]
    steps, engines = {}, {}
    for batch in batches:
        pool = torch.bernoulli(torch.full((8192, 784), 0.13))
        overrides = (f"train.batch_size={batch}", f"train.elbo={elbo}", f"train.num_particles={particles}")
        if kind == "plain":
            plain, n_batches = plain_step(config(*overrides), elbo, particles, compiled=extra), pool.shape[0] // batch

            def step(i: int, plain=plain, batch=batch, n_batches=n_batches, pool=pool) -> None:
                plain(pool[(i % n_batches) * batch : (i % n_batches + 1) * batch])
        else:
            project = project_step(config(*overrides, *extra), torch.device("cpu"), pool)[0]
            engines[batch] = project.engine

            def step(i: int, project=project) -> None:
                project()

        for i in range(max(10, images // batch // 4)):  # burn-in, with any compilation
            step(i)
        steps[batch] = step
    package = str(Path(cpu_kernels.__file__).resolve().parent)  # whose pyro_vae this process runs
    print(json.dumps({"ready": True, "engine": engines or None, "package": package}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "stop":
            break
        batch = int(command[1])
        n = max(10, images // batch)
        t = time.perf_counter()
        for i in range(n):
            steps[batch](i)
        print(json.dumps({"images_per_s": n * batch / (time.perf_counter() - t)}), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


class Child:
    """A variant's process, serving timed stages on request."""

    def __init__(self, args: list[str], cwd: Path = HERE, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args} stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def stage(self, batch: int) -> float:
        self.proc.stdin.write(f"run {batch}\n")
        self.proc.stdin.flush()
        return self._read()["images_per_s"]

    def stop(self) -> float:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        rss = self._read()["peak_rss_mb"]
        self.proc.wait()
        return rss


def ratios(rounds: list[dict], batches: list[int], commit: str | None = None) -> dict:
    """Median over rounds of each comparison the issue asks for, per batch size (and, with the
    ``commit`` of ``--other-tree``, of each variant to the same variant of that commit)."""

    def median_ratio(a: str, b: str | tuple[str, ...]) -> dict | None:
        bs = (b,) if isinstance(b, str) else b
        if a not in rounds[0] or not all(x in rounds[0] for x in bs):
            return None
        return {b: statistics.median(r[a][b] / max(r[x][b] for x in bs) for r in rounds) for b in batches}

    out = {
        "pyro-vae / numpyro peer": median_ratio("pyro-vae", "numpyro peer"),
        "pyro-vae / plain compiled": median_ratio("pyro-vae", "plain compiled"),
        "pyro-vae / plain eager": median_ratio("pyro-vae", "plain eager"),
        "pyro-vae eager / plain eager": median_ratio("pyro-vae eager", "plain eager"),
        "pyro-vae / pyro-vae eager": median_ratio("pyro-vae", "pyro-vae eager"),
        "plain compiled / numpyro peer": median_ratio("plain compiled", "numpyro peer"),
        "plain eager / numpyro peer": median_ratio("plain eager", "numpyro peer"),
    }
    for elbo in ("mean_field", f"iwae K={PARTICLES}", f"iwae_dreg K={PARTICLES}"):
        own = tuple(f"plain {m} {elbo}" for m in ("eager", "compiled") if f"plain {m} {elbo}" in rounds[0])
        out[f"pyro-vae {elbo} / its fastest plain step"] = median_ratio(f"pyro-vae {elbo}", own) if own else None
    for name in [n for n in rounds[0] if commit and n != "numpyro peer" and "@" not in n]:
        out[f"{name} / {name} @ {commit}"] = median_ratio(name, f"{name} @ {commit}")
    return {k: v for k, v in out.items() if v is not None}


def _commit(tree: Path) -> str:
    """The short commit of the git checkout ``tree`` (with ``+changes`` where its tracked files differ
    from it), or the folder's name where ``tree`` is not the top of a checkout git can read."""
    git = ["git", "-C", str(tree)]
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        if Path(top.stdout.strip()).resolve() != tree.resolve():
            return tree.name
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return tree.name
    return head.stdout.strip() + ("+changes" if dirty.returncode or dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="stages per variant and batch size, alternated")
    parser.add_argument("--batch-sizes", default="128,2048")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--peer-python", help="a Python with jax and numpyro (not a pyro-vae dependency)")
    parser.add_argument("--images", type=int, default=20_000, help="images per timed stage")
    parser.add_argument("--out", default=str(HERE / "results" / "cpu_step.json"))
    parser.add_argument("--other-tree", help="a checkout of another commit: its variants run beside these")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    other, commit = None, None
    if args.other_tree and not args.child:
        other = Path(args.other_tree).resolve()
        if not (other / "benchmarks" / "cpu_step.py").is_file() or not (other / "pyro_vae").is_dir():
            parser.error(
                f"--other-tree {other}: not a checkout of pyro-vae (no benchmarks/cpu_step.py and pyro_vae/ "
                "there); make one with `git worktree add DIR COMMIT`"
            )
        commit = _commit(other)
    cpu_kernels.choose()  # before any tensor: the CPU kernels `pyro-vae` runs, for every variant here
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    if args.child:
        sys.path.insert(0, str(HERE))
        serve(args.child, batches, args.images)
        return
    sys.path.insert(0, str(HERE))
    import torch

    from common import machine

    common = ["--batch-sizes", args.batch_sizes, "--images", str(args.images)]
    children = {}  # started one at a time (compilations do not overlap), then all kept waiting
    if args.peer_python:
        children["numpyro peer"] = Child([args.peer_python, str(HERE / "numpyro_peer.py"), "--serve", *common])
    for name in names:
        children[name] = Child([sys.executable, __file__, "--child", name, *common])
        print(f"{name}: ready", file=sys.stderr)
        if other:
            script = other / "benchmarks" / "cpu_step.py"
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, (str(other), os.environ.get("PYTHONPATH")))),
            }
            children[f"{name} @ {commit}"] = Child(
                [sys.executable, str(script), "--child", name, *common], cwd=script.parent, env=env
            )
            print(f"{name} @ {commit}: ready", file=sys.stderr)
    rounds = []
    for r in range(args.rounds):
        order = list(children) if r % 2 == 0 else list(children)[::-1]
        row = {name: {} for name in children}
        for batch in batches:
            for name in order:
                time.sleep(0.2)  # the previous process's threads stop spinning
                row[name][batch] = children[name].stage(batch)
        rounds.append(row)
        print(f"round {r + 1}: " + "; ".join(f"{n} {v[batches[0]]:,.0f}" for n, v in row.items()), file=sys.stderr)
    peak = {name: child.stop() for name, child in children.items()}
    medians = {
        n: {
            "images_per_s": {b: statistics.median(rd[n][b] for rd in rounds) for b in batches},
            "peak_rss_mb": peak[n],
            "engine": children[n].hello.get("engine"),
            "package": children[n].hello.get("package"),
        }
        for n in children
    }
    record = {
        "command": "python benchmarks/cpu_step.py " + shlex.join(sys.argv[1:]),
        "machine": machine(torch.device("cpu")),
        "commit": _commit(HERE.parent),
        "unit": "training images/s; peak RSS of the variant's process in MB",
        "peer": children["numpyro peer"].hello.get("versions") if args.peer_python else None,
        "rounds": rounds,
        "median": medians,
        "other_tree": {"path": str(other), "commit": commit} if other else None,
        "ratios": ratios(rounds, batches, commit),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for n, m in medians.items():
        speeds = "   ".join(f"batch {b}: {v:>8,.0f}" for b, v in m["images_per_s"].items())
        print(f"{n:<30} {speeds}   peak RSS {m['peak_rss_mb']:.0f} MB")
    for k, v in record["ratios"].items():
        print(f"{k:<48} " + "   ".join(f"batch {b}: x{x:.2f}" for b, x in v.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
