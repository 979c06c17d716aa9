"""The main job end to end: the default configuration trained in full (about 3 minutes on an idle 2-core machine;
run with `make test-all` or `pytest -m slow`)."""

from __future__ import annotations

import pytest

from pyro_vae import fit, load_config


@pytest.mark.slow
def test_default_run_reaches_the_documented_quality(tmp_path):
    summary = fit(load_config(), tmp_path / "run", progress=False)
    final = summary["final"]
    # README: test negative ELBO 99.98, test NLL (K=1000) 94.40 nats; seeded, so close to those
    assert final["test_neg_elbo"]["mean"] < 101.0, final
    assert final["test_nll"]["mean"] < 95.5, final
    assert final["iwae_k"] == 1000 and final["iwae_images"] == 10000
    assert (tmp_path / "run" / "figures" / "latents.png").exists()
