"""How long each notebook of the learning path takes, for teachers planning a lab.

    python benchmarks/notebook_times.py --mode smoke|full|table [--only 01_autoencoders ...] [--threads 1]
        [--jobs 1] [--timeout 3600] [--out FILE] [--keep DIR] [--note TEXT]

Runs each ``examples/NN_*.py`` as a script in its own process (``--device cpu``, with
``--smoke-test`` in smoke mode), ``--jobs`` at a time (default one after another; on a machine
with at least ``jobs x threads`` cores they do not share one), each into a fresh temporary
folder, with ``--threads`` torch threads, and records its wall time, peak resident memory and
exit status. The
JSON (default ``benchmarks/results/notebook_times_MODE.json``) is rewritten after every notebook,
so a stopped run keeps what it measured; a second run with ``--only`` updates those entries and
keeps the others. A notebook that runs past ``--timeout`` seconds is stopped and recorded as such.
The times are those of a plain script: a notebook kernel adds its start (a few seconds) once.

``--mode table`` prints the table of ``docs/learning.md`` from the two records (smoke and full):
each notebook's smoke time, its full-run time on one CPU thread (or that it was stopped), and
whether a GPU is wanted (a full run past :data:`GPU_WANTED` minutes) or helps (past
:data:`GPU_HELPS`).

``--keep DIR`` (the full runs behind the pages: ``--keep docs/figures/examples``) keeps what a run
that finished wrote at the top of its folder: ``results.json`` as ``DIR/NAME_results.json`` and each
figure ``F.png`` as ``DIR/NAME_F.png``, each written atomically, so that every number a page's
"What the full run shows" quotes has its JSON in the repository and its figures come from the
same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from common import machine
from pyro_vae.files import write_atomic

ROOT = Path(__file__).resolve().parent.parent
GPU_WANTED, GPU_HELPS = 6.0, 4.0  # minutes of a full run on one CPU thread


def keep(folder: Path, name: str, into: Path) -> list[str]:
    """Copy ``results.json`` and the ``*.png`` at the top of a run's ``folder`` into ``into`` as
    ``NAME_results.json`` and ``NAME_F.png`` (atomically: a copy beside, then a rename)."""
    kept = []
    for path in sorted([*folder.glob("*.png"), *folder.glob("results.json")]):
        target = into / f"{name}_{path.name}"
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(path, partial)
        os.replace(partial, target)
        kept.append(target.name)
    return kept


def run_one(script: Path, mode: str, threads: int, timeout: float, into: Path | None = None) -> dict:
    """Run one notebook script; its wall time, peak RSS (this child's, via wait4) and status; with
    ``into``, what a finished run wrote is kept there (:func:`keep`)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="pyro-vae-notebook-") as out, tempfile.TemporaryFile() as err:
        args = [sys.executable, str(script), "--device", "cpu", "--out", out]
        args += ["--smoke-test"] if mode == "smoke" else []
        start = time.perf_counter()
        # stderr to a file, not a pipe: a pipe nobody reads while we wait would stall a chatty run
        proc = subprocess.Popen(args, cwd=ROOT / "examples", env=env, stdout=subprocess.DEVNULL, stderr=err)
        timed_out = False
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                _, code, usage = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.2)
        wall = time.perf_counter() - start
        status = proc.returncode = os.waitstatus_to_exitcode(code)  # reaped here, not by Popen
        err.seek(0)
        tail = err.read().decode(errors="replace")[-2000:]
        kept = keep(Path(out), script.stem, into) if into is not None and status == 0 else []
    record = {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit_status": status,
        "timed_out": timed_out,
    }
    if status != 0 and not timed_out:
        record["stderr_tail"] = tail
    if kept:
        record["kept"] = kept
    return record


def table(smoke: dict, full: dict) -> str:
    """The markdown table of docs/learning.md from the smoke and full records' ``notebooks``."""
    rows = ["| | smoke (`--smoke-test`) | full run, one CPU thread | a GPU |", "|---|---|---|---|"]
    for name in sorted(set(smoke) | set(full)):
        s, f = smoke.get(name), full.get(name)
        quick = "not measured" if s is None else f"{s['wall_s']:.0f} s"
        if f is None:
            slow, gpu = "not measured", ""
        elif f["timed_out"]:
            slow, gpu = f"over {f['wall_s'] / 60:.0f} min (stopped there)", "wanted"
        else:
            minutes = f["wall_s"] / 60
            slow = f"{minutes:.1f} min"
            gpu = "wanted" if minutes > GPU_WANTED else "helps" if minutes > GPU_HELPS else ""
        rows.append(f"| {name[:2]} | {quick} | {slow} | {gpu} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--mode",
        choices=("smoke", "full", "table"),
        required=True,
        help="--smoke-test runs, full runs, or the table of docs/learning.md from their records",
    )
    parser.add_argument("--only", nargs="*", default=None, help="notebook names (default: all of examples/)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks run at once (default 1)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is stopped")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/notebook_times_MODE.json)")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile (recorded with each run)")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep each finished run's results.json and figures here (NAME_results.json, NAME_F.png)",
    )
    args = parser.parse_args()
    if args.mode == "table":
        results = ROOT / "benchmarks" / "results"
        smoke, full = (json.loads((results / f"notebook_times_{m}.json").read_text()) for m in ("smoke", "full"))
        print(table(smoke["notebooks"], full["notebooks"]))
        return 0
    if args.keep is not None and not args.keep.is_dir():
        parser.error(f"--keep {args.keep}: no such folder (create it, or name docs/figures/examples)")
    if args.keep is not None and args.mode != "full":
        parser.error("--keep keeps a full run's results: use it with --mode full")
    out = args.out or ROOT / "benchmarks" / "results" / f"notebook_times_{args.mode}.json"
    scripts = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
    if args.only:
        unknown = sorted(set(args.only) - {s.stem for s in scripts})
        if unknown:
            parser.error(f"--only: no notebook named {', '.join(unknown)} in examples/")
        scripts = [s for s in scripts if s.stem in args.only]
    record = json.loads(out.read_text()) if out.is_file() else {}
    record.update(
        {
            "what": f"each examples/NN_*.py run as a script ({args.mode} mode, --device cpu), {args.jobs} at a time",
            "command": "python benchmarks/notebook_times.py " + shlex.join(sys.argv[1:]),
            "machine": machine(torch.device("cpu")) | {"torch_threads": args.threads},
            "jobs_at_once": args.jobs,
            "date": time.strftime("%Y-%m-%d"),
        }
    )
    notebooks = record.setdefault("notebooks", {})
    lock = threading.Lock()

    def measure(script: Path) -> None:
        result = run_one(script, args.mode, args.threads, args.timeout, args.keep)
        with lock:
            notebooks[script.stem] = result | {
                "jobs_at_once": args.jobs,
                "date": time.strftime("%Y-%m-%d %H:%M"),
                **({"note": args.note} if args.note else {}),
            }
            record["notebooks"] = dict(sorted(notebooks.items()))
            write_atomic(out, json.dumps(record, indent=2) + "\n", out.parent)
            print(
                f"{script.stem}: {result['wall_s']:.0f} s, peak {result['peak_rss_mb']:.0f} MB, "
                f"exit {result['exit_status']}",
                flush=True,
            )

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(measure, scripts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
