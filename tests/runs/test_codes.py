"""The latent codes of a trained model as a data set (``data.name = "codes"``, M1 + M2)."""

import math

import pytest
import torch
from PIL import Image

from pyro_vae import ConfigError, export_model, fit, load_data, open_model
from pyro_vae.cli import main
from pyro_vae.config import DataConfig
from pyro_vae.data import SPLITS
from pyro_vae.evaluation.plots import make_figures
from pyro_vae.runs import codes as codes_module
from tests.helpers import small_cfg

SUBSET = "data.subset=384"  # small_cfg's: the 100-label protocol needs 10 test images per class in each half


@pytest.fixture(scope="module")
def m1(tmp_path_factory):
    """A two-layer model trained for one epoch without labels."""
    run = tmp_path_factory.mktemp("m1") / "run"
    fit(
        small_cfg("model.structure=hierarchical", "model.hierarchical.latent_dims=[3,2]", "train.epochs=1"),
        run,
        progress=False,
        figures=False,
    )
    return run


def _phi_of_standardised(means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    centre, spread = means["train"].mean(0), means["train"].std(0)
    return {s: 0.5 * (1 + torch.erf((m - centre) / (spread * math.sqrt(2)))) for s, m in means.items()}


def test_codes_are_every_layers_mean_of_q_through_the_normal_cdf_top_layer_first(m1):
    trained = open_model(m1, device="cpu")
    means = {}
    with torch.no_grad():
        for s in SPLITS:
            q = trained.vae.encode(getattr(trained.data, s).double().float())
            assert list(q) == ["z2", "z1"]  # top first
            means[s] = torch.cat([q["z2"][0], q["z1"][0]], dim=1).double()
    expected = _phi_of_standardised(means)
    out = load_data(DataConfig(name="codes", root=str(m1)))
    assert out.image_shape == (1, 5) and out.data_dim == 5
    for s in SPLITS:
        got = getattr(out, s)
        assert got.dtype == torch.float32 and got.shape == (getattr(trained.data, s).shape[0], 5)
        torch.testing.assert_close(got.double(), expected[s], atol=1e-6, rtol=0)
        assert 0 <= float(got.min()) and float(got.max()) <= 1
    assert out.source.startswith(f"codes of {m1.resolve()} (best weights")


def test_an_exported_model_gives_the_same_codes_as_its_run(m1, tmp_path):
    export_model(m1, tmp_path / "exported")
    run, exported = (load_data(DataConfig(name="codes", root=str(r))) for r in (m1, tmp_path / "exported"))
    assert all(torch.equal(getattr(run, s), getattr(exported, s)) for s in SPLITS)
    assert "(exported weights;" in exported.source


def test_codes_carry_the_sets_labels_under_the_same_protocol_as_its_images(m1):
    images = load_data(DataConfig(subset=384, labels=100, seed=3))
    out = load_data(DataConfig(name="codes", root=str(m1), labels=100, seed=3))
    assert torch.equal(out.train_labels, images.train_labels) and torch.equal(out.test_labels, images.test_labels)
    assert out.label_protocol.startswith(f"offline (codes of {m1.resolve()}")
    assert (out.train_labels >= 0).sum() == 100 and out.train.shape[0] == images.train.shape[0]


def test_a_model_trained_with_labels_is_refused_as_m1(tmp_path):
    run = tmp_path / "m2"
    cfg = small_cfg(SUBSET, "model.structure=semi_supervised", "data.labels=100", "train.elbo=enum", "train.epochs=1")
    fit(cfg, run, progress=False, figures=False)
    with pytest.raises(ConfigError, match=r"was trained with data.labels = 100: the labels it saw would reach"):
        load_data(DataConfig(name="codes", root=str(run)))


@pytest.mark.parametrize("root", ["", "no/such/folder"])
def test_codes_without_a_model_folder_say_what_to_give(tmp_path, root):
    with pytest.raises(ValueError, match=r"the codes data set needs a trained model, a run folder or an exported"):
        load_data(DataConfig(name="codes", root=root))


def test_a_folder_that_is_not_a_model_is_refused_by_open_model(tmp_path):
    with pytest.raises(ValueError, match="neither an exported model"):
        load_data(DataConfig(name="codes", root=str(tmp_path)))


def test_a_cycle_of_codes_sets_is_an_error_not_a_recursion(m1, monkeypatch):
    monkeypatch.setattr(codes_module, "_OPENING", {m1.resolve()})
    with pytest.raises(ValueError, match=r"the model's own data are the codes of itself \(a cycle\)"):
        load_data(DataConfig(name="codes", root=str(m1)))


def test_m2_trains_on_the_codes_and_opens_again(m1, tmp_path):
    cfg = small_cfg(
        "data.name=codes",
        f"data.root={m1}",
        "data.labels=100",
        "model.structure=semi_supervised",
        "model.likelihood=gaussian",
        "train.elbo=enum",
        "train.epochs=1",
    )
    summary = fit(cfg, tmp_path / "m1m2", progress=False, figures=False)
    assert 0 <= summary["classification"]["test_error"] <= 1
    assert summary["labels"]["protocol"].startswith("offline (codes of")
    reopened = open_model(tmp_path / "m1m2", device="cpu")
    assert reopened.data.data_dim == 5 and reopened.config.data.name == "codes"


def test_codes_are_drawn_as_the_pictures_the_model_decodes_from_them(m1):
    trained = open_model(m1, device="cpu")
    out = load_data(DataConfig(name="codes", root=str(m1)))
    rows = out.test[:5]
    pictures, shape = out.draw(rows)
    with torch.no_grad():
        q = trained.vae.encode(trained.data.test[:5])
        expected = trained.vae.decode({name: loc for name, (loc, _) in q.items()})
    assert shape == trained.data.image_shape and pictures.shape == (5, 784)
    torch.testing.assert_close(pictures, expected, atol=1e-4, rtol=0)  # the CDF undone in float64, up to float32
    plain = load_data(DataConfig(subset=384))
    assert plain.render is None and plain.draw(plain.test[:2])[1] == plain.image_shape
    assert load_data(DataConfig(name="codes", root=str(m1), labels=100)).render is not None  # kept by the protocol


def test_a_model_of_codes_draws_its_figures_as_pictures_and_refuses_image_files(m1, tmp_path, capsys):
    cfg = small_cfg(
        "data.name=codes", f"data.root={m1}", "data.labels=100", "model.structure=semi_supervised",
        "model.likelihood=gaussian", "train.elbo=enum", "train.epochs=1", "train.tensorboard=true",
    )  # fmt: skip
    run = tmp_path / "m1m2"
    fit(cfg, run, progress=False, figures=False)
    trained = open_model(run, device="cpu")
    paths = make_figures(run, trained.vae, trained.data)
    assert {p.name for p in paths} >= {"reconstructions.png", "samples.png", "styles.png"}
    with Image.open(run / "figures" / "styles.png") as styles:
        assert styles.width > 300  # ten 28-pixel pictures a row, not ten 1 x 5 strips
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(image)
    assert main(["reconstruct", str(run), str(image)]) == 2
    assert "models the latent codes of another model" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "4"]) == 0 and (run / "latent").is_dir()
