"""The discrete-site laboratory: every estimator that handles a discrete site measured against the
enumerated gradient; the score function unbiased, the relaxation biased, on a small model."""

from __future__ import annotations

import json

from pyro_vae.lab.discrete import DiscreteLabConfig, discrete_parameters, run_discrete_lab, write_outputs
from tests.objectives.test_enumeration import _toy


def test_the_lab_measures_every_discrete_estimator_against_enumeration(tmp_path):
    toy, x = _toy(4)
    cfg = DiscreteLabConfig(images=4, groups=60, copies=100, temperatures=(1.0, 0.2), seed=3)
    params = discrete_parameters(toy, x)
    assert {id(p) for p in params} == {id(p) for p in toy.cls.parameters()}  # what q(c | x) depends on
    result = run_discrete_lab(toy, x, cfg)
    rows = {(r["estimator"], r["temperature"]): r for r in result.rows}
    assert set(rows) == {
        ("enum", None),
        ("trace", None),
        *((n, t) for n in ("gumbel", "gumbel_st") for t in (1.0, 0.2)),
    }
    assert rows[("enum", None)]["bias"] == 0 and result.parameters == 3 * 5 + 3
    assert rows[("trace", None)]["bias_z"] < 4.5, rows[("trace", None)]  # the score function: unbiased
    for name in ("gumbel", "gumbel_st"):
        hot, cold = rows[(name, 1.0)], rows[(name, 0.2)]
        assert hot["bias_z"] > 8 and hot["relative_bias"] > cold["relative_bias"], (hot, cold)
    assert all(r["variance"] > 0 and r["snr"] > 0 for r in result.rows)
    paths = write_outputs(result, tmp_path / "out", "pyro-vae compare RUN")
    record = json.loads((tmp_path / "out" / "discrete_lab.json").read_text())
    assert record["command"] == "pyro-vae compare RUN" and len(record["rows"]) == 6
    assert [p.name for p in paths] == ["discrete_lab.json", "discrete_lab.md", "discrete_lab.png"]
