"""Every numbered example runs with --smoke-test, writes its figures, and its numbers hold: as a
notebook in a Jupyter kernel (every one, on the CPU), as a script (the first as its own process,
each on CUDA in this process where a GPU is)."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import subprocess
import sys

import matplotlib.pyplot as plt
import pyro
import pytest
import torch

from pyro_vae import plugins
from tests.helpers import ROOT

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("[0-9][0-9]_*.py"))


def run_example(name: str, out, device: str = "cpu", monkeypatch=None) -> dict:
    """Run the script with --smoke-test. In this process (``monkeypatch`` given: the script as
    ``__main__`` with its own argv, its random streams forked and its figures closed, without the
    3 s of a new interpreter importing torch), else as a new ``python examples/NAME.py``."""
    script = ROOT / "examples" / name
    args = ["--smoke-test", "--out", str(out), "--device", device]
    if monkeypatch is None:
        result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        monkeypatch.setattr(sys, "argv", [str(script), *args])
        monkeypatch.syspath_prepend(str(script.parent))
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()), plugins.isolated():
            runpy.run_path(str(script), run_name="__main__")
        plt.close("all")
        pyro.clear_param_store()
    return json.loads((out / "results.json").read_text())


def run_notebook(name: str, out, monkeypatch) -> tuple[dict, object]:
    """Execute the example's cells top to bottom in a new Jupyter kernel (``jupytext`` reads the
    percent-format script as a notebook; ``nbclient`` runs it; a cell that raises fails the test),
    with ``--smoke-test --device cpu`` through ``PYRO_VAE_EXAMPLE_ARGS``; returns the results and the
    executed notebook."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYRO_VAE_EXAMPLE_ARGS", f"--smoke-test --device cpu --out {out}")
    notebook = jupytext.read(ROOT / "examples" / name)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "examples")}})  # fmt: skip
    client.execute()
    return json.loads((out / "results.json").read_text()), notebook


def test_every_example_is_tested():
    assert EXAMPLES == [name for name in CHECKS], "add the new example's checks to tests/test_examples.py"


def check_01(r, out):
    assert -0.7 < r["slope"] < -0.3, r["slope"]  # error ~ N^(-1/2)
    return ["points.png", "error.png"]


def check_02(r, out):
    for key in ("pq", "qp"):
        mc, se = r[f"mc_kl_{key}"]
        assert abs(mc - r[f"kl_{key}"]) < 4 * se, (key, mc, se, r[f"kl_{key}"])
    assert r["kl_pq"] > 2 * r["kl_qp"]  # asymmetric
    assert abs(r["entropy_plus_kl"] - r["cross_entropy_mc"]) < 0.02
    assert abs(abs(r["reverse_fit"][0]) - 2) < 0.3 and r["reverse_fit"][1] < 1  # one mode
    assert abs(r["forward_fit"][0]) < 1e-9 and abs(r["forward_fit"][1] - 4.36**0.5) < 1e-9  # both
    return ["asymmetry.png", "fits.png"]


def check_03(r, out):
    assert r["max_identity_error"] < 1e-9
    assert r["svi_kl_last"] < 0.01 and r["svi_kl_last"] < r["svi_kl_first"] / 100
    return ["identity.png", "svi.png"]


def check_04(r, out):
    exact = r["exact_gradient"]
    for kind in ("reparameterised", "score function"):
        for mean, se in zip(r[kind]["mean"], r[kind]["se"]):
            assert abs(mean - exact) < 4 * se, (kind, mean, se)  # unbiased, N = reps draws
        var = r[kind]["variance"]
        assert 100 < var[0] / var[-1] < 600, var  # ~ 1/N from N=1 to N=256
    assert all(s > 10 * p for s, p in zip(r["score function"]["variance"], r["reparameterised"]["variance"]))
    return ["variance.png"]


def check_05(r, out):
    for model in ("latent2", "latent20"):
        prior, encoder = r["models"][model]["prior"], r["models"][model]["encoder"]
        for p, e in zip(prior, encoder):  # sampling from the prior estimates a larger NLL than the encoder
            assert p["mean"] > e["mean"] - 0.5, (model, p, e)
        assert prior[0]["mean"] > encoder[0]["mean"] + 1, (model, prior[0], encoder[0])  # K=1: clearly worse
        assert encoder[-1]["mean"] <= encoder[0]["mean"] and prior[-1]["mean"] <= prior[0]["mean"]
    return ["estimates.png"]


def check_06(r, out):
    # the VAE's codes are closer to N(0, I) than the autoencoder's
    assert r["VAE"]["kl_gaussian_fit_to_prior"] < r["autoencoder"]["kl_gaussian_fit_to_prior"], r
    return ["latents.png", "samples.png"]


def check_07(r, out):
    # smoke-sized training is too short to order the latent sizes; check that all four learned
    for size in r["sizes"]:
        assert 0 < r[f"latent{size}"]["reconstruction_nats"] < 250, r  # untrained: ~545 nats
        assert r[f"latent{size}"]["test_neg_elbo"] < 250, r
    return ["manifold.png", "latents.png", "reconstructions.png", "explorer_path.png"]


