"""The full runs behind the pages. Every notebook's "What the full run shows" quotes its full run,
whose ``results.json`` and figures are committed as ``docs/figures/examples/NAME_results.json`` and
``NAME_F.png`` (``python benchmarks/notebook_times.py --mode full --keep docs/figures/examples``).
Each record passes the checks its smoke run passes in tests/test_examples.py, and its figures are
there; a record that fails them is reported by name (a synthetic bad record shows it can fail)."""

from __future__ import annotations

import copy
import json

import pytest

from tests.example_checks import CHECKS
from tests.helpers import ROOT

FIGURES = ROOT / "docs" / "figures" / "examples"
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("[0-9][0-9]_*.py"))
KEEP = "python benchmarks/notebook_times.py --mode full --keep docs/figures/examples"


def check_record(name: str) -> None:
    stem = name.removesuffix(".py")
    record = FIGURES / f"{stem}_results.json"
    assert record.is_file(), f"{name}: no full-run record {record.name} in {FIGURES}; run {KEEP} --only {stem}"
    figures = CHECKS[name](json.loads(record.read_text()), FIGURES)
    missing = [f for f in figures if not (FIGURES / f"{stem}_{f}").is_file()]
    assert not missing, f"{name}: the full run's figures {missing} are not in {FIGURES}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_full_run_record(name):
    check_record(name)


def test_a_bad_record_fails(tmp_path, monkeypatch):
    """The check is not vacuous: the record of notebook 03 with its Monte-Carlo KL moved far from the
    closed form fails, and a missing figure is named."""
    good = json.loads((FIGURES / "03_kl_divergence_results.json").read_text())
    bad = copy.deepcopy(good)
    bad["mc_kl_pq"][0] = good["kl_pq"] + 100 * good["mc_kl_pq"][1]
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "03_kl_divergence_results.json").write_text(json.dumps(bad))
    monkeypatch.setitem(globals(), "FIGURES", folder)
    with pytest.raises(AssertionError):
        check_record("03_kl_divergence.py")
    (folder / "03_kl_divergence_results.json").write_text(json.dumps(good))
    with pytest.raises(AssertionError, match="asymmetry.png"):
        check_record("03_kl_divergence.py")
