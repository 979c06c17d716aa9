"""What the reports say of a run: which bound each number is, how large the final evaluation was
and why, and that a likelihood whose values are densities says so."""

from __future__ import annotations

import argparse
import json

import pytest

from pyro_vae.cli import _print_summary, build_parser, main
from pyro_vae.config import load_config
from pyro_vae.training.loop import EVAL_BUDGET, MIN_IWAE_IMAGES, fit, iwae_images, training_bound
from tests.helpers import small_cfg


def test_the_auto_evaluation_is_sized_to_the_run_and_a_given_size_is_kept():
    default = load_config(None, [])
    assert default.eval.iwae_images == 0 and default.eval.iwae_k == 1000
    # make run (30 epochs of 50,000 images): all 10,000 test images, as its README table has them
    assert iwae_images(default, 30, 50_000, 10_000) == (10_000, False)
    # a 3-epoch run: EVAL_BUDGET x 3 x 50,000 / 1000 images
    assert iwae_images(default, 3, 50_000, 10_000) == (EVAL_BUDGET * 3 * 50, True)
    # 3 epochs on data.subset=2000: never fewer than MIN_IWAE_IMAGES
    assert iwae_images(default, 3, 2_000, 2_000) == (MIN_IWAE_IMAGES, True)
    given = load_config(None, ["eval.iwae_images=10000"])
    assert iwae_images(given, 1, 100, 10_000) == (10_000, False)
    assert iwae_images(given, 1, 100, 5_000) == (5_000, False)  # all of a smaller split
    small = load_config(None, ["eval.iwae_k=10"])
    assert iwae_images(small, 1, 2_000, 10_000) == (2_000, True)


@pytest.mark.parametrize(
    "overrides, bound",
    [
        ([], "-ELBO"),
        (["train.elbo=mean_field"], "-ELBO"),
        (["train.elbo=iwae", "train.num_particles=5"], "-iwae bound (K=5)"),
        (["train.elbo=miwae", "train.num_particles=4", "train.iw_groups=2"], "-miwae bound (K=4, M=2)"),
        (["train.kl_weight=4"], "-ELBO, beta-weighted"),
        (["train.kl_warmup_epochs=10"], "-ELBO, KL warm-up"),
        (["model.structure=semi_supervised", "train.elbo=enum", "data.labels=100"], "-ELBO + classification term"),
        (["model.structure=mixture", "train.elbo=gumbel"], "-relaxed ELBO"),
    ],
)
def test_the_train_number_is_labelled_with_its_bound(overrides, bound):
    assert training_bound(load_config(None, overrides)) == bound


def test_an_iwae_run_labels_its_train_column_and_the_curves(tmp_path, capsys, caplog):
    cfg = small_cfg("train.elbo=iwae", "train.num_particles=3", "train.epochs=1")
    with caplog.at_level("INFO", logger="pyro_vae"):
        summary = fit(cfg, tmp_path / "run", progress=False, figures=False)
    assert "epoch 1: train -iwae bound (K=3) " in caplog.text and ", valid -ELBO " in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_bound"] == summary["train_bound"] == "-iwae bound (K=3)"
    _print_summary({**summary, "wall_time_s": 1.0, "images_per_s": 1.0}, tmp_path / "run")
    printed = capsys.readouterr().out
    assert "each epoch's train number was the training objective (-iwae bound (K=3))" in printed
    # small_cfg's 384 test images, K = 20, one epoch of 384: a budget of 10 x 384 / 20 = 192 images, so 250
    assert summary["final"]["iwae_images"] == MIN_IWAE_IMAGES
    assert "uses 250 evenly spaced test images of 384, sized to this short run" in caplog.text


def test_the_continuous_bernoulli_report_on_binary_data_says_its_nats_are_a_density(tmp_path, capsys):
    run = tmp_path / "run"
    summary = fit(
        small_cfg("model.likelihood=continuous_bernoulli", "train.epochs=1"), run, progress=False, figures=False
    )
    note = summary["likelihood_note"]
    assert note.startswith("model.likelihood = continuous_bernoulli is a density on continuous pixel values")
    assert "on these binary pixels a density can grow without bound" in note
    assert json.loads((run / "summary.json").read_text())["likelihood_note"] == note
    _print_summary({**summary, "wall_time_s": 1.0, "images_per_s": 1.0}, run)
    assert f"note: {note}" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--k", "2", "--images", "8", "--device", "cpu", "--no-progress"]) == 0
    assert f"note: {note}" in capsys.readouterr().out
    assert json.loads((run / "evaluation_k2.json").read_text())["likelihood_note"] == note
    bernoulli = fit(small_cfg("train.epochs=1"), tmp_path / "b", progress=False, figures=False)
    assert "likelihood_note" not in bernoulli


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert not missing, f"options without help text: {missing}"
