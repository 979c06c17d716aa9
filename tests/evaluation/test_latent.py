"""The latent-space tools: their maths on small cases, and every command on a run and on an
exported model, with bad arguments ending in exit 2 and a message."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save

from pyro_vae.cli import _print_summary, main
from pyro_vae.config import ModelConfig, load_config
from pyro_vae.data import load_data
from pyro_vae.evaluation import latent
from pyro_vae.evaluation.plots import make_figures
from pyro_vae.model import build_vae
from pyro_vae.runs.export import export_model, model_card
from pyro_vae.training.loop import fit
from tests.helpers import png_header_only, small_cfg


def _vae(latent_dim=3, d=12):
    torch.manual_seed(0)
    return build_vae(ModelConfig(latent_dim=latent_dim, hidden=(8,)), d).double().eval()


def test_slerp_ends_at_both_codes_and_keeps_the_norm_of_equal_norm_codes():
    a, b = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    path = latent.slerp(a, b, t)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(path.norm(dim=1), torch.full((7,), 3.0, dtype=torch.float64))
    torch.testing.assert_close(latent.slerp(a, 2 * a, t), (1 - t)[:, None] * a + t[:, None] * 2 * a)  # parallel


def test_active_units_finds_a_dimension_the_encoder_ignores():
    vae = _vae()
    with torch.no_grad():
        vae.encoder.head.weight[1].zero_()  # the mean of z_1 no longer depends on x
        vae.encoder.head.weight[[0, 2]] *= 20
    x = torch.rand(200, 12, dtype=torch.float64).round()
    units = latent.active_units(vae, x)
    assert units["activity"][1] < 1e-20 and units["active"] == 2 and units["order"][-1] == 1, units
    means = vae.encoder.loc_scale(x)[0]
    assert units["activity"][0] == pytest.approx(float(means[:, 0].detach().var()), rel=1e-9)


def test_traverse_changes_one_dimension_per_row():
    vae, z0 = _vae(), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    grid = latent.traverse(vae, z0, [2, 0], span=2.0, steps=5)
    values = torch.linspace(-2, 2, 5, dtype=torch.float64)
    expected = []
    for d in (2, 0):
        z = z0.repeat(5, 1)
        z[:, d] = values
        expected.append(vae.decode(z))
    torch.testing.assert_close(grid, torch.cat(expected))
    with pytest.raises(ValueError, match=r"--dims \[3\] out of range: the latent space has dimensions 0..2"):
        latent.traverse(vae, z0, [3])


def test_sample_at_a_temperature_scales_the_prior_draws():
    vae = _vae()
    torch.manual_seed(4)
    z = vae.prior(6).sample()
    torch.testing.assert_close(latent.sample(vae, 6, temperature=0.5, seed=4), vae.decode(0.5 * z))
    with pytest.raises(ValueError, match="temperature > 0"):
        latent.sample(vae, 6, temperature=0.0)


def test_encode_gives_the_guides_means_and_scales():
    vae, x = _vae(), torch.rand(30, 12, dtype=torch.float64).round()
    codes = latent.encode(vae, x, batch_size=7)
    loc, scale = vae.encoder.loc_scale(x)
    np.testing.assert_allclose(codes["loc"], loc.detach().numpy())
    np.testing.assert_allclose(codes["scale"], scale.detach().numpy())


def test_background_hint_names_both_tones_and_stays_quiet_when_they_agree():
    train = torch.zeros(100, 16)
    train[:, :2] = 1  # MNIST-like: white ink on black, mean pixel 0.125
    hint = latent.background_hint(torch.ones(2, 16), train)
    assert hint == (
        "your images are mostly light (mean pixel 1.00) and the training images mostly dark (mean 0.12): "
        "the background may be inverted relative to the training data"
    )
    assert latent.background_hint(torch.zeros(2, 16), train) is None
    assert latent.background_hint(torch.full((2, 16), 0.52), train) is None  # light-ish, but not 0.4 apart
    levels = (train * 255).to(torch.uint8)  # 8-bit levels are read as levels / 255
    assert latent.background_hint(torch.ones(2, 16), levels) == hint


def test_read_images(tmp_path):
    levels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    Image.fromarray(levels).save(tmp_path / "a.png")
    x = latent.read_images([tmp_path / "a.png"], (28, 28), binarize=False)
    np.testing.assert_allclose(x[0].numpy(), levels.reshape(-1) / 255, rtol=1e-6)
    assert set(latent.read_images([tmp_path / "a.png"], (28, 28), binarize=True).unique().tolist()) == {0.0, 1.0}
    inverted = latent.read_images([tmp_path / "a.png"], (28, 28), binarize=False, invert=True)
    np.testing.assert_allclose(inverted[0].numpy(), 1 - levels.reshape(-1) / 255, rtol=1e-6, atol=1e-7)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="b.png is 30x20 pixels; the model takes 28x28 grey images"):
        latent.read_images([tmp_path / "b.png"], (28, 28), binarize=False)
    with pytest.raises(ValueError, match="does not exist"):
        latent.read_images([tmp_path / "none.png"], (28, 28), binarize=False)
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 2] = (255, 0, 128)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    x = latent.read_images([tmp_path / "c.png"], (3, 4, 5), binarize=False)[0].reshape(3, 4, 5)
    assert x[0, 1, 2] == 1 and x[1, 1, 2] == 0 and abs(float(x[2, 1, 2]) - 128 / 255) < 1e-6 and x.sum() < 1.6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    fit(small_cfg("model.latent_dim=3"), root / "run", progress=False, figures=False)
    export_model(root / "run", root / "model")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "mine.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "big.png")
    return root


@pytest.mark.parametrize("source", ["run", "model"])
def test_every_latent_command_on_a_run_and_a_model(trained, source, tmp_path, capsys):
    where, out = str(trained / source), tmp_path / "out"
    common = ["--device", "cpu", "--out", str(out)]
    assert main(["sample", where, "--n", "9", "--temperature", "0.8", *common]) == 0
    assert main(["interpolate", where, "--between", "0", "7", "--steps", "5", *common]) == 0
    assert main(["traverse", where, *common]) == 0
    assert main(["traverse", where, "--dims", "2", "0", "--image", "3", *common]) == 0
    assert main(["encode", where, "--split", "test", *common]) == 0
    assert main(["reconstruct", where, str(trained / "mine.png"), "--invert", *common]) == 0
    assert main(["interpolate", where, "--between", str(trained / "mine.png"), str(trained / "mine.png"), *common]) == 0
    assert main(["encode", where, "--data", "valid", "--file", str(out / "v.npz"), *common]) == 0
    assert np.load(out / "v.npz")["loc"].shape[1] == 3
    figures = (
        "samples_t0.8_n9_seed0.png",
        "interpolate_0_7_steps5.png",
        "traverse_z_origin_top10_span3.png",
        "traverse_z_image3_dims2-0_span3.png",  # a second traverse does not overwrite the first
        "reconstruct_mine.png",
        "interpolate_mine_mine_steps10.png",
    )
    for figure in figures:
        assert (out / figure).stat().st_size > 0, figure
    assert {"traverse_z_origin_top10_span3.json", "traverse_z_image3_dims2-0_span3.json"} <= {
        f.name for f in out.iterdir()
    }
    printed = capsys.readouterr().out
    # a black image given --invert becomes white paper, against the training data's black: a hint
    # to leave --invert out; the same image as it is (interpolate) agrees with the data: no hint
    assert printed.count("background may be inverted relative to the training data; if so, leave out --invert") == 1
    assert "add --invert" not in printed
    codes = np.load(out / "codes_test.npz")
    assert codes["loc"].shape == codes["scale"].shape == (codes["labels"].shape[0], 3)
    assert "active units (Cov_x E[z|x] > 0.01" in printed
    bad = [
        (["interpolate", where, "--between", "0", "100000"], "test image 100000 is out of range"),
        (["traverse", where, "--dims", "7"], "--dims [7] out of range"),
        (["reconstruct", where, str(trained / "big.png")], "big.png is 32x32 pixels"),
        (
            ["interpolate", where, "--between", str(trained / "big.png"), str(trained / "mine.png")],
            "big.png is 32x32 pixels",
        ),
        (["interpolate", where, "--between", "0", str(trained / "mine.png")], "not one of each"),
        (["reconstruct", where, str(trained / "absent.png")], "absent.png does not exist"),
        (["sample", str(tmp_path / "nothing")], "does not exist"),
    ]
    for argv, message in bad:
        assert main([*argv, *common]) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_read_images_scales_16_bit_composites_alpha_and_refuses_a_bomb(tmp_path, caplog):
    """The files the latent commands read go through the image folders' reader (open_image)."""
    levels = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369  # 0 .. 65535
    Image.fromarray(levels).save(tmp_path / "deep.png")
    x = latent.read_images([tmp_path / "deep.png"], (4, 4), binarize=False)
    np.testing.assert_allclose(x[0].numpy(), np.round(levels.reshape(-1) / 257) / 255, rtol=1e-6)
    ink = np.zeros((4, 4, 2), np.uint8)  # black ink on the right, transparent on the left
    ink[:, 2:, 1] = 255
    Image.fromarray(ink, "LA").save(tmp_path / "ink.png")
    with caplog.at_level("WARNING"):
        inverted = latent.read_images(
            [tmp_path / "ink.png", tmp_path / "deep.png"], (4, 4), binarize=False, invert=True
        )[0].reshape(4, 4)
    assert inverted[:, :2].max() == 0 and inverted[:, 2:].min() == 1  # transparent = white paper: no ink once inverted
    assert "1 of the 2 image files have transparent pixels, composited onto white paper (--invert)" in caplog.text
    assert latent.read_images([tmp_path / "ink.png"], (4, 4), binarize=False).max() == 0  # onto black
    bomb = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    with pytest.raises(ValueError, match=rf"{bomb} declares 2,500,000,000 pixels, more than PIL's limit"):
        latent.read_images([bomb], (28, 28), binarize=False)


