"""The scores watched against the test labels: eval mode while scoring, the caller's mode restored
however the block ends, and the log line's wording for each kind of score."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.evaluation.label_scores import WATCHED, describe
from pyro_vae.evaluation.metrics import eval_mode


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_callers_mode_even_when_the_block_raises(training):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train(training)
    with eval_mode(net):
        assert not net.training and not net[1].training
    assert net.training is training and net[1].training is training
    with pytest.raises(RuntimeError, match="scoring failed"):
        with eval_mode(net):
            raise RuntimeError("scoring failed")
    assert net.training is training and net[1].training is training


def test_the_log_line_names_each_watched_score_and_nothing_for_a_plain_run():
    assert describe({"epoch": 3}) == ""
    assert describe({"test_error": 0.1406}) == ", test error 14.06%"
    line = describe({"test_cluster_accuracy": 0.8123, "test_nmi": 0.7456})
    assert line == ", test clusters 81.2% accurate (NMI 0.746)"
    assert set(WATCHED) == {"test_error", "test_cluster_accuracy", "test_nmi"}


def test_the_functions_that_score_a_model_leave_its_mode_as_they_found_it(tmp_path, monkeypatch):
    """layer_means, the figures and the estimator laboratory run the model in eval mode and give it
    back in the mode it came in (the figures' and the laboratory's work itself is recorded, not run:
    each has its own tests)."""
    from pyro_vae.data import load_data
    from pyro_vae.data.pixels import decode
    from pyro_vae.evaluation import plots
    from pyro_vae.evaluation.metrics import layer_means
    from pyro_vae.lab import estimators
    from pyro_vae.model import build_vae
    from tests.helpers import small_cfg

    cfg = small_cfg()
    data = load_data(cfg.data)
    vae = build_vae(cfg.model, data.data_dim, data.image_shape)
    x = decode(data.stored("test")[:8])
    inside = []
    monkeypatch.setattr(plots, "_figures", lambda run_dir, model, *_: inside.append(model.training) or [])
    monkeypatch.setattr(estimators, "_run_lab", lambda model, *_: inside.append(model.training))
    for training in (True, False):
        vae.train(training)
        layer_means(vae, x)
        assert vae.training is training, "layer_means"
        plots.make_figures(tmp_path, vae, data)
        assert vae.training is training, "make_figures"
        estimators.run_lab(vae, x)
        assert vae.training is training, "run_lab"
    assert inside == [False] * 4
