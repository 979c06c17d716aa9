"""The stop rules and learning-rate drops on a plateau (``train.patience``, ``train.lr_drops``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pyro_vae.config import ConfigError
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training import loop as T
from pyro_vae.training.stopping import lr_drop_due, stop_reason
from tests.helpers import assert_same_last_weights, small_cfg

# A short run whose valid ELBO stalls: a learning rate this large overshoots (seeded: epoch 3 is worse than 2).
PLATEAU = ["train.epochs=30", "train.lr=0.3", "train.patience=1", "train.lr_drops=2", "train.lr_drop_factor=0.25"]


def test_patience_stops_only_once_the_drops_are_used():
    cfg = small_cfg("train.epochs=100", "train.patience=3", "train.lr_drops=2").train
    assert stop_reason(cfg, 5, 0.0, 3, drops_done=0) is None and lr_drop_due(cfg, 3, 0)
    assert stop_reason(cfg, 5, 0.0, 2, drops_done=2) is None and not lr_drop_due(cfg, 2, 0)
    reason = stop_reason(cfg, 5, 0.0, 3, drops_done=2)
    assert reason == "train.patience = 3: no better valid ELBO for 3 epochs (after 2 learning-rate drops)"
    assert not lr_drop_due(cfg, 3, 2)
    assert stop_reason(cfg, 100, 0.0, 3, drops_done=0) == "train.epochs = 100 reached"  # the epochs come first
    plain = small_cfg("train.epochs=100", "train.patience=3").train
    assert stop_reason(plain, 5, 0.0, 3) == "train.patience = 3: no better valid ELBO for 3 epochs"


@pytest.mark.parametrize(
    "setting, message",
    [
        (["train.lr_drops=1"], "train.lr_drops = 1 needs train.patience > 0"),
        (["train.patience=2", "train.lr_drops=-1"], "train.lr_drops = -1 must be 0 or more"),
        (["train.patience=2", "train.lr_drop_factor=1"], r"train.lr_drop_factor = 1.0 must be in \(0, 1\)"),
        (["train.patience=2", "train.lr_drop_factor=0"], r"train.lr_drop_factor = 0.0 must be in \(0, 1\)"),
    ],
)
def test_bad_drop_settings_are_refused_by_name(setting, message):
    with pytest.raises(ConfigError, match=message):
        small_cfg(*setting)


def _replay(valid: list[float], patience: int, drops: int, factor: float, lr: float):
    """The learning rate of every epoch and the epoch training stops after, from the valid ELBOs
    alone, by the rules as documented (the independent reference for the run below)."""
    best, stale, done, lrs = math.inf, 0, 0, []
    for epoch, value in enumerate(valid, start=1):
        lrs.append(lr)
        best, stale = (value, 0) if value < best else (best, stale + 1)
        if stale >= patience:
            if done == drops:
                return lrs, epoch
            lr, stale, done = lr * factor, 0, done + 1
    return lrs, len(valid)


def test_a_plateau_drops_the_rate_from_the_best_weights_then_patience_stops_it(tmp_path, monkeypatch):
    seen = []
    drop = T.Trainer.drop_lr

    def checked_drop(self):  # the real drop, then what it must have left behind
        lr = float(self.optim.param_groups[0]["lr"])
        drop(self)
        best = load_checkpoint(self.run.best)["model"]
        for name, value in self.vae.state_dict().items():
            assert torch.equal(value, best[name]), name
        for state in self.optim.state.values():
            assert all(not torch.is_tensor(v) or not v.any() for v in state.values())
        assert float(self.optim.param_groups[0]["lr"]) == pytest.approx(lr * 0.25, rel=1e-12)
        seen.append(self.epoch)

    monkeypatch.setattr(T.Trainer, "drop_lr", checked_drop)
    run = tmp_path / "run"
    T.fit(small_cfg(*PLATEAU), run, progress=False, figures=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs, stop = _replay([r["valid_neg_elbo"] for r in rows], patience=1, drops=2, factor=0.25, lr=0.3)
    assert len(seen) == 2, f"the seeded run made {len(seen)} drops (valid: {[r['valid_neg_elbo'] for r in rows]})"
    assert [r["lr"] for r in rows] == pytest.approx(lrs, rel=1e-12)
    assert len(rows) == stop  # train.epochs, or patience once both drops were made
    assert load_checkpoint(run / "checkpoints" / "last.pt")["lr_drops"] == 2


@pytest.mark.parametrize("after", [0, 1], ids=["just-before-the-first-drop", "just-after-it"])
def test_a_run_resumed_across_a_drop_continues_exactly(tmp_path, after):
    """Split before the first drop (the resumed run makes it) or after it (the resumed run must
    know one drop is made: forgetting would make a third)."""
    whole = tmp_path / "whole"
    T.fit(small_cfg(*PLATEAU), whole, progress=False, figures=False)
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    first_drop = next(i for i, r in enumerate(rows) if r["lr"] < 0.3)  # the epochs before it: its 0-based index
    assert [r["lr_drops"] for r in rows][first_drop - 1 : first_drop + 1] == [0, 1]
    halves = tmp_path / "halves"
    T.fit(small_cfg(*PLATEAU, f"train.epochs={first_drop + after}"), halves, progress=False, figures=False)
    T.fit(small_cfg(*PLATEAU), halves, resume=True, progress=False, figures=False)
    assert_same_last_weights(whole, halves)
    assert (halves / "metrics.jsonl").read_text().count("\n") == len(rows)


def test_a_finished_run_may_be_resumed_with_drops_added(tmp_path):
    run = tmp_path / "run"
    T.fit(small_cfg("train.epochs=30", "train.lr=0.3", "train.patience=1"), run, progress=False, figures=False)
    before = len((run / "metrics.jsonl").read_text().splitlines())
    assert before < 30  # patience stopped it
    T.fit(small_cfg(*PLATEAU), run, resume=True, progress=False, figures=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) > before and rows[before]["lr"] == pytest.approx(0.3 * 0.25, rel=1e-12)


@pytest.mark.slow
def test_the_compiled_step_makes_the_same_drop_as_the_eager_one(tmp_path):
    """The compiled whole step holds the weights, Adam's state and reads the rate in place: after a
    drop it goes on from the restarted state as the eager step does (to float32 rounding)."""
    eager = tmp_path / "eager"
    T.fit(small_cfg(*PLATEAU, "train.engine=eager"), eager, progress=False, figures=False)
    rows = [json.loads(line) for line in (eager / "metrics.jsonl").read_text().splitlines()]
    after_drop = next(i for i, r in enumerate(rows) if r["lr"] < 0.3) + 1  # the first epoch at the lower rate
    runs = {}
    for engine in ("eager", "compiled"):
        runs[engine] = tmp_path / f"{engine}_short"
        cfg = small_cfg(*PLATEAU, f"train.engine={engine}", f"train.epochs={after_drop}")
        T.fit(cfg, runs[engine], progress=False, figures=False)
    a, b = (load_checkpoint(runs[e] / "checkpoints" / "last.pt") for e in ("eager", "compiled"))
    assert a["lr_drops"] == b["lr_drops"] == 1
    valid = {
        e: [json.loads(line)["valid_neg_elbo"] for line in (runs[e] / "metrics.jsonl").read_text().splitlines()]
        for e in runs
    }
    assert valid["compiled"] == pytest.approx(valid["eager"], rel=1e-5)  # a stale rate or moment: percents apart
    for name, value in a["model"].items():  # lr = 0.3 magnifies float32 rounding to about 1e-3 here
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=5e-3, msg=name)


@pytest.mark.cuda
def test_the_captured_step_makes_the_drop_in_place_and_resumes_exactly(tmp_path):
    """On CUDA the graph holds the rate as a device tensor and Adam's state by address: after a
    drop the replays go on from the restarted state (as the eager step does, to float rounding),
    the rate is the exact float times the factor, and a run split after the drop is bit-exact."""
    cuda = [*PLATEAU, "train.device=cuda"]
    runs = {}
    for engine in ("eager", "graph"):
        runs[engine] = tmp_path / engine
        T.fit(small_cfg(*cuda, f"train.engine={engine}"), runs[engine], progress=False, figures=False)
    rows = {e: [json.loads(line) for line in (runs[e] / "metrics.jsonl").read_text().splitlines()] for e in runs}
    assert [r["lr"] for r in rows["graph"]] == pytest.approx([r["lr"] for r in rows["eager"]], rel=1e-6)  # float32
    drops = rows["graph"][-1]["lr_drops"]
    group = load_checkpoint(runs["graph"] / "checkpoints" / "last.pt")["optim"]["param_groups"][0]
    assert drops >= 1 and group["lr_exact"] == 0.3 * 0.25**drops  # the float, not the float32 tensor's value
    assert [r["valid_neg_elbo"] for r in rows["graph"]] == pytest.approx(
        [r["valid_neg_elbo"] for r in rows["eager"]], rel=1e-4
    )
    first_drop = next(i for i, r in enumerate(rows["graph"]) if r["lr"] < 0.3)
    halves = tmp_path / "halves"
    T.fit(
        small_cfg(*cuda, "train.engine=graph", f"train.epochs={first_drop + 1}"), halves, progress=False, figures=False
    )
    T.fit(small_cfg(*cuda, "train.engine=graph"), halves, resume=True, progress=False, figures=False)
    assert_same_last_weights(runs["graph"], halves)
