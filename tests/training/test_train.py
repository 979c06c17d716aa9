"""Training: the run folder, exact resume, a non-finite loss, and the equivalence of the
training step with Pyro's stock SVI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.cli import main as cli_main
from pyro_vae.config import ConfigError, ModelConfig, apply_overrides, load_config
from pyro_vae.evaluation.metrics import evaluate
from pyro_vae.model import build_vae
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.runs.device import resolve_device
from pyro_vae.runs.folder import check_resume_config
from pyro_vae.runs.trained import open_model
from pyro_vae.training import loop as T
from pyro_vae.training.checks import diagnose
from pyro_vae.training.engine import kl_warmup_weight
from pyro_vae.training.stopping import TrainingError, TrainingInterrupted
from tests.helpers import SMALL, assert_same_last_weights, metrics, small_cfg


def test_fit_writes_a_complete_run_folder(tmp_path):
    run = tmp_path / "run"
    summary = T.fit(small_cfg(), run, progress=False)
    assert (run / "config.toml").read_text() and load_config(run / "config.toml") == small_cfg()
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 6
    saved = json.loads((run / "summary.json").read_text())
    assert saved["final"]["test_nll"]["mean"] <= saved["final"]["test_neg_elbo"]["mean"]
    assert saved["final"]["iwae_k"] == 20 and saved["final"]["unit"] == "nats per image"
    for key in ("environment", "wall_time_s", "images_per_s", "config", "best_epoch"):
        assert key in saved and saved[key] == summary[key]
    assert saved["environment"]["device"] == "cpu" and saved["images_per_s"] > 0
    figures = sorted(p.name for p in (run / "figures").iterdir())
    assert figures == ["curves.png", "latents.png", "manifold.png", "reconstructions.png", "samples.png"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def test_the_final_evaluation_runs_on_eval_threads_and_gives_the_threads_back(tmp_path, monkeypatch):
    """``fit(eval_threads=N)``: training on the caller's threads, the final evaluation on N, and the
    caller's count restored after it (also when the evaluation fails)."""
    seen, finish, before = [], T.finish, torch.get_num_threads()

    def watched(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return finish(*args, **kwargs)

    monkeypatch.setattr(T, "finish", watched)
    torch.set_num_threads(1)
    try:
        T.fit(small_cfg(), tmp_path / "a", progress=False, figures=False, eval_threads=2)
        assert seen == [2] and torch.get_num_threads() == 1
        T.fit(small_cfg(), tmp_path / "b", progress=False, figures=False)
        assert seen == [2, 1] and torch.get_num_threads() == 1

        def failing(*args, **kwargs):
            raise RuntimeError("evaluation failed")

        monkeypatch.setattr(T, "finish", failing)
        with pytest.raises(RuntimeError, match="evaluation failed"):
            T.fit(small_cfg(), tmp_path / "c", progress=False, figures=False, eval_threads=2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_resume_continues_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    T.fit(small_cfg("train.epochs=3"), straight, progress=False, figures=False)
    T.fit(small_cfg("train.epochs=1"), split, progress=False, figures=False)
    T.fit(small_cfg("train.epochs=3"), split, resume=True, progress=False, figures=False)
    assert_same_last_weights(straight, split)
    assert metrics(straight) == metrics(split)


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    T.fit(small_cfg("train.epochs=1"), run, progress=False, figures=False)
    with open(run / "metrics.jsonl", "a") as f:  # as if killed after logging epoch 2, before its checkpoint
        f.write(json.dumps({"epoch": 2, "train_neg_elbo": 0.0}) + "\n")
    T.fit(small_cfg("train.epochs=2"), run, resume=True, progress=False, figures=False)
    assert [r["epoch"] for r in metrics(run)] == [1, 2] and metrics(run)[1]["train_neg_elbo"] > 0


def test_resume_rejects_a_changed_model_and_refuses_to_overwrite(tmp_path):
    run = tmp_path / "run"
    T.fit(small_cfg("train.epochs=1"), run, progress=False, figures=False)
    with pytest.raises(ConfigError, match=r"model.latent_dim: 2 -> 3.*may change only"):
        T.fit(small_cfg("model.latent_dim=3"), run, resume=True, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        T.fit(small_cfg(), run, progress=False)


def _patch_loss_at_call(monkeypatch, n: int, action):
    """Make fit's loss call ``action(loss)`` on its ``n``-th call (1-based) and return the result."""
    real_build = T.build_loss

    def build(*args, **kwargs):
        loss, calls = real_build(*args, **kwargs), {"n": 0}

        def wrapped(x):
            calls["n"] += 1
            value = loss.fn(x)
            return action(value) if calls["n"] == n else value

        return dataclasses.replace(loss, fn=wrapped)

    monkeypatch.setattr(T, "build_loss", build)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    _patch_loss_at_call(monkeypatch, 4, lambda loss: loss * float("nan"))
    run = tmp_path / "run"
    with pytest.raises(
        TrainingError,
        match=r"became nan at step 4 \(epoch 2\): every term is finite when "
        r"recomputed .* is kept; try a smaller train.lr",
    ):
        T.fit(small_cfg(), run, progress=False)
    kept = load_checkpoint(run / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())


def test_a_non_finite_term_is_named():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((4, 6), 0.5))

    def vae():
        return build_vae(ModelConfig(latent_dim=2, hidden=(5,)), 6)

    broken = vae()
    with torch.no_grad():
        broken.decoder[0].weight[0, 0] = float("nan")
    assert diagnose(broken, x) == "non-finite parameters: decoder.0.weight"
    broken = vae()
    broken.prior.loc[0] = float("inf")
    assert diagnose(broken, x).startswith("log p(z) (prior) at site 'z' is -inf for 4 of 4 images")
    broken = vae()
    real = broken.likelihood.forward
    broken.likelihood.forward = lambda h: real(torch.where(torch.arange(h.shape[-2])[:, None] == 1, torch.nan, h))
    assert diagnose(broken, x).startswith("log p(x|z) (likelihood) at site 'x' is nan for 1 of 4 images")


def test_training_step_equals_stock_pyro_svi():
    """Our loop (differentiable_loss + torch Adam) takes the same steps as pyro.infer.SVI."""
    cfg = ModelConfig(latent_dim=3, hidden=(16,))
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((32, 20), 0.3))
    ours, stock = build_vae(cfg, 20), build_vae(cfg, 20)
    stock.load_state_dict(ours.state_dict())

    optim = torch.optim.Adam(ours.parameters(), lr=1e-2)
    elbo = Trace_ELBO()
    pyro.set_rng_seed(1)
    for _ in range(3):
        loss = elbo.differentiable_loss(ours.model, ours.guide, x) / x.shape[0]
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    pyro.clear_param_store()
    model, guide = stock.registered()

    # SVI minimises the summed loss; scaling by 1/B (ours) leaves Adam's steps unchanged up to eps
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2, "eps": 1e-8 * x.shape[0]}), Trace_ELBO())
    pyro.set_rng_seed(1)
    for _ in range(3):
        svi.step(x)
    for (name, a), b in zip(ours.named_parameters(), stock.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


def test_cuda_request_without_cuda_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_resume_config_check_allows_only_listed_keys():
    base = load_config()
    check_resume_config(base, apply_overrides(base, ["train.epochs=99", "eval.iwae_k=5000"]))
    with pytest.raises(ConfigError, match="train.lr"):
        check_resume_config(base, apply_overrides(base, ["train.lr=0.1"]))


def test_the_default_model_learns_on_the_full_data(tmp_path):
    """Two epochs of the default configuration on all 50,000 training images."""
    cfg = load_config(None, ["train.epochs=2", "eval.iwae_k=2", "eval.iwae_images=500", "train.device=cpu"])
    summary = T.fit(cfg, tmp_path / "run", progress=False, figures=False)
    final = summary["final"]
    assert final["valid_neg_elbo"]["mean"] < 140, final  # untrained: ~575 nats; 2 epochs: ~130
    # (speed is measured by benchmarks/throughput.py, never asserted here: the host is shared)


def test_dynamic_binarization_trains_on_grey_images(tmp_path, mnist_root):
    cfg = small_cfg(
        "data.name=mnist", f"data.root={mnist_root}", "data.binarize=dynamic", "data.valid_size=100", "train.epochs=1"
    )
    summary = T.fit(cfg, tmp_path / "run", progress=False, figures=False)
    assert summary["final"]["train_neg_elbo"]["mean"] > 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_checkpoints_the_step_and_resume_is_exact(tmp_path, monkeypatch, signum):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    handler_before = signal.getsignal(signal.SIGINT)  # (SIG_IGN when pytest runs as a background job)
    T.fit(small_cfg("train.epochs=3"), straight, progress=False, figures=False)
    real_build = T.build_loss

    def send_signal(loss):
        os.kill(os.getpid(), signum)
        return loss

    _patch_loss_at_call(monkeypatch, 5, send_signal)  # epoch 2, batch 2 of 3
    with pytest.raises(TrainingInterrupted, match=r"stopped after step 5 \(epoch 2, batch 2 of 3\)") as info:
        T.fit(small_cfg("train.epochs=3"), stopped, progress=False, figures=False)
    assert info.value.signal_number == signum
    kept = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert kept["step"] == 5 and kept["epoch"] == 1 and kept["partial"]["batch"] == 2
    monkeypatch.setattr(T, "build_loss", real_build)
    T.fit(small_cfg("train.epochs=3"), stopped, resume=True, progress=False, figures=False)
    assert_same_last_weights(straight, stopped)
    assert metrics(straight) == metrics(stopped)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_sigterm_to_the_command_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "pyro_vae",
        "train",
        "--out",
        str(run),
        "--no-progress",
        "--no-figures",
        *[a for item in SMALL for a in ("--set", item)],
        "--set",
        "train.epochs=1000",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received: stopped after" in err and f"--resume {run}" in err and "Traceback" not in err
    done = load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]  # completed epochs
    resume = ["train", "--resume", str(run), "--no-progress", "--no-figures", "--set", f"train.epochs={done + 2}"]
    assert cli_main(resume) == 0  # resumed in this process
    assert [r["epoch"] for r in metrics(run)] == list(range(1, done + 3))


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    from pyro_vae.runs import checkpoint

    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def crash_half_way(obj, f):
        real_save(obj, f)
        f.flush()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpoint.torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    from pyro_vae.cli import main

    run = tmp_path / "run"
    T.fit(small_cfg("train.epochs=1"), run, progress=False, figures=False)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:2000])
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {last} is corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra",
    [
        ["model.prior=vamp", "model.vamp.components=10", "train.kl_warmup_epochs=1.5"],
        ["model.prior=mixture_of_gaussians", "model.mixture_of_gaussians.components=5"],
        ["model.prior=student_t", "train.elbo=mean_field"],
        ["model.guide=iaf", "train.elbo=iwae", "train.num_particles=3"],
        ["train.elbo=jit_mean_field"],
    ],
    ids=["vamp-warmup", "mixture", "student_t", "iaf-iwae", "jit_mean_field"],
)
def test_fit_with_other_components_writes_figures_and_finite_numbers(tmp_path, extra):
    summary = T.fit(small_cfg(*extra), tmp_path / "run", progress=False)
    final = summary["final"]
    assert all(torch.isfinite(torch.tensor(final[k]["mean"])) for k in ("train_neg_elbo", "test_nll"))
    assert final["test_nll"]["mean"] <= final["test_neg_elbo"]["mean"]
    assert len(list((tmp_path / "run" / "figures").glob("*.png"))) == 5
    weights = [r["kl_weight"] for r in metrics(tmp_path / "run")]
    warmup = "train.kl_warmup_epochs=1.5" in extra
    assert weights == ([pytest.approx(2 / 3, abs=0.01), 1.0] if warmup else [1.0, 1.0]), weights


