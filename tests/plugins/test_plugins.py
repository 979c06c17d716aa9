"""Plugins: imported by name, checked against their registry's contract, recorded by the runs that
use them, and never imported because a file says so (the consent rule)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import ConfigError, ModelConfig, load_config
from pyro_vae.model import build_vae
from pyro_vae.plugins import ContractError, PluginError, check_component, isolated, load_entry_points, load_plugin
from pyro_vae.registry import by_config_key
from pyro_vae.runs.trained import open_model
from tests.helpers import ROOT, SMALL

EXAMPLE_PLUGINS = ROOT / "examples" / "plugins"
LAPLACE = str(EXAMPLE_PLUGINS / "laplace_prior.py")


@pytest.fixture(autouse=True)
def _isolated():
    with isolated():
        yield


def _sets(*values):
    return [arg for value in values for arg in ("--set", value)]


def _write(tmp_path, name, body) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# ---------------------------------------------------------------- the contracts


@pytest.mark.parametrize("key,name", [(k, n) for k, r in sorted(by_config_key().items()) for n in r.names()])
def test_every_built_in_meets_its_contract(key, name):
    check_component(key, name)


@pytest.mark.parametrize("name", ["laplace_prior", "binomial_likelihood", "residual_mlp"])
def test_example_plugins_meet_their_contracts(name):
    plugin = load_plugin(str(EXAMPLE_PLUGINS / f"{name}.py"))
    assert len([n for names in plugin.registered.values() for n in names]) == 1, plugin


HEADER = """
import pyro.distributions as dist, torch
from dataclasses import dataclass
from torch import nn
from pyro.infer import Trace_ELBO
from pyro_vae import PRIORS, LIKELIHOODS, GUIDES, NETWORKS, ELBOS, DATASETS
from pyro_vae.components.likelihoods import Bernoulli
from pyro_vae.components.nets import MLP
"""

MALFORMED = {  # kind -> (plugin code, what the message must say)
    "prior": (
        """
        @PRIORS.register("flat_event")
        class P(nn.Module):
            def __init__(self, latent_dim, **_):
                super().__init__(); self.l = latent_dim
            def forward(self, n):
                return dist.Normal(torch.zeros(n, self.l), 1.0)   # no .to_event(1)
        """,
        r"model.prior=flat_event .*batch shape \(4,\) and event shape \(3,\), got batch \(4, 3\) and event \(\)",
    ),
    "likelihood": (
        """
        @LIKELIHOODS.register("no_param_dim")
        class Q(nn.Module):
            def forward(self, h): return dist.Bernoulli(logits=h).to_event(1)
            def mean(self, h): return h.sigmoid()
            def validate(self, x, source): pass
        """,
        "model.likelihood=no_param_dim .*needs param_dim",
    ),
    "guide": (
        """
        @GUIDES.register("not_reparameterised")
        class G(nn.Module):
            def __init__(self, data_dim, latent_dim, **_):
                super().__init__(); self.lin = nn.Linear(data_dim, latent_dim)
            def forward(self, x): return dist.Laplace(self.lin(x), 1.0).to_event(1).__class__(
                    dist.Poisson(self.lin(x).exp()), 1)
            def point(self, x): return self.lin(x)
        """,
        "model.guide=not_reparameterised .*reparameterised",
    ),
    "network": (
        """
        @NETWORKS.register("bad_trunk")
        class N(MLP):
            def encoder(self, data_dim): return super().encoder(data_dim)[0]   # forgot the width
        """,
        r"model.network=bad_trunk .*must return \(module, features: int\)",
    ),
    "elbo": (
        """
        @ELBOS.register("bare")
        class E(Trace_ELBO): pass
        """,
        "train.elbo=bare .*ELBOFlags",
    ),
    "data set": (
        """
        @DATASETS.register("no_args")
        def load(): return None
        """,
        "data.name=no_args .*one argument",
    ),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_plugin_of_each_kind_is_named_and_leaves_nothing(kind, tmp_path):
    code, message = MALFORMED[kind]
    path = _write(tmp_path, "bad.py", HEADER + textwrap.dedent(code))
    with pytest.raises(PluginError, match=message) as info:
        load_plugin(path)
    assert path in str(info.value) and "breaks the contract" in str(info.value)
    assert not any(
        n in r
        for r in by_config_key().values()
        for n in ("flat_event", "no_param_dim", "not_reparameterised", "bad_trunk", "bare", "no_args")
    )


def test_check_component_names_unknown_things():
    with pytest.raises(ContractError, match="no contract for 'model.hidden'"):
        check_component("model.hidden", "x")
    with pytest.raises(ContractError, match="prior 'nope' is not registered; registered: .*standard_normal"):
        check_component("model.prior", "nope")


def test_clashes_name_both_sides(tmp_path):
    with pytest.raises(
        PluginError,
        match=r"prior 'standard_normal' is registered twice: plugin .*a\.py registers "
        r"it, and pyro-vae \(built-in\) has already",
    ):
        load_plugin(_write(tmp_path, "a.py", HEADER + "PRIORS.register('standard_normal')(type('P', (), {}))\n"))
    first = _write(
        tmp_path,
        "b.py",
        "from pyro_vae import PRIORS\nfrom pyro_vae.components.priors import "
        "StandardNormal\nPRIORS.register('mine')(StandardNormal)\n",
    )
    load_plugin(first)
    second = _write(
        tmp_path,
        "c.py",
        "from pyro_vae import PRIORS\nfrom pyro_vae.components.priors import "
        "StandardNormal\nPRIORS.register('mine')(StandardNormal)\n",
    )
    with pytest.raises(PluginError, match=rf"registered twice: plugin {second} registers it, and plugin {first} has"):
        load_plugin(second)
    assert PRIORS.origin("mine") == first


def test_import_failures_and_missing_files(tmp_path):
    code = "PRIORS.register('half')(type('P', (), {}))\nraise RuntimeError('boom')\n"
    path = _write(tmp_path, "broken.py", HEADER + code)
    with pytest.raises(PluginError, match=rf"plugin {path} failed to import: RuntimeError: boom"):
        load_plugin(path)
    assert "half" not in PRIORS  # the registration made before the failure is undone
    with pytest.raises(PluginError, match="no such file"):
        load_plugin(str(tmp_path / "absent.py"))
    with pytest.raises(PluginError, match="plugin no_such_module_xyz failed to import: ModuleNotFoundError"):
        load_plugin("no_such_module_xyz")


def test_a_plugin_loads_once(tmp_path):
    path = _write(
        tmp_path,
        "once.py",
        "from pyro_vae import PRIORS\nfrom pyro_vae.components.priors import "
        "StandardNormal\nPRIORS.register('once')(StandardNormal)\n",
    )
    assert load_plugin(path) is load_plugin(str(tmp_path / "." / "once.py"))


def _entry_point_folder(folder, module: str, body: str):
    """A folder holding a distribution's metadata (``*.dist-info``) that declares ``module`` as a
    ``pyro_vae.components`` entry point, and the module itself."""
    (folder / f"{module}.py").write_text(body)
    info = folder / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pyro_vae.components]\nparts = {module}\n")


def test_entry_points_register_installed_packages(tmp_path, monkeypatch):
    from pyro_vae.plugins import loader

    _entry_point_folder(
        tmp_path,
        "ep_prior_pkg",
        "from pyro_vae import PRIORS\nfrom pyro_vae.components.priors "
        "import StandardNormal\nPRIORS.register('from_entry_point')(StandardNormal)\n",
    )
    monkeypatch.setattr(loader, "site_folders", lambda: [str(tmp_path)])  # as if installed there
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        [plugin] = load_entry_points()
        assert plugin.registered == {"model.prior": ["from_entry_point"]} and plugin.spec == "ep_prior_pkg"
    finally:
        import sys

        sys.modules.pop("ep_prior_pkg", None)


MARKER_MODULE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def test_entry_points_on_the_working_folder_or_pythonpath_are_never_read(tmp_path, monkeypatch):
    """A folder someone prepared (a shared run folder) with a ``*.dist-info`` declaring an entry
    point: on ``sys.path`` (the working folder under ``python -m``, or PYTHONPATH), it is not an
    installed distribution, so its module is not imported."""
    marker = tmp_path / "ran.txt"
    _entry_point_folder(tmp_path, "evil_ep_mod", MARKER_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert load_entry_points() == []
    assert not marker.exists()


def test_python_m_runs_nothing_from_the_working_folder(tmp_path):
    """``python -m pyro_vae`` in such a folder, and ``PYTHONPATH=FOLDER pyro-vae``: the folder's
    module does not run (exit 2: the folder is not a run; no marker file)."""
    marker = tmp_path / "ran.txt"
    _entry_point_folder(tmp_path, "evil_ep_mod", MARKER_MODULE.format(marker=str(marker)))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for argv in (
        [sys.executable, "-m", "pyro_vae", "evaluate", ".", "--k", "2"],
        [str(Path(sys.executable).parent / "pyro-vae"), "evaluate", str(tmp_path), "--k", "2"],
    ):
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert not marker.exists(), f"{argv[1:3]} imported the folder's entry point"


# ---------------------------------------------------------------- from the command line, and runs that used plugins


def _train(run, *extra):
    argv = [
        "train",
        "--out",
        str(run),
        "--no-progress",
        "--no-figures",
        "--plugin",
        LAPLACE,
        *_sets(*SMALL, "train.epochs=1", "model.prior=laplace"),
        *extra,
    ]
    assert main(argv) == 0


def test_train_with_a_plugin_records_it_and_every_command_needs_it(tmp_path, capsys):
    run = tmp_path / "run"
    _train(run)
    [record] = json.loads((run / "plugins.json").read_text())
    assert record["path"] == LAPLACE and record["registered"] == {"model.prior": ["laplace"]}
    assert len(record["sha256"]) == 64
    with_plugin = ["--plugin", LAPLACE]
    assert (
        main(["evaluate", str(run), "--k", "5", "--images", "20", "--no-progress", "--device", "cpu", *with_plugin])
        == 0
    )
    assert main(["plot", str(run), "--device", "cpu", *with_plugin]) == 0
    assert (
        main(["train", "--resume", str(run), "--no-progress", "--no-figures", *_sets("train.epochs=2"), *with_plugin])
        == 0
    )
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    with isolated(fresh=True):  # a new session: the plugin is not loaded
        commands = (["evaluate", str(run)], ["plot", str(run)], ["compare", str(run)], ["train", "--resume", str(run)])
        for argv in commands:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert f"run folder {run} needs plugins that were not given: {LAPLACE} (model.prior=laplace)" in err, err
            assert f"--plugin {LAPLACE}" in err and "--trust-config-plugins" in err
        with pytest.raises(PluginError, match="needs plugins that were not given"):
            open_model(run, device="cpu")  # from Python too


def test_a_changed_plugin_is_reported(tmp_path, caplog):
    copy = tmp_path / "laplace_copy.py"
    copy.write_text((EXAMPLE_PLUGINS / "laplace_prior.py").read_text())
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--no-progress",
                "--no-figures",
                "--plugin",
                str(copy),
                *_sets(*SMALL, "train.epochs=1", "model.prior=laplace"),
            ]
        )
        == 0
    )
    with isolated(fresh=True):
        copy.write_text(copy.read_text() + "\n# edited after the run\n")
        with caplog.at_level(logging.WARNING):
            argv = [
                "evaluate",
                str(run),
                "--k",
                "2",
                "--images",
                "5",
                "--no-progress",
                "--device",
                "cpu",
                "--plugin",
                str(copy),
            ]
            assert main(argv) == 0
    assert f"plugin {copy} changed since run folder {run} recorded it" in caplog.text


MARKER_PLUGIN = """
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")
from pyro_vae import PRIORS
from pyro_vae.components.priors import StandardNormal
PRIORS.register("marker_prior")(StandardNormal)
"""


def test_no_file_imports_a_plugin_without_consent(tmp_path, capsys):
    """A run folder or config file from elsewhere names a plugin that would leave a marker file:
    no command imports it unless the user gives it or trusts the file."""
    plugin = _write(tmp_path, "marker_plugin.py", MARKER_PLUGIN)
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    argv = [
        "train",
        "--out",
        str(run),
        "--no-progress",
        "--no-figures",
        "--plugin",
        plugin,
        *_sets(*SMALL, "train.epochs=1", "model.prior=marker_prior"),
    ]
    assert main(argv) == 0
    toml = tmp_path / "experiment.toml"
    toml.write_text('[plugins]\nmodules = ["./marker_plugin.py"]\n\n[model]\nprior = "marker_prior"\n')
    commands = [
        ["evaluate", str(run), "--k", "2", "--images", "5", "--no-progress", "--device", "cpu"],
        ["plot", str(run), "--device", "cpu"],
        [
            "compare",
            str(run),
            "--images",
            "4",
            "--k",
            "2",
            "--particles",
            "1",
            "--reps",
            "2",
            "--grad-images",
            "2",
            "--grad-reps",
            "2",
            "--snr-k",
            "2",
            "--no-progress",
            "--out",
            str(tmp_path / "cmp"),
            "--device",
            "cpu",
        ],
        ["train", "--resume", str(run), "--no-progress", "--no-figures", "--set", "train.epochs=2"],
        [
            "train",
            "--config",
            str(toml),
            "--out",
            str(tmp_path / "new"),
            "--no-progress",
            "--no-figures",
            "--overwrite",
            *_sets(*SMALL, "train.epochs=1"),
        ],
        ["config", "--config", str(toml)],
    ]
    for command in commands:
        with isolated(fresh=True):
            marker.unlink()
            assert main(command) == 2, command
            err = capsys.readouterr().err
            assert "needs plugins that were not given" in err and "marker_plugin.py" in err, err
            assert not marker.exists(), f"{command[0]} imported a plugin that only a file named"
            assert main([*command, "--trust-config-plugins"]) == 0, command  # the user's explicit consent
            assert marker.exists()
        marker.write_text("")  # for the next unlink


def test_a_config_file_names_its_plugins_when_they_are_missing(tmp_path):
    toml = tmp_path / "experiment.toml"
    toml.write_text('[plugins]\nmodules = ["./mine.py"]\n\n[model]\nprior = "mine"\n')
    hint = r"model.prior = 'mine' is not one of.*\[plugins\] table names \['./mine.py'\]: import them"
    with pytest.raises(ConfigError, match=hint):
        load_config(toml)
    toml.write_text('[plugins]\nmodule = "x"\n')
    assert main(["config", "--config", str(toml)]) == 2


# ---------------------------------------------------------------- the laplace plugin's KL, cross-checked


def test_laplace_kl_closed_form_matches_monte_carlo():
    """The plugin's analytic KL(N || Laplace) equals E_q[log q - log p], by the laboratory's terms."""
    from pyro_vae.lab.estimators import elbo_terms, estimator_particles
    from tests.helpers import assert_mc_close, mean_se

    load_plugin(LAPLACE)
    seed, n = 3, 20000
    torch.manual_seed(seed)
    vae = build_vae(
        ModelConfig(latent_dim=3, hidden=(8,), prior="laplace", settings={"laplace": {"scale": 0.7}}), 6
    ).double()
    x = torch.rand(4, 6, dtype=torch.float64).round()
    terms = estimator_particles(elbo_terms(vae, x, n))
    for image in range(x.shape[0]):
        mc, se = mean_se(terms["trace_kl_term"][:, image])
        exact = float(terms["mean_field_kl_term"][0, image])
        assert_mc_close(mc, exact, se, n=n, seed=seed, what=f"KL(q || Laplace) of image {image}")
