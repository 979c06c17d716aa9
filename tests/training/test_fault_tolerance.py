"""Runs killed with SIGKILL (no chance to clean up) at random moments, and in the middle of a
checkpoint write, lose nothing: ``--resume`` ends with exactly the weights of an uninterrupted
run."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.runs.checkpoint import load_checkpoint
from tests.helpers import ROOT

EPOCHS = 5
ARGS = [
    "--no-progress",
    "--no-figures",
    "--set",
    "data.subset=1200",
    "--set",
    "model.latent_dim=2",
    "--set",
    "model.hidden=16",
    "--set",
    "train.batch_size=100",
    "--set",
    "eval.iwae_k=5",
    "--set",
    "train.eval_batch_size=600",
    "--set",
    f"train.epochs={EPOCHS}",
    "--set",
    "train.device=cpu",
]

# Runs the CLI with torch.save slowed down: it announces (marker file) that a checkpoint of the
# given epoch is half written, then sleeps, so the test can kill it mid-write.
SLOW_WRITER = """
import pathlib, sys, time, torch
from pyro_vae.cli import main
marker, epoch = pathlib.Path(sys.argv[1]), int(sys.argv[2])
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("epoch") == epoch:
        f.write(b"half a checkpoint")
        f.flush()
        marker.touch()
        time.sleep(120)
    real_save(obj, f, *args, **kwargs)
torch.save = slow_save
sys.exit(main(sys.argv[3:]))
"""


def _train(*argv, **kwargs):
    """The command in a new process (to be killed)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", *argv, *ARGS],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _train_here(*argv) -> None:
    """The command in this process (nothing kills it: no interpreter to start)."""
    assert main(["train", *argv, *ARGS]) == 0


def _weights(run) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == EPOCHS
    return state["model"]


def _resume_until_done(run) -> None:
    if (run / "checkpoints" / "last.pt").exists():
        _train_here("--resume", str(run))
    else:  # killed before the first checkpoint: nothing to resume, start again
        _train_here("--out", str(run), "--overwrite")


def _assert_same(a, b, what) -> None:
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: weights differ from the uninterrupted run in {different}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The last weights of the uninterrupted run (trained once for the module's tests, in this process:
    the killed runs, each in its own, must end bit for bit where it does)."""
    straight = tmp_path_factory.mktemp("straight")
    _train_here("--out", str(straight), "--overwrite")
    return _weights(straight)


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    rng = random.Random(0)
    for trial in range(3):
        run = tmp_path / f"killed{trial}"
        proc = _train("--out", str(run))
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # training has started
            time.sleep(0.02)
        delay = rng.uniform(0, 1.0)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        _resume_until_done(run)
        _assert_same(reference, _weights(run), f"killed after {delay:.2f} s (trial {trial}, seed 0)")


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, reference):
    run, marker = tmp_path / "run", tmp_path / "writing"
    script = tmp_path / "slow_writer.py"
    script.write_text(SLOW_WRITER)
    argv = [sys.executable, str(script), str(marker), "2", "train", "--out", str(run), *ARGS]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists(), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the half-written epoch 2 is not it
    _train_here("--resume", str(run))
    _assert_same(reference, _weights(run), "killed while writing epoch 2's checkpoint")
    assert not list((run / "checkpoints").glob(".*.tmp")), "the half-written temporary file was left behind"