def test_kl_warmup_schedule_and_exact_resume(tmp_path):
    """beta = step / (epochs * steps per epoch), never 0, capped at 1 (floats and device tensors alike);
    a resumed run continues the schedule exactly."""
    assert kl_warmup_weight(1, 4.0) == 0.25 and kl_warmup_weight(3, 4.0) == 0.75 and kl_warmup_weight(4, 4.0) == 1.0
    assert kl_warmup_weight(9, 4.0) == 1.0
    assert float(kl_warmup_weight(torch.tensor(2.0), 4.0)) == 0.5  # the engine's device-side weight
    assert kl_warmup_weight(2, 4.0, kl_weight=4.0) == 2.0 and kl_warmup_weight(9, 0.0, kl_weight=4.0) == 4.0  # beta-VAE
    cfg = ["model.prior=vamp", "model.vamp.components=6", "train.kl_warmup_epochs=2"]
    T.fit(small_cfg(*cfg, "train.epochs=3"), tmp_path / "straight", progress=False, figures=False)
    T.fit(small_cfg(*cfg, "train.epochs=1"), tmp_path / "split", progress=False, figures=False)
    T.fit(small_cfg(*cfg, "train.epochs=3"), tmp_path / "split", resume=True, progress=False, figures=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["kl_weight"] for r in metrics(tmp_path / "split")] == [0.5, 1.0, 1.0]


