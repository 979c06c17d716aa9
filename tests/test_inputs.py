"""Inputs checked before they are used (issue 32): the ranges of the command line's numeric options,
checkpoints whose weights do not fit their run, and a batch larger than the training split. (The
config's limits: tests/test_config.py; images and arrays: tests/data; model files:
tests/runs/test_export.py; the model's size: tests/test_model.py.)"""

from __future__ import annotations

import shutil

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.model import build_vae
from pyro_vae.objectives.fast import build_loss
from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.runs.trained import open_model
from pyro_vae.training.engine import Choice, StepEngine, make_optimizer
from pyro_vae.training.loop import fit
from tests.helpers import small_cfg

TINY = ("data.subset=60", "model.latent_dim=2", "model.hidden=8", "train.epochs=1", "eval.iwae_k=2")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "RUN", "--n", "0"], "--n = 0 must be between 1 and 10,000 (images drawn in one figure)"),
        (["sample", "RUN", "--n", "1000000000"], "--n = 1000000000 must be between 1 and 10,000"),
        (
            ["sample", "RUN", "--temperature", "nan"],
            "--temperature = nan must be a finite number above 0 and at most 1000",
        ),
        (["sample", "RUN", "--temperature", "-1"], "--temperature = -1.0 must be a finite number above 0"),
        (["sample", "RUN", "--temperature", "inf"], "--temperature = inf must be a finite number above 0"),
        (["sample", "RUN", "--seed", "-1"], "--seed = -1 must be between 0 and 4,294,967,295"),
        (["interpolate", "RUN", "--between", "0", "1", "--steps", "1"], "--steps = 1 must be between 2 and 10,000"),
        (["interpolate", "RUN", "--between", "0", "1", "--steps", "100000"], "--steps = 100000 must be between 2 and"),
        (["traverse", "RUN", "--span", "nan"], "--span = nan must be a finite number above 0 and at most 1000"),
        (["traverse", "RUN", "--span", "0"], "--span = 0.0 must be a finite number above 0"),
        (["traverse", "RUN", "--span=-inf"], "--span = -inf must be a finite number above 0"),
        (
            ["evaluate", "RUN", "--images", "-3"],
            "--images = -3 must be at least 0 (0: the whole test split; more than it has: all of them)",
        ),
        (["evaluate", "RUN", "--k", "10000000"], "--k = 10000000 must be between 1 and 1,000,000 (importance samples"),
        (["compare", "RUN", "--images", "0"], "--images = 0 must be at least 1"),
        (["compare", "RUN", "--grad-images", "-1"], "--grad-images = -1 must be at least 1"),
        (
            ["compare", "RUN", "--reps", "1"],
            "--reps = 1 must be between 2 and 100,000 (estimates per image, at least 2",
        ),
        (["compare", "RUN", "--grad-reps", "10000000"], "--grad-reps = 10000000 must be between 2 and 100,000"),
        (["compare", "RUN", "--groups", "0"], "--groups = 0 must be between 1 and 1,000,000"),
        (["compare", "RUN", "--seed", "99999999999"], "--seed = 99999999999 must be between 0 and 4,294,967,295"),
        (["compare", "RUN", "--k", "0,10"], "--k 0,10: 0 is out of range; every value must be between 1 and 1,000,000"),
        (
            ["compare", "RUN", "--particles", "1,100000"],
            "--particles 1,100000: 100000 is out of range; every value must be between 1 and 16,384",
        ),
        (["compare", "RUN", "--snr-k", "1,-4"], "--snr-k 1,-4: -4 is out of range"),
    ],
)
def test_numeric_options_out_of_range_are_one_message_and_exit_2(tmp_path, argv, message, capsys):
    """Checked before the model is opened: the run folder need not exist, and nothing is written."""
    run = tmp_path / "run"
    argv = [str(run) if a == "RUN" else a for a in argv]
    where = ["--device", "cpu"] if argv[0] == "evaluate" else ["--out", str(tmp_path / "out")]
    assert main([*argv, *where]) == 2
    err = capsys.readouterr().err
    assert f"pyro-vae {argv[0]}: error: {message}" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs") / "run"
    fit(small_cfg(*TINY), root, progress=False, figures=False)
    return root


