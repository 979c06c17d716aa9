"""The benchmark scripts run and write what they promise (tiny settings; no timing asserted)."""

from __future__ import annotations

import importlib
import json
import math
import shutil

import pyro
import pytest
import torch
from pyro.infer.util import is_validation_enabled

from pyro_vae import cpu_kernels
from pyro_vae.components.nets import NETWORKS
from pyro_vae.objectives.elbos import ELBOS
from pyro_vae.training import engine as engine_module
from tests.helpers import ROOT, run_as_script


@pytest.fixture
def run_script(monkeypatch):
    """``run_script("benchmarks/NAME.py", *args)``: the script as ``python benchmarks/NAME.py ARGS`` runs it
    from the repository root, but in this process (no interpreter to start), with the global state
    a script may set (Pyro's validation, torch's threads, matmul precision and random streams, the
    param store) put back afterwards."""

    def run(script: str, *argv: str) -> None:
        monkeypatch.chdir(ROOT)
        threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
        try:
            with pyro.validation_enabled(is_validation_enabled()), torch.random.fork_rng(devices=[]):
                code = run_as_script(monkeypatch, ROOT / script, *argv)
            assert code in (None, 0), f"{script} exited with status {code}"
        finally:
            torch.set_num_threads(threads)
            torch.set_float32_matmul_precision(precision)
            pyro.clear_param_store()

    return run


def test_throughput(tmp_path, run_script, monkeypatch):
    """Every implementation that runs on a CPU (every ELBO and network) on the eager engine (the
    compiled one is tested in test_whole_step.py; compiling takes seconds per row here)."""
    monkeypatch.setattr(engine_module, "COMPILE_MIN_STEPS", 10**12)  # a default run: eager
    out = tmp_path / "tp.json"
    every_elbo = {
        "hand-written",
        "pyro-vae",
        *(f"pyro-vae {n}" for n in ELBOS.names() if n != "trace"),
        "Trace_ELBO",
        "TraceMeanField_ELBO",
        *(f"pyro-vae {n}" for n in NETWORKS.names() if n != "mlp"),
    }
    run_script(
        "benchmarks/throughput.py",
        "--batch-sizes",
        "32",
        "--particles",
        "1,2",
        "--repeats",
        "1",
        "--max-steps",
        "2",
        "--out",
        str(out),
        "--implementations",
        ",".join(sorted(every_elbo | {"hand-written graph"})),
    )
    record = json.loads(out.read_text())
    names = {p: {r["implementation"] for r in record["results"] if r["particles"] == p} for p in (1, 2)}
    assert names[2] == every_elbo and names[1] == every_elbo - {"pyro-vae iwae", "pyro-vae iwae_dreg"}  # 2 particles
    assert record["matmul_gflops"] > 0 and record["peak_rss_mb"] > 0
    hand = [r for r in record["results"] if r["implementation"] == "hand-written"]
    assert all(r["ratio_to_hand_written"] == 1.0 for r in hand)
    assert out.with_suffix(".png").stat().st_size > 0
    tables = out.with_suffix(".md").read_text()
    assert "1 particle, matmul precision highest" in tables and "2 particles, matmul" in tables
    assert "| pyro-vae iwae | 32" not in tables and {r["engine"] for r in record["results"]} == {None, "eager"}
    assert tables.count("| hand-written | ") == 2 and "(x1.00)" in tables
    conv = next(r for r in record["results"] if r["implementation"] == "pyro-vae conv")
    dense = next(r for r in record["results"] if r["implementation"] == "pyro-vae")
    # the conv row's FLOPs are counted (about 6x the MLP's per image), not the dense formula
    assert conv["gflops"] / conv["images_per_s"] > 4 * dense["gflops"] / dense["images_per_s"], (conv, dense)