def test_a_beta_vae_reports_its_objective_and_evaluates_at_beta_one(tmp_path):
    """train.kl_weight = 4: the train column is the beta-weighted objective (so above the ELBO's
    negative), every evaluation the plain ELBO and NLL, and the summary says which is which."""
    summary = T.fit(
        small_cfg("train.kl_weight=4", "train.kl_warmup_epochs=1"), tmp_path / "b4", progress=False, figures=False
    )
    rows = metrics(tmp_path / "b4")
    assert [r["kl_weight"] for r in rows] == [4.0, 4.0]  # warm-up over the first epoch reaches beta at its end
    assert "beta-weighted trace objective (beta = train.kl_weight = 4)" in summary["objective"]
    model = open_model(tmp_path / "b4", device="cpu")
    cfg, vae, data = model.config, model.vae, model.data
    test = evaluate(vae, data.test, k=cfg.eval.iwae_k, batch_size=100, seed=cfg.eval.seed)["neg_elbo"]
    assert test.mean == pytest.approx(summary["final"]["test_neg_elbo"]["mean"], rel=1e-12)  # beta = 1
    beta_objective = rows[-1]["train_neg_elbo"]
    assert beta_objective > summary["final"]["train_neg_elbo"]["mean"], (beta_objective, summary["final"])


