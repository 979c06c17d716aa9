"""``make gpu-check`` as far as a CPU can take it: the plan, argument handling, the message when
there is no GPU, and the summary writer."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("gpu_check")


def test_the_plan_shares_the_budget_and_names_every_step(gpu_check, capsys):
    assert gpu_check.main(["--dry-run", "--budget-s", "480"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["tests", "throughput", "time_to_quality", "iwae_eval"]
    assert abs(sum(float(line.split()[1]) for line in lines) - 480) < 2
    plan = " ".join(lines)
    assert "-m cuda" in plan and "--batch-sizes 128,2048,32768" in plan and "--precisions highest,high" in plan
    assert "--k 5000 --images 10000" in plan and "hand-written graph" in plan


@pytest.mark.parametrize(
    "argv, message",
    [(["--only", "tests,nope"], "unknown step(s) ['nope']"), (["--budget-s", "0"], "--budget-s must be positive")],
)
def test_bad_arguments_are_usage_errors(gpu_check, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        gpu_check.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "tests"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr and "--dry-run" in result.stderr


def test_the_summary_reads_the_test_outcomes_and_lists_the_results(gpu_check, tmp_path):
    junit = tmp_path / "gpu_check_tests.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase classname="tests.a" name="ok"/>'
        '<testcase classname="tests.a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.b" name="two_gpus"><skipped message="one GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    (tmp_path / "throughput_cuda.json").write_text("{}")
    outcomes = gpu_check.test_outcomes(junit)
    assert outcomes == {"tests.a::ok": "passed", "tests.a::bad": "failed", "tests.b::two_gpus": "skipped"}
    steps = [
        {"step": "tests", "status": "failed (exit 1)", "seconds": 61.2},
        {"step": "throughput", "status": "passed", "seconds": 90.0},
    ]
    text = gpu_check.summary({"gpu": "NVIDIA H100", "torch": "2.x", "cuda": "12"}, steps, outcomes, tmp_path)
    assert "Machine: NVIDIA H100" in text and "| tests | failed (exit 1) | 61 |" in text
    assert "1 passed, 1 failed, 1 skipped" in text and "- tests.a::bad: failed" in text
    assert "`throughput_cuda.json`" in text