# ---------------------------------------------------------------- structures of several latent layers


def _hierarchical(*extra, d=12):
    cfg = load_config(None, ["model.structure=hierarchical", "model.hidden=8", "model.latent_dim=3", *extra]).model
    torch.manual_seed(0)
    return build_vae(cfg, d).double().eval()


def test_traverse_varies_one_layer_and_follows_it_below():
    h, x = _hierarchical(), torch.rand(6, 12, dtype=torch.float64).round()
    codes = {name: z[0] for name, z in h.point(x).items()}
    grid = latent.traverse(h, codes, [1], span=2.0, steps=4, layer="z1")
    z1 = codes["z1"].repeat(4, 1)
    z1[:, 1] = torch.linspace(-2, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(grid, h.decode({"z2": codes["z2"].repeat(4, 1), "z1": z1}))
    top = latent.traverse(h, codes, [0, 2], span=1.0, steps=3)  # the top layer by default; z1 follows it
    z2 = codes["z2"].repeat(3, 1)
    z2[:, 0] = torch.linspace(-1, 1, 3, dtype=torch.float64)
    torch.testing.assert_close(top[:3], h.decode({"z2": z2}))
    torch.testing.assert_close(latent.traverse(h, codes["z2"], [0], 1.0, 3), top[:3])  # a tensor: the layer's code
    with pytest.raises(ValueError, match=r"--dims \[3\] out of range: layer z1 has dimensions 0..2"):
        latent.traverse(h, codes, [3], layer="z1")
    with pytest.raises(ValueError, match="traversing z1 needs the codes of z2: its own and those of the layers above"):
        latent.traverse(h, {"z1": codes["z1"]}, [0], layer="z1")
    with pytest.raises(ValueError, match="--layer z3 is not a latent layer of this model; its layers .*: z2, z1"):
        latent.traverse(h, codes, [0], layer="z3")


def test_interpolate_sample_encode_and_active_units_of_every_layer():
    h = _hierarchical("model.hierarchical.latent_dims=[3,2]")
    x = torch.rand(200, 12, dtype=torch.float64).round()
    paths = latent.interpolate(h, x[0], x[1], steps=5)
    torch.testing.assert_close(paths["linear"][[0, -1]], h.reconstruct(x[:2]))  # the ends: both images' codes
    torch.testing.assert_close(paths["spherical"][[0, -1]], h.reconstruct(x[:2]))
    torch.manual_seed(4)
    expected = h.decode(h.sample_latents(6, 0.5))
    torch.testing.assert_close(latent.sample(h, 6, temperature=0.5, seed=4), expected)
    codes = latent.encode(h, x, batch_size=70)
    assert sorted(codes) == ["z1_loc", "z1_scale", "z2_loc", "z2_scale"]
    assert codes["z2_loc"].shape == codes["z2_scale"].shape == (200, 2) and codes["z1_loc"].shape == (200, 3)
    np.testing.assert_allclose(codes["z2_loc"], h.point(x)["z2"].detach().numpy())
    with torch.no_grad():
        h.top.head.weight[1].zero_()  # the mean of z2_1 no longer depends on x
        h.lower[0].net[-1].weight[0].zero_()  # nor that of z1_0 on x or z2
    units = latent.active_units_per_layer(h, x)
    assert list(units) == ["z2", "z1"] and units["z2"]["layer"] == "z2"
    assert units["z2"]["activity"][1] < 1e-20 and units["z1"]["activity"][0] < 1e-20
    assert units["z2"]["order"][-1] == 1 and units["z1"]["order"][-1] == 0
    assert latent.active_units(h, x) == units["z2"] and latent.active_units(h, x, "z1") == units["z1"]


def _export_by_hand(cfg, folder):
    """An exported model folder of an untrained model of ``cfg`` (what pyro-vae export writes)."""
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_vae(cfg.model, data.data_dim, data.image_shape)
    weights = save({n: t.contiguous() for n, t in model.state_dict().items()})
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(weights)
    record = {
        "format": "pyro-vae-model",
        "format_version": 1,
        "pyro_vae": "test",
        "config": cfg.to_dict(),
        "data_dim": data.data_dim,
        "image_shape": list(data.image_shape),
        "weights": {"file": "model.safetensors", "sha256": hashlib.sha256(weights).hexdigest(), "checkpoint": "best"},
        "plugins": [],
        "final": {},
        "objective": "",
        "layers": model.layers(),
    }
    (folder / "config.json").write_text(json.dumps(record))
    return record, model, data


def test_every_latent_command_on_a_hierarchical_model(tmp_path, capsys):
    cfg = small_cfg("model.structure=hierarchical", "model.hierarchical.latent_dims=[3,2]")
    record, model, data = _export_by_hand(cfg, tmp_path / "model")
    where, out = str(tmp_path / "model"), tmp_path / "out"
    common = ["--device", "cpu", "--out", str(out)]
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "mine.png")
    assert main(["sample", where, "--n", "4", "--temperature", "0.8", *common]) == 0
    assert main(["interpolate", where, "--between", "0", "7", "--steps", "4", *common]) == 0
    assert main(["traverse", where, *common]) == 0
    printed = capsys.readouterr().out
    assert "active units (Cov_x E[z|x] > 0.01, 384 test images): z2 " in printed and " of 2, z1 " in printed
    assert json.loads((out / "traverse_z2_origin_top10_span3.json").read_text())["layer"] == "z2"
    assert main(["traverse", where, "--layer", "z1", "--dims", "2", "0", "--image", "3", *common]) == 0
    numbers = json.loads((out / "traverse_z1_image3_dims2-0_span3.json").read_text())
    assert numbers["layer"] == "z1" and numbers["dims"] == [2, 0] and sorted(numbers["layers"]) == ["z1", "z2"]
    assert main(["encode", where, *common]) == 0
    codes = np.load(out / "codes_test.npz")
    assert codes["z2_loc"].shape == (384, 2) and codes["z1_scale"].shape == (384, 3) and "labels" in codes
    assert main(["reconstruct", where, str(tmp_path / "mine.png"), *common]) == 0
    figures = (
        "samples_t0.8_n4_seed0.png",
        "interpolate_0_7_steps4.png",
        "traverse_z2_origin_top10_span3.png",
        "traverse_z1_image3_dims2-0_span3.png",
        "reconstruct_mine.png",
    )
    for figure in figures:
        assert (out / figure).stat().st_size > 0, figure
    for argv, message in [
        (
            ["traverse", where, "--layer", "z3"],
            "--layer z3 is not a latent layer of this model; its layers (top first): z2, z1",
        ),
        (["traverse", where, "--layer", "z2", "--dims", "2"], "--dims [2] out of range: layer z2 has dimensions 0..1"),
    ]:
        assert main([*argv, *common]) == 2, argv
        assert message in capsys.readouterr().err, argv
    card = model_card(record, tmp_path / "run", "pyro-vae export")
    assert "structure `hierarchical`" in card and "latent layers (top first)\nz2 2, z1 3" in card
    assert "(structure `vae`)" in model_card(
        {**record, "config": small_cfg().to_dict(), "layers": {"z": 2}}, tmp_path / "run", ""
    )
    paths = make_figures(tmp_path / "model", model, data)
    assert sorted(p.name for p in paths) == ["latents.png", "latents_z1.png", "reconstructions.png", "samples.png"]