def _tampered(run, tmp_path, change):
    """A copy of ``run`` whose best.pt had ``change`` applied to it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    state = load_checkpoint(copy / "checkpoints" / "best.pt")
    change(state)
    save_checkpoint(state, copy / "checkpoints" / "best.pt")
    return copy


def _first(state) -> str:
    return max(state["model"], key=lambda n: state["model"][n].numel())


def _wrong_shape(state):
    state["model"][_first(state)] = torch.zeros(3, 3)


def _nan(state):
    state["model"][_first(state)].view(-1)[0] = float("nan")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s.pop("model"),
            "best.pt holds no model weights (no 'model' table): it is damaged or not a pyro-vae "
            "checkpoint; use the other one (--checkpoint last) or train again",
        ),
        (lambda s: s.update(model=[1, 2]), "best.pt holds no model weights"),
        (
            lambda s: s["model"].pop(_first(s)),
            "best.pt does not match the VAE that {config} describes: missing tensor ",
        ),
        (
            _wrong_shape,
            "best.pt does not match the VAE that {config} describes: tensor {name} has shape (3, 3), the VAE needs",
        ),
        (
            lambda s: s["model"].update(intruder=torch.zeros(1)),
            "best.pt does not match the VAE that {config} describes: extra tensor intruder (1,)",
        ),
        (_nan, "best.pt does not match the VAE that {config} describes: tensor {name} has 1 NaN or infinite value(s)"),
    ],
)
def test_a_checkpoint_whose_weights_do_not_fit_is_named(run, tmp_path, capsys, change, message):
    name = _first(load_checkpoint(run / "checkpoints" / "best.pt"))
    copy = _tampered(run, tmp_path, change)
    message = message.format(config=copy / "config.toml", name=name)
    with pytest.raises(ValueError) as info:
        open_model(copy, device="cpu")
    assert str(copy / "checkpoints" / "best.pt") in str(info.value) and message in str(info.value)
    assert main(["evaluate", str(copy), "--k", "2", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(copy.glob("evaluation_*.json"))
    open_model(copy, "last", device="cpu")  # the other checkpoint still opens


def test_a_batch_larger_than_the_split_allocates_only_the_split():
    """train.batch_size above the training split (1e9 for 300 images made torch.arange(1e9): 8 GB):
    one batch of the whole split, and nothing of batch_size."""
    cfg = small_cfg(*TINY)
    x = torch.bernoulli(torch.full((30, 784), 0.3))
    vae = build_vae(cfg.model, 784)
    loss = build_loss(vae, cfg.train, x[:8])
    engine = StepEngine(loss.fn, make_optimizer(vae, 1e-3), x, 10**9, Choice("eager", False, False))
    assert engine.offsets.numel() == 30 and engine.size(0) == 30
    engine.start_epoch(torch.randperm(30))
    engine.step()
    assert engine.read().bad_step is None and engine.read().total != 0


def test_a_batch_larger_than_the_split_trains(tmp_path):
    summary = fit(small_cfg(*TINY, "train.batch_size=1048576"), tmp_path / "run", progress=False, figures=False)
    assert summary["epochs_run"] == 1


def test_a_model_too_large_for_the_data_is_refused_by_train(tmp_path, capsys):
    sets = [a for s in (*TINY, "model.hidden=[60000,60000,60000]", "train.device=cpu") for a in ("--set", s)]
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *sets]) == 2
    err = capsys.readouterr().err
    assert "pyro-vae train: error: the VAE would hold " in err and "(pyro_vae.config.MAX_MODEL_SIZE" in err
    assert "model.hidden = [60000, 60000, 60000]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # the model is built and counted before the run folder is made
