"""The ``pyro-vae`` command line: train / resume / evaluate / plot / config, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyro_vae.cli import main
from tests.helpers import ROOT, SMALL


def _sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def test_train_resume_evaluate_plot(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", *_sets(*SMALL, "train.epochs=1")]) == 0
    out = capsys.readouterr().out
    assert "test NLL, IWAE K=20" in out and "nats per image" in out

    assert main(["train", "--out", str(run), *_sets(*SMALL)]) == 2
    assert f"--resume {run}" in capsys.readouterr().err

    resume = ["train", "--resume", str(run), "--no-progress", "--no-figures", "--device", "cpu"]
    assert main([*resume, "--set", "train.epochs=2"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2

    assert main(["evaluate", str(run), "--k", "10", "--images", "50", "--no-progress", "--device", "cpu"]) == 0
    record = json.loads((run / "evaluation_k10.json").read_text())
    assert record["k"] == 10 and record["images"] == 50 and record["nll"]["mean"] <= record["neg_elbo"]["mean"]

    small_lab = [
        "--images",
        "8",
        "--k",
        "1,10",
        "--particles",
        "1,2",
        "--reps",
        "4",
        "--grad-images",
        "4",
        "--grad-reps",
        "3",
        "--snr-k",
        "1,10",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(["compare", str(run), *small_lab]) == 0
    out = capsys.readouterr().out
    assert "TraceMeanField_ELBO" in out and "score function" in out
    lab = json.loads((run / "compare" / "compare.json").read_text())
    assert lab["values"]["nll"]["k"] == 10 and set(lab["spread"]["trace"]) == {"1", "2"}
    assert (
        set(lab["encoder_snr_vs_k"]) == {"iwae", "iwae_dreg", "piwae"}
        and set(lab["encoder_snr_vs_k"]["iwae"]) == {"1", "10"}
        and "DReG (iwae_dreg)" in out
    )
    assert sorted(p.name for p in (run / "compare" / "figures").iterdir()) == [
        "encoder_snr_vs_k.png",
        "estimator_spread.png",
        "gradient_snr.png",
        "iwae_vs_k.png",
    ]
    assert "| negative ELBO, hand-written closed form |" in (run / "compare" / "report.md").read_text()

    assert main(["plot", str(run), "--device", "cpu"]) == 0
    assert "latents.png" in capsys.readouterr().out

    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--overwrite",
                "--no-progress",
                "--no-figures",
                *_sets(*SMALL, "train.epochs=1"),
            ]
        )
        == 0
    )
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["config", "--set", "model.latent_dim"], "not of the form section.key=value"),
        (["config", "--set", "model.latent_dim=abc"], "model.latent_dim: expected an integer, got 'abc'"),
        (["config", "--set", "model.latent_dim=0"], "model.latent_dim = 0 must be at least 1"),
        (["config", "--set", "model.hidden=400,x"], "model.hidden: expected an integer"),
        (
            ["config", "--set", "train.elbo=nope"],
            "train.elbo = 'nope' is not one of: ciwae, enum, gumbel, gumbel_st, iwae, iwae_dreg, jit_mean_field, "
            "jit_trace, mean_field, miwae, piwae, stl, trace, tracegraph",
        ),
        (
            ["config", "--set", "model.prior=vampire"],
            "model.prior = 'vampire' is not one of: mixture_of_gaussians, standard_normal, student_t, vamp",
        ),
        (["config", "--set", "model.student_t.df=inf"], "model.student_t: df = inf must be a positive finite number"),
        (["config", "--set", "model.prior_df=-1"], "model.student_t: df = -1.0 must be a positive finite number"),
        (
            ["config", "--set", "model.student_t.nu=3"],
            "unknown setting model.student_t.nu; settings of model.student_t are: df",
        ),
        (
            ["config", "--set", "model.bernoulli.p=1"],
            "'bernoulli' is no model component with settings; those "
            "with settings are: conv (channels, features), diag_normal (log_var_range), "
            "discretized_logistic_mixture (components), gaussian (scale), "
            "hierarchical (layers, latent_dims, ladder, skip, lower), iaf (steps), mixture (components, baseline), "
            "mixture_of_gaussians (components), resnet "
            "(channels, features)",
        ),
        (["config", "--set", "train.kl_warmup_epochs=-1"], "train.kl_warmup_epochs = -1.0 must be 0 or more"),
        (["config", "--set", "model.guide=flow"], "model.guide = 'flow' is not one of: diag_normal, iaf"),
        (["config", "--set", "nosuch.key=1"], "unknown config section 'nosuch'"),
        (["config", "--set", "train.lr=-1"], "train.lr = -1.0 must be positive"),
        (
            ["config", "--set", "data.binarize=sometimes"],
            "data.binarize = 'sometimes' is not one of: none, static, dynamic",
        ),
        (["config", "--set", "train.device=tpu"], "train.device = 'tpu' is not one of"),
        (["config", "--config", "missing.toml"], "config file 'missing.toml' does not exist"),
        (["evaluate", "no/such/run"], "run folder no/such/run does not exist"),
        (["train", "--resume", "no/such/run"], "is not a run folder"),
        (["train", "--device", "tpu"], "train.device = 'tpu' is not one of"),
        (["compare", "no/such/run"], "run folder no/such/run does not exist"),
        (["compare", "no/such/run", "--k", "0,10"], "--k 0,10: 0 is out of range; every value must be between 1 and"),
        (["compare", "no/such/run", "--particles", "1,x"], "--particles takes comma-separated integers"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_config_files(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("[model\nlatent_dim = 2\n")
    assert main(["config", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "is not valid toml" in capsys.readouterr().err
    (tmp_path / "unknown.toml").write_text("[model]\nlatent = 2\n")
    assert main(["config", "--config", str(tmp_path / "unknown.toml")]) == 2
    assert "unknown key model.latent; keys of [model] are: latent_dim" in capsys.readouterr().err
    (tmp_path / "ok.toml").write_text('[model]\nlatent_dim = 2\nhidden = [32, 16]\n[train]\nelbo = "mean_field"\n')
    assert main(["config", "--config", str(tmp_path / "ok.toml"), "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert (
        "latent_dim = 2" in out and "hidden = [32, 16]" in out and 'elbo = "mean_field"' in out and "epochs = 3" in out
    )


def test_evaluate_rejects_k_below_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--no-progress", "--no-figures", *_sets(*SMALL, "train.epochs=1")]) == 0
    assert main(["evaluate", str(run), "--k", "0"]) == 2
    assert "--k must be at least 1" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "config", "--set", "model.latent_dim=7"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "latent_dim = 7" in result.stdout
    # the entry point leaves through os._exit: buffered output to pipes and exit statuses survive
    bad = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "config", "--set", "model.latent_dim=0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "model.latent_dim" in bad.stderr and bad.stdout == ""


def test_shipped_config_files_load():

    from pyro_vae.config import load_config

    root = ROOT
    files = sorted([*root.glob("examples/configs/*.toml"), *root.glob("benchmarks/configs/*.toml")])
    assert len(files) >= 3
    for path in files:
        load_config(path)