def test_a_hierarchical_run_trains_and_opens(tmp_path, capsys):
    """fit, export, and the commands on the run folder (the objectives side of issue 35 trains it)."""
    fit(small_cfg("model.structure=hierarchical", "train.epochs=1"), tmp_path / "run", progress=False, figures=True)
    assert (tmp_path / "run" / "figures" / "latents_z1.png").exists()
    assert not (tmp_path / "run" / "figures" / "manifold.png").exists()  # two 2-D layers: no manifold grid
    export_model(tmp_path / "run", tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text()
    assert "latent layers (top first)\nz2 2, z1 2" in card
    for where in (tmp_path / "run", tmp_path / "model"):
        assert main(["traverse", str(where), "--layer", "z1", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
        assert main(["encode", str(where), "--device", "cpu", "--out", str(tmp_path / "o")]) == 0


def test_a_mixture_run_trains_clusters_and_opens(tmp_path, capsys):
    """fit by enumeration reports the test clusters against the labels, draws samples per
    component, exports, and the latent commands work on its continuous layer."""
    run, model = tmp_path / "run", tmp_path / "model"
    cfg = small_cfg("model.structure=mixture", "model.mixture.components=3", "train.elbo=enum", "train.epochs=1")
    summary = fit(cfg, run, progress=False, figures=True)
    clustering = summary["clustering"]
    assert 0 < clustering["accuracy"] <= 1 and 0 <= clustering["nmi"] <= 1
    assert clustering["components"] == 3 and 1 <= clustering["clusters_used"] <= 3
    assert clustering["images"] == load_data(cfg.data).test.shape[0]
    _print_summary({**summary, "wall_time_s": 1.0, "images_per_s": 1.0}, run)
    printed = capsys.readouterr().out
    assert f"test clustering: accuracy {clustering['accuracy']:.1%}, NMI {clustering['nmi']:.3f} (" in printed
    assert (run / "figures" / "components.png").stat().st_size > 0
    assert main(["evaluate", str(run), "--device", "cpu", "--k", "3"]) == 0
    assert main(["compare", str(run), "--grad-images", "4", "--grad-reps", "3", "--device", "cpu"]) == 0
    assert "enumerated, exact in c (enum)" in capsys.readouterr().out
    assert (run / "compare" / "figures" / "discrete_lab.png").stat().st_size > 0
    export_model(run, model)
    assert "structure `mixture`" in (model / "README.md").read_text()
    for where in (run, model):
        assert main(["traverse", str(where), "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
        assert main(["sample", str(where), "--n", "4", "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