def test_throughput_tables_for_rows_without_the_cuda_graph_baseline(monkeypatch):
    """--implementations may leave out the hand-written CUDA graph: the CUDA tables then give the
    ratios to the eager hand-written step (they raised a KeyError)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    throughput = importlib.import_module("throughput")
    rows = [
        {
            "implementation": name,
            "batch_size": 128,
            "particles": 1,
            "matmul_precision": "highest",
            "images_per_s": rate,
            "ratio_to_hand_written": ratio,
        }
        for name, rate, ratio in (("hand-written", 2e6, 1.0), ("pyro-vae", 1.8e6, 0.9))
    ]
    tables = throughput.markdown_tables({"machine": {"device": "cuda:0"}, "results": rows})
    assert "relative to hand written)" in tables and "| pyro-vae | 1.80M (x0.90) |" in tables
    bare = [{k: v for k, v in r.items() if not k.startswith("ratio")} for r in rows]
    assert "| pyro-vae | 1.80M |" in throughput.markdown_tables({"machine": {"device": "cpu"}, "results": bare})


@pytest.mark.cuda
def test_throughput_on_cuda_has_the_graph_rows_and_both_precisions(tmp_path, run_script):
    out = tmp_path / "tp.json"
    run_script(
        "benchmarks/throughput.py",
        "--device",
        "cuda",
        "--batch-sizes",
        "128",
        "--particles",
        "1",
        "--repeats",
        "2",
        "--max-steps",
        "5",
        "--out",
        str(out),
    )
    rows = json.loads(out.read_text())["results"]
    assert {r["matmul_precision"] for r in rows} == {"highest", "high"}
    engines = {r["implementation"]: r["engine"] for r in rows}
    assert engines["pyro-vae"] == "graph" and engines["pyro-vae eager"] == "eager"
    assert engines["pyro-vae compiled"] == "compiled" and "hand-written graph" in engines


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_time_to_quality(tmp_path, device, run_script):
    out = tmp_path / "ttq.json"
    run_script(
        "benchmarks/time_to_quality.py",
        "--device",
        device,
        "--target",
        "400",
        "--check-every",
        "0.05",
        "--max-epochs",
        "0.2",
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    expected = ["pyro-vae", "hand-written", *(["hand-written graph"] if device == "cuda" else [])]
    assert [r["implementation"] for r in record["results"]] == expected
    assert all(r["reached"] and r["train_s"] > 0 for r in record["results"])
    assert record["machine"]["device"] == device


def test_nll_recipe(tmp_path, run_script):
    run_script(
        "benchmarks/nll.py",
        "--name",
        "tiny",
        "--runs",
        str(tmp_path),
        "--results",
        str(tmp_path),
        "--set",
        "data.subset=200",
        "--set",
        "train.epochs=1",
        "--set",
        "eval.iwae_k=5",
        "--set",
        "train.device=cpu",
    )
    record = json.loads((tmp_path / "tiny.json").read_text())
    assert record["iwae_k"] == 5 and record["epochs_run"] == 1 and record["test_nll"]["mean"] > 0
    assert "--set data.subset=200" in record["command"]
    assert (tmp_path / "tiny" / "figures" / "samples.png").stat().st_size > 0


def test_nll_recipe_keeps_its_result_when_the_figures_fail(tmp_path, run_script, monkeypatch, caplog):
    def fail(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr("pyro_vae.evaluation.plots.make_figures", fail)
    overrides = ("data.subset=200", "train.epochs=1", "eval.iwae_k=5", "train.device=cpu")
    args = [a for o in overrides for a in ("--set", o)]
    run_script("benchmarks/nll.py", "--name", "tiny", "--runs", str(tmp_path), "--results", str(tmp_path), *args)
    assert json.loads((tmp_path / "tiny.json").read_text())["epochs_run"] == 1
    assert "the figures failed (RuntimeError: drawing failed); redraw them with: pyro-vae plot" in caplog.text


def test_ddp_throughput(tmp_path, run_script):
    out = tmp_path / "ddp.json"
    run_script(
        "benchmarks/ddp_throughput.py",
        "--device",
        "cpu",
        "--procs",
        "1,2",
        "--steps",
        "3",
        "--repeats",
        "1",
        "--batch",
        "64",
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    assert set(record["median_images_per_s"]) == {"1", "2"} and record["speedup_over_1"]["1"] == 1.0
    assert all(v > 0 for v in record["median_images_per_s"].values()) and record["machine"]["cpu_count"] > 0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_iwae_eval(tmp_path, device, run_script):
    out = tmp_path / "ev.json"
    run_script(
        "benchmarks/iwae_eval.py",
        "--device",
        device,
        "--k",
        "20",
        "--images",
        "50",
        "--repeats",
        "2",
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    assert record["k"] == 20 and record["images"] == 50 and len(record["seconds"]) == 2
    assert record["test_nll"] <= record["test_neg_elbo"] and record["chunk_elements"] >= 1 << 20


def test_cpu_step_times_every_variant_side_by_side(tmp_path, run_script):
    """Three variants (one compiled) served by their own processes, alternated for two rounds:
    medians, ratios and peak RSS in the JSON (the peer needs JAX, not installed here)."""
    out = tmp_path / "step.json"
    variants = "plain eager,plain compiled,pyro-vae eager"
    run_script(
        "benchmarks/cpu_step.py",
        "--rounds",
        "2",
        "--variants",
        variants,
        "--batch-sizes",
        "32,64",
        "--images",
        "320",
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    assert set(record["median"]) == {"plain eager", "plain compiled", "pyro-vae eager"} and len(record["rounds"]) == 2
    for m in record["median"].values():
        assert set(m["images_per_s"]) == {"32", "64"} and all(v > 0 for v in m["images_per_s"].values())
        assert m["peak_rss_mb"] > 100
    assert record["median"]["pyro-vae eager"]["engine"] == {"32": "eager", "64": "eager"}
    assert set(record["ratios"]) == {"pyro-vae eager / plain eager"}  # (the default and the peer did not run)


def test_cpu_step_runs_another_checkouts_step_beside_this_ones(tmp_path, run_script):
    """``--other-tree``: each variant asked for also runs from another checkout (here a copy of
    this one's package and benchmarks, not a git checkout, so named by its folder), whose package
    its processes import, and is the baseline of its own ratio."""
    other = tmp_path / "other"
    for folder in ("pyro_vae", "benchmarks"):
        shutil.copytree(ROOT / folder, other / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    out = tmp_path / "step.json"
    run_script(
        "benchmarks/cpu_step.py",
        "--rounds",
        "2",
        "--variants",
        "plain eager,pyro-vae eager",
        "--batch-sizes",
        "32",
        "--images",
        "320",
        "--other-tree",
        str(other),
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    assert record["other_tree"] == {"path": str(other), "commit": "other"} and record["commit"]
    assert set(record["median"]) == {"plain eager", "pyro-vae eager", "plain eager @ other", "pyro-vae eager @ other"}
    for name, m in record["median"].items():
        assert m["package"] == str((other if "@" in name else ROOT) / "pyro_vae")
    assert record["median"]["pyro-vae eager @ other"]["engine"] == {"32": "eager"}
    assert set(record["ratios"]) == {
        "pyro-vae eager / plain eager",
        "plain eager / plain eager @ other",
        "pyro-vae eager / pyro-vae eager @ other",
    }


def test_cpu_step_refuses_another_tree_that_is_not_a_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = run_as_script(
        monkeypatch, ROOT / "benchmarks/cpu_step.py", "--other-tree", str(tmp_path), "--out", str(tmp_path / "x.json")
    )
    assert code == 2
    assert "not a checkout of pyro-vae" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_cpu_profile_groups_the_time_of_a_step(tmp_path, run_script):
    out = tmp_path / "profile.json"
    run_script(
        "benchmarks/cpu_profile.py",
        "--variants",
        "plain eager,pyro-vae eager",
        "--batch-size",
        "32",
        "--steps",
        "5",
        "--out",
        str(out),
    )
    rows = json.loads(out.read_text())["variants"]
    for row in rows.values():
        groups = row["profiled_self_ms_per_step"]
        assert row["ms_per_step"] > 0 and groups["matrix products"] > 0 and groups["Adam"] > 0


def test_the_kmeans_baseline_writes_scores_per_seed_and_their_spread(tmp_path, run_script):
    out = tmp_path / "kmeans.json"
    run_script("benchmarks/kmeans_baseline.py", "--subset", "300", "--seeds", "0", "1", "--out", str(out))
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["results"]] == [0, 1] and record["k"] == 10
    assert record["train_images"] == record["test_images"] == 300
    assert all(0.1 < r["accuracy"] <= 1 and 0 < r["nmi"] <= 1 and r["seconds"] > 0 for r in record["results"])
    accuracies = [r["accuracy"] for r in record["results"]]
    assert record["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
    assert record["accuracy"]["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / math.sqrt(2))
    assert record["command"].endswith(f"--seeds 0 1 --out {out}") and record["machine"]["cpu_count"] > 0


def test_the_classifier_baseline_trains_on_the_labels_alone(tmp_path, run_script):
    out = tmp_path / "classifier.json"
    run_script(
        "benchmarks/classifier_baseline.py",
        *("--set", "data.subset=400", "--set", "data.labels=20", "--set", "model.hidden=[16]"),
        *("--seeds", "0", "1", "--steps", "30", "--out", str(out)),
    )
    record = json.loads(out.read_text())
    assert record["labels"]["count"] == 20 and "offline" in record["labels"]["protocol"]
    assert record["test_images"] == 200 and list(record["per_seed"]) == ["0", "1"]
    assert all(0 <= e <= 1 for e in record["per_seed"].values()) and record["test_error"]["std"] is not None
    # --label-seeds: each seed draws its own labels and evaluation half (data.seed = seed)
    run_script(
        "benchmarks/classifier_baseline.py",
        *("--set", "data.subset=400", "--set", "data.labels=20", "--set", "model.hidden=[16]", "--label-seeds"),
        *("--seeds", "0", "1", "--steps", "30", "--out", str(out)),
    )
    drawn = json.loads(out.read_text())["labels"]["protocol_per_seed"]
    assert list(drawn) == ["0", "1"] and "seed 0" in drawn["0"] and "seed 1" in drawn["1"]


def test_notebook_times_records_each_run_and_keeps_earlier_entries(tmp_path, run_script):
    out = tmp_path / "times.json"
    out.write_text(json.dumps({"notebooks": {"99_earlier": {"wall_s": 1.0}}}))
    run_script("benchmarks/notebook_times.py", "--mode", "smoke", "--only", "05_monte_carlo", "--out", str(out))
    record = json.loads(out.read_text())
    entry = record["notebooks"]["05_monte_carlo"]
    assert entry["exit_status"] == 0 and not entry["timed_out"] and entry["wall_s"] > 0 and entry["peak_rss_mb"] > 50
    assert "99_earlier" in record["notebooks"] and record["machine"]["torch_threads"] == 1
    # a run past its timeout is stopped and recorded as such
    run_script(
        "benchmarks/notebook_times.py",
        "--mode",
        "full",
        "--only",
        "05_monte_carlo",
        "--timeout",
        "0.5",
        "--out",
        str(out),
    )
    stopped = json.loads(out.read_text())["notebooks"]["05_monte_carlo"]
    assert stopped["timed_out"] and stopped["exit_status"] != 0 and stopped["wall_s"] < 30


def test_notebook_times_keeps_a_full_runs_results_and_figures(tmp_path, run_script, monkeypatch, capsys):
    """--keep: what a finished full run wrote at the top of its folder, named by the notebook, with
    the note of what else ran; a smoke run or a missing folder is refused."""
    out, kept = tmp_path / "times.json", tmp_path / "kept"
    kept.mkdir()
    args = ["--mode", "full", "--only", "05_monte_carlo", "--out", str(out), "--keep", str(kept), "--note", "idle"]
    run_script("benchmarks/notebook_times.py", *args)
    entry = json.loads(out.read_text())["notebooks"]["05_monte_carlo"]
    names = ["05_monte_carlo_error.png", "05_monte_carlo_points.png", "05_monte_carlo_results.json"]
    assert entry["kept"] == names and entry["note"] == "idle" and sorted(p.name for p in kept.iterdir()) == names
    assert -0.7 < json.loads((kept / "05_monte_carlo_results.json").read_text())["slope"] < -0.3
    refused = [("smoke", kept, "use it with --mode full"), ("full", tmp_path / "none", "no such folder")]
    for mode, folder, message in refused:
        argv = ["--mode", mode, "--keep", str(folder), "--out", str(out)]
        assert run_as_script(monkeypatch, ROOT / "benchmarks" / "notebook_times.py", *argv) == 2
        assert message in capsys.readouterr().err


def test_the_timing_table_of_the_learning_page_is_the_records(run_script, capsys):
    """docs/learning.md's table is what `notebook_times.py --mode table` prints from the committed
    records (rerun it after a new timing and paste its output)."""
    run_script("benchmarks/notebook_times.py", "--mode", "table")
    printed = capsys.readouterr().out.strip()
    assert printed.count("\n") == 21 and printed in (ROOT / "docs" / "learning.md").read_text()


@pytest.mark.skipif(not cpu_kernels._has_avx512(), reason="needs an x86 CPU with AVX-512: two builds")
def test_cpu_kernels_compares_the_two_builds_on_the_evaluation(tmp_path, run_script):
    out = tmp_path / "kernels.json"
    run_script("benchmarks/cpu_kernels.py", "--rounds", "2", "--k", "4", "--images", "30", "--out", str(out))
    record = json.loads(out.read_text())
    assert set(record["probe_seconds_per_call"]) == {"avx512", "avx2"}
    assert record["probe_choice"] in ("avx512", "avx2") and record["probe_ratio_avx2_to_avx512"] > 0
    ev = record["evaluation"]
    assert ev["k"] == 4 and ev["images"] == 30 and all(len(s) == 2 for s in ev["seconds"].values())
    # the same draws through either build's kernels: equal to float32 rounding, not bit for bit
    assert ev["nll_difference"] < 1e-3 * abs(ev["test_nll"]["avx2"]), ev


def test_run_wall_time_runs_both_trees_alternately(tmp_path, run_script, monkeypatch):
    """This tree against itself as the "other" one, two rounds of a tiny two-epoch run: each run's wall time,
    peak RSS (whole and by phase), kernels and final table, and the median ratios."""
    out = tmp_path / "wall.json"
    tiny = ["train.epochs=2", "data.subset=300", "eval.iwae_k=2", "model.hidden=[16]"]
    argv = ["--other-tree", str(ROOT), "--rounds", "2", "--out", str(out)]
    run_script("benchmarks/run_wall_time.py", *argv, *[a for o in tiny for a in ("--set", o)])
    record = json.loads(out.read_text())
    assert [list(r) for r in record["rounds"]] == [["this", "other"], ["other", "this"]]
    runs = [run for r in record["rounds"] for run in r.values()]
    assert all(run["wall_s"] > 0 and run["peak_rss_mb"] > 100 for run in runs)
    assert {run["cpu_kernels"] for run in runs} in ({"AVX2"}, {"AVX512"}), runs  # the same tree twice
    assert all(run["table"][1:] == runs[0]["table"][1:] and len(run["table"]) >= 5 for run in runs)  # the same numbers
    assert record["wall_ratio_this_to_other"] > 0 and record["peak_rss_ratio_this_to_other"] > 0
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run_wall_time = importlib.import_module("run_wall_time")
    for run in runs:  # the phases in order, none above the process's peak; the seconds-long ones read
        phases = run["peak_rss_mb_by_phase"]
        assert list(phases) == [name for name, _ in run_wall_time.PHASES], phases
        assert phases["setup and the first epoch"] > 100 and phases["figures and files"] > 100, run
        assert all(mb == 0 or 100 < mb <= run["peak_rss_mb"] + 1 for mb in phases.values()), run


def test_gemm_times_the_layer_products_in_their_own_processes(tmp_path, run_script):
    """Without a peer Python: MKL's three products (and oneDNN's forward one where torch has it)
    and the step's products in sequence through MKL, oneDNN and NumPy's BLAS, one process per
    library, round and thread count, the medians in GFLOP/s; no ratio without XLA."""
    out = tmp_path / "gemm.json"
    run_script(
        "benchmarks/gemm.py",
        "--rounds",
        "2",
        "--batch-sizes",
        "8",
        "--threads",
        "1",
        "--images",
        "200",
        "--out",
        str(out),
    )
    record = json.loads(out.read_text())
    assert list(record["medians"]) == ["torch batch 8 threads 1", "numpy batch 8 threads 1"], list(record["medians"])
    assert record["versions"]["torch"]["torch"] == torch.__version__ and "blas" in record["versions"]["numpy"]
    products = record["medians"]["torch batch 8 threads 1"]
    expected = {"forward x @ W.T", "weight gradient g.T @ x", "input gradient g @ W", "mkl step's products in sequence"}
    assert expected <= set(products), products
    assert list(record["medians"]["numpy batch 8 threads 1"]) == ["openblas step's products in sequence"]
    rows = [*products.values(), *record["medians"]["numpy batch 8 threads 1"].values()]
    assert all(p["ms"] > 0 and p["gflops"] > 0 for p in rows), rows
    assert len(record["runs"]["torch batch 8 threads 1"]) == 2
    assert record["mkl time / xla time, the three products together (median over rounds)"] == {}
    assert record["time / xla time, the step's products in sequence (median over rounds)"] == {}


@pytest.mark.parametrize("library", ["mkl", "onednn", "numpy", "numpy, the peer's layout"])
def test_gemm_sequence_is_the_gradient_of_a_training_step(library, monkeypatch):
    """The step's products in sequence are a training step's: for the linear network they are the
    exact gradients of |y|^2 / (2 batch) (autograd's, in float64; oneDNN's in float32), and they
    count every product a default training step runs (the formula's 6 x multiply-adds, less the
    first layer's input gradient, which autograd does not compute)."""
    import numpy as np

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    gemm = importlib.import_module("gemm")
    common = importlib.import_module("common")
    assert gemm.STEP_FLOPS == common.flops_per_image(common.config()) - 2 * 784 * 400
    if library == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    dtype = torch.float32 if library == "onednn" else torch.float64
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(shape, generator=gen, dtype=dtype) / shape[1] ** 0.5 for shape in gemm.LAYERS]
    x = (torch.rand(8, 784, generator=gen) < 0.13).to(dtype)
    grads = []
    if library.startswith("numpy"):
        peer = library.endswith("layout")
        arrays = [w.t().numpy().copy() if peer else w.numpy() for w in ws]
        ops = (*gemm.array_products(np, peer), lambda w, g: grads.append(g) or w)
        _, y = gemm._step(ops, arrays, x.numpy())
        grads = [torch.from_numpy(g.T.copy() if peer else g) for g in grads]
        y = torch.from_numpy(y)
    else:
        ops = (*gemm.torch_products()[library], lambda w, g: grads.append(g) or w)
        _, y = gemm._step(ops, ws, x)
    leaves = [w.clone().requires_grad_() for w in ws]
    o = x @ leaves[0].t() @ leaves[1].t()
    y_autograd = (o[:, :50] + o[:, 50:]) @ leaves[2].t() @ leaves[3].t()
    (y_autograd.pow(2).sum() / (2 * len(x))).backward()

    def tol(t: torch.Tensor) -> dict:  # float32: rounding relative to the tensor's scale
        return {"rtol": 1e-4, "atol": 1e-5 * t.abs().max().item()} if dtype == torch.float32 else {}

    torch.testing.assert_close(y, y_autograd.detach(), **tol(y_autograd))
    for name, g, leaf in zip(("encoder", "heads", "decoder 1", "decoder 2"), grads, leaves):
        assert g.shape == leaf.shape, (name, g.shape)
        torch.testing.assert_close(g, leaf.grad, **tol(leaf.grad), msg=lambda m, n=name: f"{library}, {n}: {m}")
