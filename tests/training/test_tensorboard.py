"""TensorBoard: the event files read back equal metrics.jsonl, a resumed run continues the same
curves with no step twice, and a missing package is a clear error before anything is written."""

from __future__ import annotations

import builtins
import json
import math

import pytest

from pyro_vae.config import ConfigError
from pyro_vae.training.loop import fit
from tests.helpers import small_cfg

pytest.importorskip("tensorboard", reason="the optional tensorboard package (pip install 'pyro-vae[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

WATCHED = ("test_error", "test_cluster_accuracy", "test_nmi")
EPOCH_KEYS = ("train_neg_elbo", "valid_neg_elbo", "test_neg_elbo", "lr", "kl_weight", "images_per_s")


def _events(run):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _assert_matches_metrics(run):
    acc = _events(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    watched = tuple(k for k in WATCHED if k in rows[0])  # scores against the test labels, where there are
    assert {t for t in acc.Tags()["scalars"] if t.removeprefix("epoch/") in WATCHED} == {f"epoch/{k}" for k in watched}
    for key in EPOCH_KEYS + watched:
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [r["step"] for r in rows], key
        for e, r in zip(events, rows):  # (TensorBoard stores float32)
            assert math.isclose(e.value, r[key], rel_tol=1e-6), (key, e.step, e.value, r[key])
    return acc


def test_event_files_equal_metrics_jsonl(tmp_path):
    run = tmp_path / "run"
    fit(small_cfg("train.tensorboard=true", "train.kl_warmup_epochs=1.5"), run, progress=False, figures=False)
    acc = _assert_matches_metrics(run)
    steps = [e.step for e in acc.Scalars("train/running_neg_elbo")]
    assert steps == list(range(1, 7)), steps  # sync_every = 1 on the CPU: every one of the 2 x 3 steps
    assert {"images/reconstructions", "images/samples"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("images/samples")] == [3, 6]
    assert (run / "tensorboard" / "hparams").is_dir()


def test_a_resumed_run_continues_the_curves_without_repeating_a_step(tmp_path):
    """The process that was interrupted had logged past its last checkpoint (here: a stray event at
    step 4); the resumed run purges it and writes each step once."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    fit(small_cfg("train.tensorboard=true", "train.epochs=1"), run, progress=False, figures=False)
    stray = SummaryWriter(str(run / "tensorboard"))
    stray.add_scalar("train/running_neg_elbo", 1e6, 4)  # after the checkpoint (step 3): to be purged
    stray.close()
    fit(small_cfg("train.tensorboard=true", "train.epochs=3"), run, resume=True, progress=False, figures=False)
    acc = _assert_matches_metrics(run)
    running = acc.Scalars("train/running_neg_elbo")
    assert [e.step for e in running] == list(range(1, 10)) and all(e.value < 1e5 for e in running), running


def test_a_missing_tensorboard_is_named_before_anything_is_written(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(
        ConfigError,
        match=r"train.tensorboard = true needs the tensorboard package .*"
        r"pip install 'pyro-vae\[tensorboard\]'",
    ):
        fit(small_cfg("train.tensorboard=true"), tmp_path / "run", progress=False, figures=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "structure",
    [
        ("model.structure=hierarchical", "model.hierarchical.latent_dims=[3,2]"),
        ("model.structure=hierarchical", "model.hierarchical.latent_dims=[3,2]", "model.hierarchical.ladder=true"),
        ("model.structure=mixture", "model.mixture.components=3", "train.elbo=enum"),
        ("model.structure=semi_supervised", "train.elbo=enum", "data.labels=20"),
    ],
    ids=["hierarchical", "ladder", "mixture", "semi_supervised"],
)
def test_every_structure_logs_its_curves_and_images(tmp_path, structure):
    """The same curves as metrics.jsonl and the same images for the structures beyond one latent
    (several layers; a class summed out; labels in the batches)."""
    run = tmp_path / "run"
    fit(small_cfg("train.tensorboard=true", *structure), run, progress=False, figures=False)
    acc = _assert_matches_metrics(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    watched = {"mixture": {"test_cluster_accuracy", "test_nmi"}, "semi_supervised": {"test_error"}}
    kind = structure[0].removeprefix("model.structure=")
    assert all(set(r) & set(WATCHED) == watched.get(kind, set()) for r in rows), rows
    ends = [r["step"] for r in rows]
    assert len(ends) == 2 and [e.step for e in acc.Images("images/samples")] == ends
    assert [e.step for e in acc.Images("images/reconstructions")] == ends
