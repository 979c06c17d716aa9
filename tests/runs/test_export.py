"""Exported models: safetensors weights, a config that rebuilds the VAE, checks on every byte and
tensor, no pickle anywhere, and every command that takes a run also taking a model."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from pyro_vae.cli import main
from pyro_vae.data.pixels import evenly_spaced
from pyro_vae.evaluation.metrics import evaluate
from pyro_vae.plugins import isolated
from pyro_vae.runs import export
from pyro_vae.runs.export import ModelFileError, export_model
from pyro_vae.runs.trained import TrainedModel, open_model
from pyro_vae.training.loop import fit
from tests.helpers import ROOT, small_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    fit(small_cfg(), run, progress=False, figures=False)
    return run


@pytest.fixture
def model(run, tmp_path):
    export_model(run, tmp_path / "model")
    return tmp_path / "model"


def _test_neg_elbo(cfg, vae, data):
    x = data.test[evenly_spaced(data.test.shape[0], cfg.eval.iwae_images)]
    return evaluate(vae, x, k=cfg.eval.iwae_k, batch_size=100, seed=cfg.eval.seed)["neg_elbo"].mean


def test_export_then_load_reproduces_the_runs_test_elbo(run, model):
    summary = json.loads((run / "summary.json").read_text())
    opened = open_model(model, device="cpu")
    assert _test_neg_elbo(opened.config, opened.vae, opened.data) == pytest.approx(
        summary["final"]["test_neg_elbo"]["mean"], rel=1e-12
    )
    record = json.loads((model / "config.json").read_text())
    assert record["format"] == "pyro-vae-model" and len(record["weights"]["sha256"]) == 64
    card = (model / "README.md").read_text()
    assert f"{summary['final']['test_nll']['mean']:.2f} ± {summary['final']['test_nll']['se']:.2f}" in card
    assert "open_model" in card


def test_loading_never_unpickles(model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model loader unpickled something")

    for module, name in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, refuse)
    vae = open_model(model, device="cpu").vae
    assert vae.sample(2).shape == (2, 784)


def test_open_model_gives_a_trained_model_of_a_run_or_an_export(run, model):
    best = open_model(run, device="cpu")
    assert isinstance(best, TrainedModel)
    assert (best.kind, best.which, best.source) == ("run", "best", run)
    assert open_model(str(run), "last", device="cpu").which == "last"
    exported = open_model(str(model), device="cpu")
    assert (exported.kind, exported.which, exported.source) == ("export", None, model)
    assert exported.config == best.config and exported.config.model.latent_dim == 2
    for opened in (best, exported):
        assert not opened.vae.training and next(opened.vae.parameters()).device.type == "cpu"
        assert opened.data is opened.data and opened.data.data_dim == 784  # read once, then kept
    for (name, a), (_, b) in zip(best.vae.state_dict().items(), exported.vae.state_dict().items()):
        assert torch.equal(a, b), name  # the export holds the run's best weights
    with pytest.raises(dataclasses.FrozenInstanceError):
        exported.vae = best.vae


def test_an_exported_model_opens_without_its_data_and_data_then_names_the_problem(model, tmp_path):
    nowhere = tmp_path / "nowhere.npz"
    _edit_record(model, lambda r: r["config"]["data"].update(name="array", root=str(nowhere)))
    opened = open_model(model, device="cpu")  # the weights need no data
    assert opened.vae.sample(2).shape == (2, 784)
    for _ in range(2):  # a failure is not kept: each use says so again
        with pytest.raises(ValueError) as info:
            _ = opened.data
        message = str(info.value)
        assert message.startswith(f"the data of the export folder {model} does not load: ") and str(nowhere) in message


def test_a_checkpoint_applies_to_a_run_only(run, model, capsys):
    with pytest.raises(ValueError, match="exported models hold one set of weights") as info:
        open_model(model, "last", device="cpu")
    assert str(model) in str(info.value) and "--checkpoint last" in str(info.value)
    for source in (run, model):
        with pytest.raises(ValueError, match="checkpoint must be 'best' or 'last', got 'middle'"):
            open_model(source, "middle", device="cpu")
    assert main(["evaluate", str(model), "--checkpoint", "last", "--k", "2", "--device", "cpu"]) == 2
    assert "exported models hold one set of weights" in capsys.readouterr().err
    assert not list(model.glob("evaluation_*.json"))


def _rewrite(model, tensors):
    """Replace the weights with ``tensors`` and record their new checksum (a consistent folder)."""
    save_file(tensors, str(model / "model.safetensors"))
    import hashlib

    record = json.loads((model / "config.json").read_text())
    record["weights"]["sha256"] = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    (model / "config.json").write_text(json.dumps(record))


def test_changed_bytes_and_mismatched_tensors_are_refused(model):
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ModelFileError, match="changed since it was exported: its sha256 is"):
        open_model(model, device="cpu")
    weights.write_bytes(original)
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    _rewrite(model, {**tensors, name: torch.zeros(3, 3)})
    with pytest.raises(ModelFileError, match=rf"tensor {name} has shape \(3, 3\), the VAE needs"):
        open_model(model, device="cpu")
    _rewrite(model, {k: v for k, v in tensors.items() if k != name})
    with pytest.raises(ModelFileError, match=rf"missing tensor {name}"):
        open_model(model, device="cpu")
    _rewrite(model, {**tensors, "intruder": torch.zeros(1)})
    with pytest.raises(ModelFileError, match=r"extra tensor intruder \(1,\)"):
        open_model(model, device="cpu")
    weights.unlink()
    with pytest.raises(ModelFileError, match="model.safetensors is missing"):
        open_model(model, device="cpu")


def test_a_malformed_config_json_is_refused(model):
    path = model / "config.json"
    record = json.loads(path.read_text())
    outside = {**record, "weights": {**record["weights"], "file": "../x"}}
    no_dim = {k: v for k, v in record.items() if k != "data_dim"}
    for broken, message in [
        ({**record, "format": "x"}, "is not a pyro-vae model file"),
        ({**record, "format_version": 9}, "has format version 9"),
        (outside, "must name a file beside it"),
        (no_dim, r"lacks \['data_dim'\]"),
    ]:
        path.write_text(json.dumps(broken))
        with pytest.raises(ModelFileError, match=message):
            open_model(model, device="cpu")
    path.write_text("{not json")
    with pytest.raises(ModelFileError, match="is not valid JSON"):
        open_model(model, device="cpu")


def test_commands_take_a_model_or_a_run(run, model, tmp_path, capsys):
    assert main(["export", str(run), "--out", str(tmp_path / "cli_model")]) == 0
    assert (tmp_path / "cli_model" / "model.safetensors").is_file()
    for source in (run, model):
        assert main(["evaluate", str(source), "--k", "5", "--images", "30", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("test neg_elbo")]
    assert len(lines) == 2 and lines[0] == lines[1], lines  # the same numbers from both
    assert main(["plot", str(model), "--device", "cpu"]) == 0
    assert (model / "figures" / "samples.png").stat().st_size > 0
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ModelFileError, match="is neither an exported model"):
        open_model(tmp_path)


def test_a_model_made_with_a_plugin_needs_it(tmp_path, capsys):
    laplace = str(ROOT / "examples" / "plugins" / "laplace_prior.py")
    with isolated():
        values = (
            "data.subset=256",
            "model.latent_dim=2",
            "model.hidden=8",
            "train.epochs=1",
            "eval.iwae_k=2",
            "train.device=cpu",
            "model.prior=laplace",
        )
        sets = [a for s in values for a in ("--set", s)]
        assert (
            main(["train", "--out", str(tmp_path / "run"), "--no-progress", "--no-figures", "--plugin", laplace, *sets])
            == 0
        )
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model"), "--plugin", laplace]) == 0
    with isolated(fresh=True):
        assert main(["evaluate", str(tmp_path / "model"), "--k", "2", "--images", "5"]) == 2
        assert f"model {tmp_path / 'model'} needs plugins that were not given: {laplace}" in capsys.readouterr().err
        assert (
            main(
                [
                    "evaluate",
                    str(tmp_path / "model"),
                    "--k",
                    "2",
                    "--images",
                    "5",
                    "--no-progress",
                    "--device",
                    "cpu",
                    "--plugin",
                    laplace,
                ]
            )
            == 0
        )


def test_a_gpu_run_exports_and_loads_on_the_cpu(tmp_path):
    """The H100 run folder of shared/fixtures (format 1 checkpoints): exported here, its model
    holds exactly the run's weights and gives the run's test negative ELBO on the CPU."""
    import shutil

    fixture = ROOT.parent / "shared" / "fixtures" / "h100_run_format1"
    if not fixture.is_dir():
        pytest.skip(f"{fixture} (the project's shared fixtures) is not beside the checkout")
    shutil.copytree(fixture, tmp_path / "h100")
    export_model(tmp_path / "h100", tmp_path / "model")
    opened = open_model(tmp_path / "h100", device="cpu")
    cfg, from_run, data = opened.config, opened.vae, opened.data
    from_model = open_model(tmp_path / "model", device="cpu").vae
    for (name, a), (_, b) in zip(from_run.state_dict().items(), from_model.state_dict().items()):
        assert torch.equal(a, b), name
    x = data.test[evenly_spaced(data.test.shape[0], 500)]
    same = [
        evaluate(vae, x, k=cfg.eval.iwae_k, batch_size=100, seed=cfg.eval.seed)["neg_elbo"].mean
        for vae in (from_model, from_run)
    ]
    assert same[0] == same[1], same


@pytest.mark.cuda
def test_a_model_exported_on_the_cpu_evaluates_on_cuda_like_on_the_cpu(run, model):
    opened = open_model(model, device="cpu")
    cfg, cpu, data = opened.config, opened.vae, opened.data
    gpu = open_model(model, device="cuda").vae
    assert next(gpu.parameters()).device.type == "cuda"
    x = data.test[:200]
    a = evaluate(cpu, x, batch_size=100, seed=cfg.eval.seed)["neg_elbo"]
    b = evaluate(gpu, x.cuda(), batch_size=100, seed=cfg.eval.seed)["neg_elbo"]
    # different random streams on the two devices: agreement within the Monte-Carlo error of a difference
    assert abs(a.mean - b.mean) < 5 * (a.se**2 + b.se**2) ** 0.5, (a, b)


def _edit_record(model, edit):
    path = model / "config.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def _no_loading(monkeypatch):
    """Fail the test if the loader reads a tensor or builds a real VAE: a refusal must come first."""
    monkeypatch.setattr(export, "load_file", lambda *a, **k: pytest.fail("a tensor was loaded before the refusal"))
    monkeypatch.setattr(export, "build_vae", lambda *a, **k: pytest.fail("the VAE was built before the refusal"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda r: r["config"]["model"].update(latent_dim=10**6),
            r"its config does not load: model.latent_dim = 1000000 is above the limit of 65,536 "
            r"\(pyro_vae.config.MAX_LATENT_DIM\)",
        ),
        (
            lambda r: r["config"]["model"].update(hidden=[60000, 60000, 60000]),
            r"config.json: the VAE would hold [\d,]+ parameters and buffers, above the limit of 536,870,912 "
            r"\(pyro_vae.config.MAX_MODEL_SIZE, 2 GiB as float32\): model.latent_dim = 2, "
            r"model.hidden = \[60000, 60000, 60000\]",
        ),
        (
            lambda r: r.update(data_dim=10**12, image_shape=[10**6, 10**6]),
            r"the VAE would hold [\d,]+ parameters and buffers, above the limit .* images of 1,000,000,000,000 values",
        ),
        (lambda r: r.update(data_dim="784"), r"config.json: data_dim = '784' must be a positive integer"),
        (
            lambda r: r.update(image_shape=[28, 29]),
            r"image_shape = \[28, 29\] must be \[H, W\] or \[C, H, W\], positive "
            "integers whose product is data_dim = 784",
        ),
    ],
)
def test_sizes_in_a_model_file_are_checked_before_anything_is_allocated(model, monkeypatch, edit, message):
    _edit_record(model, edit)
    _no_loading(monkeypatch)
    with pytest.raises(ModelFileError, match=message):
        open_model(model, device="cpu")


def test_tensor_shapes_are_compared_from_the_header_before_loading(model, monkeypatch):
    tensors = load_file(str(model / "model.safetensors"))
    name = sorted(tensors)[0]
    _rewrite(model, {**tensors, name: torch.zeros(3, 3)})
    _no_loading(monkeypatch)
    with pytest.raises(ModelFileError, match=rf"tensor {name} has shape \(3, 3\), the VAE needs"):
        open_model(model, device="cpu")
    monkeypatch.undo()
    _rewrite(model, {**tensors, name: tensors[name].double()})
    with pytest.raises(ModelFileError, match=rf"tensor {name} holds F64, the VAE needs torch.float32"):
        open_model(model, device="cpu")


def test_nan_weights_are_refused_by_name_not_by_a_tensor_dump(model, capsys):
    tensors = load_file(str(model / "model.safetensors"))
    name = max(tensors, key=lambda n: tensors[n].numel())  # a weight matrix
    poisoned = tensors[name].clone()
    poisoned.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    _rewrite(model, {**tensors, name: poisoned})
    with pytest.raises(ModelFileError) as info:
        open_model(model, device="cpu")
    message = str(info.value)
    assert f"tensor {name} has 3 NaN or infinite value(s) of {poisoned.numel():,}" in message
    assert "tensor([" not in message and len(message) < 400 and "export the model again" in message
    assert main(["evaluate", str(model), "--k", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"tensor {name} has 3 NaN" in err and "Traceback" not in err
    assert not list(model.glob("evaluation_*.json"))