def check_08(r, out):
    variants = [k for k, v in r.items() if isinstance(v, dict)]
    assert len(variants) == 6, variants
    for name in variants:
        nll, elbo = r[name]["test_nll"][0], r[name]["test_neg_elbo"][0]
        assert nll <= elbo + 1e-6, (name, nll, elbo)  # log-mean-exp >= mean-log on the same draws
        if r[name]["likelihood_gives"] == "probability":
            assert 0 < nll < 260, (name, nll)  # a code length; untrained: ~545 nats
    assert r["continuous_bernoulli"]["test_nll"][0] < 0  # a density on binary pixels exceeds 1
    return ["nll.png", "samples.png"]


def check_09(r, out):
    assert r["cvae_nll"][0] <= r["cvae_neg_elbo"][0]
    assert 0 < r["cvae_nll"][0] < r["baseline_nll"][0], r  # a latent beats independent pixels given x
    assert len(r["baseline_valid_curve"]) == len(r["cvae_valid_neg_elbo_curve"]) == r["epochs"]
    return ["completions.png", "curves.png"]


def check_10(r, out):
    expected = {"binomial": "model.likelihood", "laplace": "model.prior", "residual_mlp": "model.network"}
    assert r["registered"] == expected, r["registered"]
    kl = r["kl_check"]
    assert max(abs(z) for z in kl["z"]) < 4, (kl["z"], "N =", kl["samples"], "seed 0")  # 8 images
    for name, run in r["runs"].items():
        assert 0 < run["test_nll"][0] < 400, (name, run)  # untrained: ~545 nats
        recorded = out / name.replace(" ", "_") / "plugins.json"
        assert recorded.exists() == bool(run["plugins"]), name
    return ["kl_check.png", "nll.png"]


def check_11(r, out):
    one, four = r["betas"]["1"], r["betas"]["4"]
    assert four["kl_nats"] < one["kl_nats"], r  # a dearer KL buys a code with less information
    assert four["active_units"] <= one["active_units"], r
    for beta in (one, four):
        assert beta["neg_elbo"] == beta["reconstruction_nats"] + beta["kl_nats"] and beta["kl_nats"] > 0
    return ["tradeoff.png", "traversals.png"]


def check_12(r, out):
    assert r["images"] == 600 and len(list((out / "my_images").rglob("*.png"))) == 600
    assert sorted(p.name for p in (out / "my_images").iterdir()) == [str(d) for d in range(10)]  # class folders
    for name, net in r["networks"].items():
        assert 0 < net["test_nll"][0] <= net["test_neg_elbo"][0] + 1e-6 < 480, (name, net)  # untrained: ~545 nats
    return ["nll.png", "pictures.png"]


CHECKS = {
    "01_monte_carlo.py": check_01,
    "02_kl_divergence.py": check_02,
    "03_elbo_identity.py": check_03,
    "04_reparam_vs_score.py": check_04,
    "05_prior_sampling_fails.py": check_05,
    "06_autoencoder_vs_vae.py": check_06,
    "07_latent_space.py": check_07,
    "08_swap_components.py": check_08,
    "09_conditional_vae.py": check_09,
    "10_plugins.py": check_10,
    "11_beta_vae.py": check_11,
    "12_own_images.py": check_12,
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_as_a_notebook(name, tmp_path, monkeypatch):
    """The notebook runs, its numbers pass the example's checks, and its figures are written and
    shown inline (one image output per figure file at least)."""
    results, notebook = run_notebook(name, tmp_path, monkeypatch)
    figures = CHECKS[name](results, tmp_path)
    for figure in figures:
        assert (tmp_path / figure).stat().st_size > 0, figure
    shown = sum("image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert shown >= len(figures), (name, shown, figures)
    kinds = [c.cell_type for c in notebook.cells]
    assert kinds[0] == "markdown" and notebook.cells[0].source.startswith(f"# {name[:2]} ")
    assert kinds.count("markdown") >= 2 and kinds.count("code") >= 3, kinds  # taught in steps, not one main()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_as_a_script(name, device, tmp_path, monkeypatch):
    """On the CPU: the first example as its own process (``--smoke-test --device cpu`` from the
    command line), every other one its ``--help``; on CUDA: each one in this process."""
    if device == "cpu" and name != EXAMPLES[0]:
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        monkeypatch.syspath_prepend(str(ROOT / "examples"))
        with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()) as text:
            runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
        assert exit_.value.code == 0 and "--smoke-test" in text.getvalue() and name[:2] in text.getvalue()
        return
    results = run_example(name, tmp_path, device, None if device == "cpu" else monkeypatch)
    for figure in CHECKS[name](results, tmp_path):
        assert (tmp_path / figure).stat().st_size > 0, figure


def test_the_explorer_has_sliders_in_a_notebook(tmp_path, monkeypatch):
    """Example 07's latent explorer: two sliders in a kernel with ipywidgets (a widget output), the
    static path of decodings where there are none."""
    pytest.importorskip("ipywidgets")
    _, notebook = run_notebook("07_latent_space.py", tmp_path, monkeypatch)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 1, [o.get("data", {}).keys() for o in outputs]
    assert (tmp_path / "explorer_path.png").stat().st_size > 0


def test_a_bad_device_is_a_usage_error(tmp_path):
    argv = [sys.executable, str(ROOT / "examples" / EXAMPLES[0]), "--out", str(tmp_path), "--device", "tpu"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--device: device 'tpu' is not one of: auto, cpu, cuda, cuda:N" in result.stderr
