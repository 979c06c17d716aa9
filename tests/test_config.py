"""Component settings live with their components: ``[model.NAME]`` / ``[train.NAME]`` tables checked
by the component's own ``Settings`` class; the flat keys of earlier versions still read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from pyro_vae.cli import main
from pyro_vae.components.priors import PRIORS, StandardNormal
from pyro_vae.config import ConfigError, from_dict, load_config, to_toml
from pyro_vae.model import build_vae
from tests.helpers import ROOT


def test_a_table_and_an_override_spell_the_same_settings(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nprior = "student_t"\n\n[model.student_t]\ndf = 3\n\n[train.ciwae]\nbeta = 0.25\n')
    from_file = load_config(path)
    from_override = load_config(None, ["model.prior=student_t", "model.student_t.df=3", "train.ciwae.beta=0.25"])
    assert from_file == from_override
    assert from_file.model.settings == {"student_t": {"df": 3.0}, "diag_normal": {"log_var_range": ()}}
    assert from_file.train.settings == {"ciwae": {"beta": 0.25}}  # given, kept (train.elbo is not ciwae)
    assert build_vae(from_file.model, 4).prior.df.item() == 3.0


def test_the_chosen_components_settings_are_filled_in_and_round_trip(tmp_path):
    cfg = load_config(
        None, ["model.prior=vamp", "model.guide=diag_normal", "train.elbo=ciwae", "train.num_particles=2"]
    )
    assert cfg.model.settings == {
        "vamp": {"components": 500, "pseudo_inputs": "data"},
        "diag_normal": {"log_var_range": ()},
    }
    assert cfg.train.settings == {"ciwae": {"beta": 0.5}}
    text = to_toml(cfg)
    assert '[model.vamp]\ncomponents = 500\npseudo_inputs = "data"' in text and "[train.ciwae]\nbeta = 0.5" in text
    (tmp_path / "c.toml").write_text(text)
    assert load_config(tmp_path / "c.toml") == cfg
    assert from_dict(cfg.to_dict()) == cfg  # the form a checkpoint stores


def test_the_flat_keys_of_earlier_versions_read_as_their_new_spelling(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(
        '[model]\nprior = "student_t"\nprior_df = 7.0\nprior_components = 9\nlikelihood_scale = 0.2\n'
        "flow_steps = 3\n\n[train]\nciwae_beta = 0.1\n"
    )
    cfg = load_config(path)
    assert cfg.model.settings == {
        "student_t": {"df": 7.0},
        "mixture_of_gaussians": {"components": 9},
        "vamp": {"components": 9, "pseudo_inputs": "data"},
        "gaussian": {"scale": 0.2},
        "iaf": {"steps": 3},
        "diag_normal": {"log_var_range": ()},  # (the default guide's, filled in)
    }
    assert cfg.train.settings == {"ciwae": {"beta": 0.1}}
    assert "prior_df" not in to_toml(cfg) and "[model.student_t]\ndf = 7.0" in to_toml(cfg)
    assert load_config(None, ["model.prior_df=7", "model.prior=student_t"]).model.settings["student_t"] == {"df": 7.0}


def test_the_run_folder_of_an_earlier_version_still_loads():
    fixture = ROOT.parent / "shared" / "fixtures" / "h100_run_format1" / "config.toml"
    if not fixture.exists():
        pytest.skip(f"{fixture} (the shared fixtures) is not beside the checkout")
    cfg = load_config(fixture)
    assert cfg.model.prior == "standard_normal" and cfg.model.settings["student_t"] == {"df": 5.0}


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.student_t.df=0", "model.student_t: df = 0.0 must be a positive finite number"),
        ("model.student_t.df=many", "model.student_t.df: expected a number, got 'many'"),
        (
            "model.vamp.pseudo=3",
            "unknown setting model.vamp.pseudo; settings of model.vamp are: components, pseudo_inputs",
        ),
        ("model.iaf.steps=0", "model.iaf: steps = 0 must be at least 1"),
        ("model.nosuch.x=1", "'nosuch' is no model component with settings"),
        ("train.ciwae.beta=2", "train.ciwae: beta = 2.0 must be in [0, 1]"),
        ("train.kl_weight=0", "train.kl_weight = 0.0 must be positive (beta of a beta-VAE"),
        ("train.kl_weight=inf", "train.kl_weight = inf must be a finite number"),
        (
            "data.binarized_mnist.x=1",
            "'binarized_mnist' is no data component with settings; those with settings are: "
            "image_folder (image_size, channels, skip_unreadable)",
        ),
        (
            "data.image_folder.size=3",
            "unknown setting data.image_folder.size; settings of data.image_folder are: "
            "image_size, channels, skip_unreadable",
        ),
    ],
)
def test_a_bad_setting_names_what_is_accepted(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


@pytest.fixture
def laplace_prior():
    """A prior with a setting of its own, registered the way a user's code would (and removed after)."""

    @PRIORS.register("test_laplace")
    class Laplace(StandardNormal):
        @dataclass(frozen=True)
        class Settings:
            width: float = 1.0

            def __post_init__(self) -> None:
                if self.width <= 0:
                    raise ValueError(f"width = {self.width} must be positive")

        def __init__(self, latent_dim: int, settings: Settings, **_) -> None:
            nn.Module.__init__(self)
            self.latent_dim = latent_dim
            self.register_buffer("width", torch.tensor(settings.width))

    yield Laplace
    del PRIORS._items["test_laplace"]


