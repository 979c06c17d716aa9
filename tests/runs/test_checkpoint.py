"""Safe checkpoints: only plain values are written and read (``weights_only``), a file whose
unpickling would run code is refused by every loading path before anything in it runs, format 1
still loads, and runs move between a GPU machine and a CPU-only one."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import stat

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.runs import checkpoint as C
from pyro_vae.runs.folder import saved_device
from pyro_vae.runs.trained import open_model
from pyro_vae.training import loop as T
from tests.helpers import ROOT, small_cfg

FIXTURE = ROOT.parent / "shared" / "fixtures" / "h100_run_format1"
SMALL_LAB = [
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
    "--no-progress",
]


class _RunsCode:
    """Unpickling this calls ``os.system``: the shape of a malicious checkpoint."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious(path, marker, as_zip: bool = True) -> None:
    state = {"format_version": C.FORMAT_VERSION, "model": _RunsCode(marker), "config": {}}
    if as_zip:
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))


def test_the_malicious_file_would_run_code_if_unpickled(tmp_path):
    """The test below is only meaningful if the file really runs code when unpickled."""
    marker = tmp_path / "ran"
    _malicious(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    T.fit(small_cfg("train.epochs=1"), run, progress=False, figures=False)
    return run


@pytest.mark.parametrize("as_zip", [True, False], ids=["torch.save", "plain-pickle"])
@pytest.mark.parametrize("path", ["load_checkpoint", "open_model", "evaluate", "plot", "compare", "resume"])
def test_every_loading_path_refuses_a_checkpoint_that_would_run_code(small_run, tmp_path, capsys, path, as_zip):
    run, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(small_run, run)
    for name in ("best.pt", "last.pt"):
        _malicious(run / "checkpoints" / name, marker, as_zip)
    message = "is not a pyro-vae checkpoint: the safe loader refused it"
    if path == "load_checkpoint":
        with pytest.raises(ValueError, match=message):
            C.load_checkpoint(run / "checkpoints" / "last.pt")
    elif path == "open_model":
        with pytest.raises(ValueError, match=message):
            open_model(run, device="cpu")
    else:
        argv = {
            "evaluate": ["evaluate", str(run), "--k", "2", "--device", "cpu", "--no-progress"],
            "plot": ["plot", str(run)],
            "compare": ["compare", str(run), "--device", "cpu", *SMALL_LAB],
            "resume": ["train", "--resume", str(run), "--device", "cpu", "--no-progress"],
        }[path]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "nothing in it was run" in err and "Traceback" not in err, err
    assert not marker.exists(), "unpickling ran the checkpoint's code"


def test_checkpoints_hold_only_plain_values_and_reload_safely(small_run):
    state = torch.load(small_run / "checkpoints" / "last.pt", weights_only=True)  # raises if anything else
    assert state["format_version"] == C.FORMAT_VERSION == 2 and state["device"] == "cpu"
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_saving_a_value_a_safe_load_cannot_read_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['rng'\]\['numpy'\] is a numpy.ndarray"):
        C.save_checkpoint({"rng": {"numpy": np.zeros(3)}}, tmp_path / "c.pt")
    with pytest.raises(TypeError, match="keys must be str or int"):
        C.save_checkpoint({"x": {(1, 2): 3}}, tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())


def test_rng_states_round_trip_through_a_safe_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    C.save_checkpoint({"rng": C.get_rng_state()}, tmp_path / "c.pt")
    before = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    C.set_rng_state(C.load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == before


def test_a_run_opens_from_a_checkpoint_made_before_a_config_key_existed_but_not_a_different_config(small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    state = C.load_checkpoint(run / "checkpoints" / "best.pt")
    del state["config"]["train"]["patience"]  # as a run written before the key was added stores it
    C.save_checkpoint(state, run / "checkpoints" / "best.pt")
    assert open_model(run, device="cpu").config.train.patience == 0
    state["config"]["model"]["latent_dim"] = 3
    C.save_checkpoint(state, run / "checkpoints" / "best.pt")
    with pytest.raises(ValueError, match="does not match the config stored in"):
        open_model(run, device="cpu")


def test_a_checkpoint_of_another_format_is_a_clear_error(tmp_path):
    torch.save({"format_version": 7}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a pyro-vae checkpoint of format 1 or 2 \\(format_version: 7\\)"):
        C.load_checkpoint(tmp_path / "c.pt")


# --- format 1, and a run made on a GPU, on this machine ---------------------------------------------


@pytest.fixture
def gpu_run(tmp_path):
    """A writable copy of the run folder written on an H100 in format 1 (``shared/fixtures``)."""
    if not FIXTURE.is_dir():
        pytest.skip(f"{FIXTURE} (the project's shared fixtures) is not beside the checkout")
    run = tmp_path / "h100_run"
    shutil.copytree(FIXTURE, run)
    for path in [run, *run.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return run


def test_a_format_1_checkpoint_from_a_gpu_loads_on_the_cpu_through_the_safe_path(gpu_run):
    state = C.load_checkpoint(gpu_run / "checkpoints" / "best.pt")
    assert state["format_version"] == 2 and state["epoch"] == 2 and saved_device(state) == "cuda"
    keys = state["rng"]["numpy"]["keys"]
    assert keys.dtype == torch.int64 and keys.shape == (624,) and int(keys.min()) >= 0
    assert all(t.device.type == "cpu" for t in state["model"].values())


def test_a_gpu_run_evaluates_on_the_cpu_like_on_the_gpu(gpu_run):
    """The H100 reported test NLL (K=10) 123.37 over all 10,000 images. Here on the CPU, with other
    draws, the same weights must agree within the Monte-Carlo error of a difference of two
    independent estimates (measured here from two seeds), at |z| < 5."""
    from pyro_vae.evaluation.metrics import iwae_log_likelihood

    model = open_model(gpu_run, device="cpu")
    vae, data = model.vae, model.data
    reported = json.loads((gpu_run / "summary.json").read_text())["final"]["test_nll"]["mean"]
    x = data.test
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        draws.append(torch.cat([iwae_log_likelihood(vae, x[i : i + 1000], 10)[0] for i in range(0, len(x), 1000)]))
    ours = -float(draws[0].double().mean())
    se_difference = float((draws[0] - draws[1]).double().std()) / math.sqrt(len(x))
    z = (ours - reported) / se_difference
    assert abs(z) < 5, f"CPU {ours:.3f} vs H100 {reported:.3f} nats, se {se_difference:.3f}, z {z:.2f}; N = {len(x)}"


def test_a_gpu_run_resumes_plots_and_compares_on_the_cpu(gpu_run, capsys, caplog):
    argv = [
        "train",
        "--resume",
        str(gpu_run),
        "--device",
        "cpu",
        "--no-progress",
        "--no-figures",
        "--set",
        "train.epochs=3",
        "--set",
        "eval.iwae_images=200",
    ]
    assert main(argv) == 0
    assert "trained on cuda and continues on cpu" in caplog.text and "not bit-exact" in caplog.text
    metrics = [json.loads(line) for line in (gpu_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and metrics[2]["valid_neg_elbo"] < metrics[1]["valid_neg_elbo"]
    last = torch.load(gpu_run / "checkpoints" / "last.pt", weights_only=True)  # rewritten in format 2
    assert last["format_version"] == 2 and last["device"] == "cpu" and "cuda" not in last["rng"]
    assert main(["plot", str(gpu_run)]) == 0
    # the laboratory itself is tests/lab's; here, that it runs on a run moved from a GPU
    tiny_lab = [
        "--images",
        "4",
        "--k",
        "1,2",
        "--particles",
        "2",
        "--reps",
        "2",
        "--grad-images",
        "2",
        "--grad-reps",
        "2",
        "--snr-k",
        "2",
        "--no-progress",
    ]
    assert main(["compare", str(gpu_run), "--device", "cpu", *tiny_lab]) == 0
    assert (gpu_run / "compare" / "report.md").is_file()


# --- CUDA: runs made here move to the CPU and back (skipped where there is no GPU) -------------------


@pytest.mark.cuda
def test_a_run_trained_on_cuda_evaluates_and_resumes_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    T.fit(small_cfg("train.device=cuda", "train.epochs=1"), run, progress=False, figures=False)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert state["device"] == "cuda" and "cuda" in state["rng"]
    vae = open_model(run, device="cpu").vae
    assert next(vae.parameters()).device.type == "cpu"
    summary = T.fit(small_cfg("train.device=cpu", "train.epochs=2"), run, resume=True, progress=False, figures=False)
    assert summary["epochs_run"] == 2 and summary["environment"]["device"] == "cpu"


@pytest.mark.cuda
def test_a_run_trained_on_the_cpu_resumes_on_cuda_and_cuda_resume_is_exact(tmp_path):
    run = tmp_path / "run"
    T.fit(small_cfg("train.device=cpu", "train.epochs=1"), run, progress=False, figures=False)
    summary = T.fit(small_cfg("train.device=cuda", "train.epochs=2"), run, resume=True, progress=False, figures=False)
    assert summary["environment"]["device"].startswith("cuda")
    straight, split = tmp_path / "straight", tmp_path / "split"
    T.fit(small_cfg("train.device=cuda", "train.epochs=2"), straight, progress=False, figures=False)
    T.fit(small_cfg("train.device=cuda", "train.epochs=1"), split, progress=False, figures=False)
    T.fit(small_cfg("train.device=cuda", "train.epochs=2"), split, resume=True, progress=False, figures=False)
    a = C.load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = C.load_checkpoint(split / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
