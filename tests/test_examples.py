"""Every numbered example runs as a script: the first as its own process with --smoke-test, each
one's --help, and each on CUDA in this process where a GPU is (its numbers pass the same checks).
As notebooks, every one is executed in a Jupyter kernel by tests/test_docs.py, which builds the site."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import matplotlib.pyplot as plt
import pyro
import pytest
import torch

from pyro_vae import plugins
from tests.example_checks import CHECKS
from tests.helpers import ROOT, run_as_script

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("[0-9][0-9]_*.py"))


def run_example(name: str, out, device: str = "cpu", monkeypatch=None) -> dict:
    """Run the script with --smoke-test. In this process (``monkeypatch`` given: the script as
    ``__main__`` with its own argv, its random streams forked and its figures closed, without the
    3 s of a new interpreter importing torch), else as a new ``python examples/NAME.py``."""
    script = ROOT / "examples" / name
    args = ["--smoke-test", "--out", str(out), "--device", device]
    if monkeypatch is None:
        result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()), plugins.isolated():
            assert run_as_script(monkeypatch, script, *args) is None
        plt.close("all")
        pyro.clear_param_store()
    return json.loads((out / "results.json").read_text())


def test_every_example_is_tested():
    assert EXAMPLES == [name for name in CHECKS], "add the new example's checks to tests/test_examples.py"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_as_a_script(name, device, tmp_path, monkeypatch):
    """On the CPU: the first example as its own process (``--smoke-test --device cpu`` from the
    command line), every other one its ``--help``; on CUDA: each one in this process."""
    if device == "cpu" and name != EXAMPLES[0]:
        with contextlib.redirect_stdout(io.StringIO()) as text:
            code = run_as_script(monkeypatch, ROOT / "examples" / name, "--help")
        assert code == 0 and "--smoke-test" in text.getvalue() and name[:2] in text.getvalue()
        return
    results = run_example(name, tmp_path, device, None if device == "cpu" else monkeypatch)
    for figure in CHECKS[name](results, tmp_path):
        assert (tmp_path / figure).stat().st_size > 0, figure


def test_a_bad_device_is_a_usage_error(tmp_path, monkeypatch, capsys):
    assert run_as_script(monkeypatch, ROOT / "examples" / EXAMPLES[0], "--out", str(tmp_path), "--device", "tpu") == 2
    assert "--device: device 'tpu' is not one of: auto, cpu, cuda, cuda:N" in capsys.readouterr().err