def test_vamp_pseudo_inputs_start_at_training_images(tmp_path):
    cfg = small_cfg("model.prior=vamp", "model.vamp.components=4")
    data = T.load_data(cfg.data)
    vae = build_vae(cfg.model, data.data_dim)
    T.init_from_data(vae, data.train, seed=0)
    pseudo = vae.prior.pseudo_inputs()
    squeezed = data.train.clamp(0.05, 0.95)
    assert all(((squeezed - row).abs().max(1).values < 1e-5).any() for row in pseudo)


@pytest.mark.parametrize("likelihood", ["discretized_logistic", "continuous_bernoulli", "gaussian"])
def test_grey_level_likelihoods_train_on_grey_mnist(tmp_path, mnist_root, likelihood):
    cfg = small_cfg(
        "data.name=mnist",
        f"data.root={mnist_root}",
        "data.valid_size=100",
        "train.epochs=1",
        f"model.likelihood={likelihood}",
    )
    summary = T.fit(cfg, tmp_path / "run", progress=False, figures=False)
    assert torch.isfinite(torch.tensor(summary["final"]["test_nll"]["mean"]))
    bernoulli = small_cfg("data.name=mnist", f"data.root={mnist_root}", "data.valid_size=100")
    with pytest.raises(ConfigError, match="the bernoulli likelihood needs binary pixels"):
        T.fit(bernoulli, tmp_path / "bernoulli", progress=False, figures=False)


def test_resuming_on_other_cpu_kernels_says_the_numbers_will_not_be_bit_for_bit(tmp_path, caplog):
    from pyro_vae.runs.checkpoint import save_checkpoint

    run = tmp_path / "run"
    T.fit(small_cfg("train.epochs=1"), run, progress=False, figures=False)
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert state["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()  # the build that wrote it
    caplog.set_level("WARNING")
    T.fit(small_cfg("train.epochs=2"), run, resume=True, progress=False, figures=False)
    assert "CPU kernels" not in caplog.text  # the same kernels: nothing to say
    save_checkpoint({**load_checkpoint(last), "cpu_kernels": "OTHER"}, last, run)
    T.fit(small_cfg("train.epochs=3"), run, resume=True, progress=False, figures=False)
    assert "written running ATen's OTHER CPU kernels" in caplog.text and "not bit for bit" in caplog.text
