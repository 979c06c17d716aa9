"""The GPU check: run it first on any machine with a CUDA GPU (``make gpu-check``).

    make gpu-check [PYTHON=/path/to/python]       # a Python that has torch, pyro-ppl and pytest
    python scripts/gpu_check.py [--dry-run] [--only tests,throughput,...] [--budget-s 480]

It needs no network and no virtual environment: it uses the interpreter it runs under. In order:
the tests marked ``cuda`` (pytest, outcomes kept per test), training throughput at batch 128,
2048 and 32768 in fp32 and TF32 for the default engine and the hand-written CUDA-graph step, time
to 100 nats, and the K = 5000 evaluation of all 10,000 test images. Each step has its own time
limit inside ``--budget-s`` (8 minutes by default); a step that fails or runs out of time is
recorded and the next one runs. Writes ``benchmarks/results/*_cuda.json`` and a one-page summary,
``benchmarks/results/gpu_check.md`` (with the machine and every step's outcome).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# name -> (command after the interpreter, share of the budget, JSON it writes)
STEPS = {
    "tests": (["-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--junitxml", "{junit}"], 0.40, None),
    "throughput": (
        [
            "benchmarks/throughput.py",
            "--device",
            "cuda",
            "--batch-sizes",
            "128,2048,32768",
            "--particles",
            "1",
            "--precisions",
            "highest,high",
            "--repeats",
            "3",
            "--implementations",
            "pyro-vae,hand-written,hand-written graph,pyro-vae gated_mlp,pyro-vae conv,pyro-vae resnet",
            "--out",
            "{results}/throughput_cuda.json",
        ],
        0.25,
        "throughput_cuda.json",
    ),
    "time_to_quality": (
        ["benchmarks/time_to_quality.py", "--device", "cuda", "--out", "{results}/time_to_quality_cuda.json"],
        0.20,
        "time_to_quality_cuda.json",
    ),
    "iwae_eval": (
        [
            "benchmarks/iwae_eval.py",
            "--device",
            "cuda",
            "--k",
            "5000",
            "--images",
            "10000",
            "--repeats",
            "2",
            "--out",
            "{results}/iwae_eval_cuda.json",
        ],
        0.15,
        "iwae_eval_cuda.json",
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(STEPS), help=f"steps to run, of: {', '.join(STEPS)}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time for all steps (default 8 minutes)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON files and the summary")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit (no GPU needed)")
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown or not args.steps:
        parser.error(f"--only: unknown step(s) {unknown or args.only!r}; choose from {', '.join(STEPS)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    return args


def commands(args: argparse.Namespace) -> list[tuple[str, list[str], float]]:
    """(step, argv, time limit in seconds) for the chosen steps, the budget shared by their weights."""
    weights = sum(STEPS[s][1] for s in args.steps)
    junit = args.results / "gpu_check_tests.xml"
    out = []
    for step in args.steps:
        argv, weight, _ = STEPS[step]
        argv = [a.format(results=args.results, junit=junit) for a in argv]
        out.append((step, [sys.executable, *argv], args.budget_s * weight / weights))
    return out


def run(step: str, argv: list[str], limit: float) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
        tail = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status, tail = f"out of time ({limit:.0f} s)", (exc.stdout or b"").decode(errors="replace")
    return {
        "step": step,
        "status": status,
        "seconds": time.perf_counter() - start,
        "command": " ".join(argv[1:]),
        "output_tail": tail[-3000:],
    }


def test_outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / skipped / error, from pytest's JUnit XML."""
    if not junit.exists():
        return {}
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case]
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = {"failure": "failed"}.get(outcome, outcome)
    return outcomes


def summary(machine: dict, steps: list[dict], outcomes: dict[str, str], results: Path) -> str:
    """The one-page Markdown summary."""
    lines = [
        "# GPU check",
        "",
        f"Machine: {machine.get('gpu', '?')}, torch {machine.get('torch', '?')}, "
        f"CUDA {machine.get('cuda', '?')}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| step | outcome | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} |" for s in steps]
    if outcomes:
        counts = {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failed", "error", "skipped")}
        lines += ["", "Tests marked cuda: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)]
        lines += [f"- {name}: {kind}" for name, kind in sorted(outcomes.items()) if kind in ("failed", "error")]
    written = [f"`{p.name}`" for p in sorted(results.glob("*_cuda.json"))]
    lines += ["", "Results: " + (", ".join(written) if written else "none written") + " in benchmarks/results/."]
    return "\n".join(lines) + "\n"


def machine_facts() -> dict:
    import torch

    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = commands(args)
    if args.dry_run:
        for step, cmd, limit in plan:
            print(f"{step:<16} {limit:5.0f} s  {' '.join(cmd)}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check needs a CUDA GPU, and torch.cuda.is_available() is False here; run it on a GPU machine "
            "(`make gpu-check PYTHON=...` with a Python that has torch, pyro-ppl and pytest), or see the plan "
            "with --dry-run",
            file=sys.stderr,
        )
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    steps = []
    for step, cmd, limit in plan:
        print(f"gpu-check: {step} (at most {limit:.0f} s)", file=sys.stderr)
        steps.append(run(step, cmd, limit))
        print(f"gpu-check: {step} {steps[-1]['status']} in {steps[-1]['seconds']:.0f} s", file=sys.stderr)
    outcomes = test_outcomes(args.results / "gpu_check_tests.xml")
    facts = machine_facts()
    (args.results / "gpu_check.json").write_text(
        json.dumps({"machine": facts, "steps": steps, "tests": outcomes}, indent=2) + "\n"
    )
    text = summary(facts, steps, outcomes, args.results)
    (args.results / "gpu_check.md").write_text(text)
    print(text)
    return 0 if all(s["status"] == "passed" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
