"""Training from a few labels: every batch holds labelled images beside unlabelled ones, the
labelled terms are scaled so an epoch stays an unbiased estimate of the data's ELBO, the labels
the training may not see never reach it, and the report says which protocol ran."""

from __future__ import annotations

import json

import pytest
import torch

from pyro_vae.cli import _print_summary
from pyro_vae.config import ConfigError
from pyro_vae.data import load_data
from pyro_vae.training import loop
from pyro_vae.training.labelled import labelled_order, labelled_plan
from pyro_vae.training.loop import fit
from tests.helpers import small_cfg

M2 = (
    "model.structure=semi_supervised",
    "train.elbo=enum",
    "data.labels=20",
    "model.semi_supervised.labelled_per_batch=8",
)


def _labels(n=103, known=(3, 10, 11, 40, 77)):
    labels = torch.full((n,), -1)
    labels[list(known)] = torch.arange(len(known)) % 3
    return labels


@pytest.mark.parametrize("batch_size, per_batch", [(16, 4), (10, 1), (33, 32), (7, 3)])
def test_every_batch_holds_its_labelled_images_and_every_unlabelled_image_once(batch_size, per_batch):
    labels = _labels()
    plan = labelled_plan(labels, batch_size, per_batch)
    order = labelled_order(labels, plan, torch.Generator().manual_seed(0))
    assert order.shape == (plan.length,) and plan.batches == -(-98 // (batch_size - per_batch))
    known = labels[order] >= 0
    for i in range(plan.batches):
        batch = known[i * batch_size : (i + 1) * batch_size]
        assert int(batch.sum()) == per_batch, (i, batch)
    unlabelled = order[~known]
    assert sorted(unlabelled.tolist()) == [i for i in range(103) if labels[i] < 0]  # each exactly once
    counts = torch.bincount(order[known], minlength=103)[labels >= 0]
    assert int(counts.sum()) == plan.batches * per_batch and int(counts.max() - counts.min()) <= 1
    assert plan.repeats == pytest.approx(plan.batches * per_batch / 5)
    again = labelled_order(labels, plan, torch.Generator().manual_seed(0))
    other = labelled_order(labels, plan, torch.Generator().manual_seed(1))
    assert torch.equal(order, again) and not torch.equal(order, other)


def test_plans_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="leaves no room in batches of train.batch_size = 8"):
        labelled_plan(_labels(), 8, 8)
    with pytest.raises(ConfigError, match="has 0 labelled and 103 unlabelled"):
        labelled_plan(torch.full((103,), -1), 16, 4)
    with pytest.raises(ConfigError, match="model.structure=semi_supervised learns from labels, but data.labels = 0"):
        fit(small_cfg("model.structure=semi_supervised"), tmp_path / "run", progress=False)


def test_an_m2_run_learns_reports_its_error_and_protocol(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = small_cfg(*M2)
    summary = fit(cfg, run, progress=False, figures=True)
    data = load_data(cfg.data)
    assert summary["classification"]["images"] == data.test.shape[0] == 192  # the evaluation half of 384
    assert 0 <= summary["classification"]["test_error"] <= 1
    assert summary["labels"] == {"count": 20, "protocol": data.label_protocol}
    assert "offline" in data.label_protocol and (run / "figures" / "styles.png").stat().st_size > 0
    _print_summary({**summary, "wall_time_s": 1.0, "images_per_s": 1.0}, run)
    printed = capsys.readouterr().out
    assert f"test classification error: {summary['classification']['test_error']:.2%} (192 images)" in printed
    assert f"labels: {data.label_protocol}" in printed
    # every epoch's line watches the test error too (never used to pick the best epoch)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0 <= r["test_error"] <= 1 for r in rows)
    best = next(r for r in rows if r["epoch"] == summary["best_epoch"])
    assert best["test_error"] == pytest.approx(summary["classification"]["test_error"])
    assert (run / "figures" / "curves.png").stat().st_size > 0


def test_the_labels_training_does_not_see_never_reach_it(tmp_path, monkeypatch):
    """The evaluation half's labels (the test split's) shuffled: every training number the same;
    only the classification error, scored on them, may change."""
    cfg = small_cfg(*M2, "train.epochs=1")
    first = fit(cfg, tmp_path / "a", progress=False)

    def shuffled(data_cfg):
        data = load_data(data_cfg)
        data.test_labels = data.test_labels[
            torch.randperm(len(data.test_labels), generator=torch.Generator().manual_seed(5))
        ]
        return data

    monkeypatch.setattr(loop, "load_data", shuffled)
    second = fit(cfg, tmp_path / "b", progress=False)
    rows = [json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[0]) for r in ("a", "b")]
    for key in ("train_neg_elbo", "valid_neg_elbo", "test_neg_elbo"):
        assert rows[0][key] == rows[1][key], key
    assert first["final"] == second["final"]


def test_the_epochs_scores_are_taken_in_eval_mode_and_leave_training_as_it_was(tmp_path, monkeypatch):
    """A plugin's network may behave differently in training (dropout, batch norm): the classifier is
    scored between epochs in eval mode, and training resumes in training mode."""
    from pyro_vae.semi_supervised import SemiSupervised

    modes, classify = [], SemiSupervised.classify

    def watched(self, x):
        modes.append(self.training)
        return classify(self, x)

    seen = []
    step = loop.Trainer.train_epoch

    def train_epoch(self, stop):
        seen.append(self.vae.training)
        return step(self, stop)

    monkeypatch.setattr(SemiSupervised, "classify", watched)
    monkeypatch.setattr(loop.Trainer, "train_epoch", train_epoch)
    fit(small_cfg(*M2), tmp_path / "run", progress=False, figures=False)
    assert modes and not any(modes) and seen and all(seen), (modes, seen)
