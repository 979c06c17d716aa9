"""`make run`'s wall time and peak memory, this tree against another one, back to back.

    python benchmarks/run_wall_time.py --other-tree DIR [--rounds 1] [--set KEY=VALUE ...] [--out FILE]

Runs the default training (`python -m pyro_vae train --out TMP`, what `make run` runs) with this
checkout's package and with the package of ``--other-tree`` (a `git worktree` of an earlier commit,
imported through ``PYTHONPATH``), alternately, each in its own process, and records each run's
wall time, peak RSS (the process's ``ru_maxrss``), the summary line it printed and its final table,
and the median ratio of this tree's wall time to the other's. The process's resident memory is also
read every 20 ms (``VmRSS``) and its highest value recorded for each phase of the run, told apart by
the lines the run logs: setup and the first epoch (imports, data, compiling), the other epochs, the
evaluation (until "best epoch"), and the figures and files. Run it with the machine otherwise idle.
Writes benchmarks/results/run_wall_time.json.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True).stdout.strip()


# (phase, the first logged text of the next phase): what `pyro-vae train` writes to stderr
PHASES = (
    ("setup and the first epoch", "epoch 1:"),
    ("the other epochs", "training stops"),
    ("evaluation", "best epoch"),
    ("figures and files", None),
)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):  # the process has ended, or no /proc here
        return None


def one_run(tree: Path, overrides: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out_path, err_path = Path(tmp) / "stdout.txt", Path(tmp) / "stderr.txt"
        phase_peaks = {name: 0.0 for name, _ in PHASES}
        phase = 0
        t = time.perf_counter()
        with open(out_path, "w") as out, open(err_path, "w") as err:  # files: a pipe nobody reads could stall the run
            proc = subprocess.Popen(
                [sys.executable, "-m", "pyro_vae", "train", "--out", str(Path(tmp) / "run")]
                + [arg for o in overrides for arg in ("--set", o)],
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
            with open(err_path) as log:
                logged = ""  # what the run logged since the last phase began (its tail)
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # (0, 0, ...) while it runs
                    if pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        break
                    rss = _rss_mb(proc.pid)
                    logged += log.read()
                    first = phase
                    while phase < len(PHASES) - 1 and (at := logged.find(PHASES[phase][1])) >= 0:
                        logged = logged[at + len(PHASES[phase][1]) :]
                        phase += 1
                    logged = logged[-200:]  # a marker may be cut by a read: keep the end
                    # the reading is the current phase's, and that of every phase passed since the last one
                    for name, _ in PHASES[min(first + 1, phase) : phase + 1] if rss is not None else ():
                        phase_peaks[name] = max(phase_peaks[name], rss)
                    time.sleep(0.02)
        wall = time.perf_counter() - t
        stdout = out_path.read_text()
        if status:
            stderr = err_path.read_text()[-2000:]
            raise RuntimeError(f"the run with {tree} failed (wait status {status}):\n{stdout[-2000:]}\n{stderr}")
        environment = json.loads((Path(tmp) / "run" / "summary.json").read_text())["environment"]
    table = stdout[stdout.index("run folder:") :].splitlines()[1:] if "run folder:" in stdout else []
    return {
        "tree": str(tree),
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        # the highest VmRSS read in each phase (every 20 ms; 0 where the phase was not reached or not seen)
        "peak_rss_mb_by_phase": phase_peaks,
        # ATen's kernels the run used (pyro_vae.cpu_kernels; a tree before it recorded none and ran torch's default)
        "cpu_kernels": environment.get("cpu_kernels", "not recorded"),
        "table": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other-tree", required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="passed to both runs")
    parser.add_argument("--out", default=str(HERE / "results" / "run_wall_time.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import torch

    from common import machine

    trees = {"this": ROOT, "other": Path(args.other_tree).resolve()}
    rounds = []
    for r in range(args.rounds):
        order = ["this", "other"] if r % 2 == 0 else ["other", "this"]
        row = {name: one_run(trees[name], args.overrides) for name in order}
        rounds.append(row)
        print(
            f"round {r + 1}: "
            + "; ".join(f"{n} {v['wall_s']:.0f} s, {v['peak_rss_mb']:.0f} MB" for n, v in row.items()),
            file=sys.stderr,
        )
    record = {
        "command": "python benchmarks/run_wall_time.py " + shlex.join(sys.argv[1:]),
        "machine": {k: v for k, v in machine(torch.device("cpu")).items() if k != "cpu_kernels"},  # (each run's own)
        "commits": {name: _git(tree, "rev-parse", "--short", "HEAD") for name, tree in trees.items()},
        "rounds": rounds,
        "wall_ratio_this_to_other": statistics.median(r["this"]["wall_s"] / r["other"]["wall_s"] for r in rounds),
        "peak_rss_ratio_this_to_other": statistics.median(
            r["this"]["peak_rss_mb"] / r["other"]["peak_rss_mb"] for r in rounds
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("commits", "wall_ratio_this_to_other", "peak_rss_ratio_this_to_other")}))


if __name__ == "__main__":
    main()