def test_a_new_component_brings_its_settings_without_editing_the_config(laplace_prior):
    cfg = load_config(None, ["model.prior=test_laplace", "model.test_laplace.width=2.5"])
    assert cfg.model.settings["test_laplace"] == {"width": 2.5}
    assert float(build_vae(cfg.model, 4).prior.width) == 2.5
    assert load_config(None, ["model.prior=test_laplace"]).model.settings["test_laplace"] == {"width": 1.0}
    with pytest.raises(ConfigError, match="model.test_laplace: width = -1.0 must be positive"):
        load_config(None, ["model.prior=test_laplace", "model.test_laplace.width=-1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.seed=-1", r"train.seed = -1 must be in \[0, 4294967295\] \(2\*\*32 - 1: NumPy takes 32-bit seeds\)"),
        ("data.seed=4294967296", r"data.seed = 4294967296 must be in \[0, 4294967295\]"),
        ("eval.seed=-5", r"eval.seed = -5 must be in \[0, 4294967295\]"),
        (
            "model.latent_dim=1000000",
            r"model.latent_dim = 1000000 is above the limit of 65,536 "
            r"\(pyro_vae.config.MAX_LATENT_DIM\)",
        ),
        (
            "model.hidden=[400,10000000]",
            r"model.hidden = \[400, 10000000\]: width 10000000 is above the limit of 65,536 "
            r"\(pyro_vae.config.MAX_WIDTH\)",
        ),
        (
            "train.batch_size=1000000000",
            r"train.batch_size = 1000000000 is above the limit of 1,048,576 "
            r"\(pyro_vae.config.MAX_BATCH_SIZE\)",
        ),
        ("train.eval_batch_size=10000000000", "train.eval_batch_size = 10000000000 is above the limit of 1,048,576"),
        ("train.num_particles=2000000", "train.num_particles = 2000000 is above the limit of 1,000,000"),
        ("train.iw_groups=10000000", "train.iw_groups = 10000000 is above the limit of 1,000,000"),
        (
            "eval.iwae_k=1000000000000",
            r"eval.iwae_k = 1000000000000 is above the limit of 1,000,000 "
            r"\(pyro_vae.config.MAX_SAMPLES\)",
        ),
    ],
)
def test_sizes_and_seeds_are_checked_against_their_limits(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_samples_per_image_are_limited_in_all():
    load_config(None, ["train.num_particles=1000", "train.iw_groups=1000"])  # 10**6: the limit itself
    with pytest.raises(
        ConfigError,
        match=r"train.num_particles x train.iw_groups = 1001 x 1000 = 1,001,000 samples "
        r"of z per image, above the limit of 1,000,000",
    ):
        load_config(None, ["train.num_particles=1001", "train.iw_groups=1000"])


def test_a_bad_seed_stops_train_before_the_run_folder_is_made(tmp_path, capsys):
    """-1 and 1e23 (a float in TOML, an integer of 77 bits once converted) were accepted by `config`,
    and failed in `train` after the run folder was written."""
    run = tmp_path / "run"
    for seed, shown in (("-1", "-1"), ("1e23", "99999999999999991611392")):
        (tmp_path / "c.toml").write_text(f"[train]\nseed = {seed}\n")
        message = f"train.seed = {shown} must be in [0, 4294967295]"
        assert main(["train", "--out", str(run), "--config", str(tmp_path / "c.toml"), "--set", "data.subset=10"]) == 2
        err = capsys.readouterr().err
        assert "pyro-vae train: error:" in err and message in err and "Traceback" not in err
        assert main(["config", "--config", str(tmp_path / "c.toml")]) == 2  # refused where `config` shows it, too
        assert message in capsys.readouterr().err
    assert not run.exists()


def test_unreadable_config_files_are_named(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "configs.toml"
    folder.mkdir()
    listed = tmp_path / "list.json"
    listed.write_text('[{"model": {"latent_dim": 2}}]')
    latin = tmp_path / "latin.toml"
    latin.write_bytes("[model]\n# Schr\xf6dinger\nlatent_dim = 2\n".encode("latin-1"))
    locked = tmp_path / "locked.toml"
    locked.write_text("[model]\nlatent_dim = 2\n")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the read fail as it does for everyone else
        real = Path.read_bytes
        monkeypatch.setattr(
            Path,
            "read_bytes",
            lambda self: (
                (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                if self.name == "locked.toml"
                else real(self)
            ),
        )
    cases = [
        (folder, f"config file '{folder}' is a folder; give the path of a .toml (or .json) file"),
        (
            listed,
            f"config file '{listed}' must hold a table of sections (a JSON object such as "
            '{"model": {"latent_dim": 2}}), not a JSON list',
        ),
        (
            latin,
            f"config file '{latin}' is not UTF-8 text (byte 0xf6 at offset 14); TOML and JSON files are "
            "UTF-8: save it as UTF-8",
        ),
        (locked, f"config file '{locked}' cannot be read (Permission denied); check its permissions"),
    ]
    try:
        for path, message in cases:
            with pytest.raises(ConfigError) as info:
                load_config(path)
            assert str(info.value) == message
            assert main(["config", "--config", str(path)]) == 2
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err
            assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
            assert message in capsys.readouterr().err and not (tmp_path / "run").exists()
    finally:
        locked.chmod(0o600)
