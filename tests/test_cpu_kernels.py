"""pyro_vae.cpu_kernels: the choice of ATen's CPU kernels, its cache (data, checked before use) and
the ``pyro-vae`` command making it before its first tensor operation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyro_vae import cpu_kernels

FAST = {"softplus": 1.0, "log_sigmoid": 1.0, "log1p": 1.0, "exp": 1.0, "tanh": 1.0, "sigmoid": 1.0}


@pytest.fixture
def avx512_cpu(monkeypatch):
    """A CPU with AVX-512, the variables unset, ATen's answer and the probe under the test's control."""
    saved = {name: os.environ.pop(name, None) for name in (cpu_kernels.VARIABLE, cpu_kernels.INDUCTOR_CACHE)}
    monkeypatch.setattr(cpu_kernels, "_has_avx512", lambda: True)
    monkeypatch.setattr(cpu_kernels, "capability", lambda: os.environ.get(cpu_kernels.VARIABLE, "avx512").upper())
    probes = []

    def probe(capability):
        probes.append(capability)
        return {name: s * (0.3 if capability == "avx2" else 1.0) for name, s in FAST.items()}

    monkeypatch.setattr(cpu_kernels, "probe", probe)
    yield probes
    for name, value in saved.items():  # whatever choose() set, undone
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def test_decide_switches_only_where_avx2_is_clearly_faster():
    slower = {name: s * 0.85 for name, s in FAST.items()}
    faster = {name: s * 0.5 for name, s in FAST.items()}
    assert cpu_kernels.decide(FAST, faster) == "avx2"
    assert cpu_kernels.decide(FAST, slower) == "avx512"
    assert cpu_kernels.decide(FAST, FAST) == "avx512"


def test_a_variable_already_set_is_the_choice(avx512_cpu, monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_kernels.VARIABLE, "avx512")
    assert cpu_kernels.choose(tmp_path / "c.json") is None
    assert avx512_cpu == [] and not (tmp_path / "c.json").exists()
    assert os.environ[cpu_kernels.VARIABLE] == "avx512" and cpu_kernels.INDUCTOR_CACHE not in os.environ
    # the user's AVX2 on an AVX-512 CPU: kept, and inductor's code cached apart from AVX-512's
    monkeypatch.setenv(cpu_kernels.VARIABLE, "avx2")
    assert cpu_kernels.choose(tmp_path / "c.json") is None and avx512_cpu == []
    assert os.environ[cpu_kernels.INDUCTOR_CACHE].endswith("_avx2")


def test_the_cache_folder_follows_the_build_aten_runs_not_the_variables_text(avx512_cpu, monkeypatch, tmp_path):
    """ATen ignores "AVX2" (capitals) and runs AVX-512: inductor's code then stays in AVX-512's folder."""
    monkeypatch.setenv(cpu_kernels.VARIABLE, "AVX2")
    monkeypatch.setattr(cpu_kernels, "capability", lambda: "AVX512")
    assert cpu_kernels.choose(tmp_path / "c.json") is None
    assert cpu_kernels.INDUCTOR_CACHE not in os.environ


def test_measured_once_then_read_from_the_cache(avx512_cpu, tmp_path):
    path = tmp_path / "cache" / "pyro_vae" / "cpu_kernels.json"
    assert cpu_kernels.choose(path) == "avx2"
    assert avx512_cpu == ["avx512", "avx2", "avx2", "avx512"]  # alternated: each build's faster run
    entry = json.loads(path.read_text())
    assert entry["key"] == cpu_kernels.cache_key() and entry["choice"] == "avx2"
    assert entry["ratio_avx2_to_avx512"] == pytest.approx(0.3)
    os.environ.pop(cpu_kernels.VARIABLE)
    assert cpu_kernels.choose(path) == "avx2"
    assert len(avx512_cpu) == 4  # not measured again
    assert os.environ[cpu_kernels.VARIABLE] == "avx2"
    # inductor's code for AVX2 cached apart from the default folder's (code of the other build)
    assert os.environ[cpu_kernels.INDUCTOR_CACHE].endswith("_avx2")


def test_a_cache_folder_the_user_named_is_kept(avx512_cpu, monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_kernels.INDUCTOR_CACHE, str(tmp_path / "mine"))
    assert cpu_kernels.choose(tmp_path / "c.json") == "avx2"
    assert os.environ[cpu_kernels.INDUCTOR_CACHE] == str(tmp_path / "mine")


def test_avx512_kept_where_it_is_as_fast(avx512_cpu, monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernels, "probe", lambda capability: dict(FAST))
    assert cpu_kernels.choose(tmp_path / "c.json") is None
    assert cpu_kernels.VARIABLE not in os.environ and cpu_kernels.INDUCTOR_CACHE not in os.environ
    assert json.loads((tmp_path / "c.json").read_text())["choice"] == "avx512"


def test_the_choice_is_worked_out_from_the_cached_ratio(avx512_cpu, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"key": cpu_kernels.cache_key(), "choice": "avx512", "ratio_avx2_to_avx512": 0.1}))
    assert cpu_kernels.choose(path) == "avx2" and avx512_cpu == []


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"key": "another CPU | torch 0.1", "choice": "avx2", "ratio_avx2_to_avx512": 0.5}),
        json.dumps({"key": "KEY", "choice": "avx2", "ratio_avx2_to_avx512": "fast"}),
        json.dumps({"key": "KEY", "choice": "avx2", "ratio_avx2_to_avx512": None}),  # (no failure named)
        json.dumps(["a", "list"]),
        " " * (cpu_kernels.CACHE_BYTES + 1),
    ],
    ids=["malformed", "another-machine", "ratio-not-a-number", "no-ratio", "not-an-object", "oversized"],
)
def test_a_bad_cache_file_is_measured_again_and_replaced(avx512_cpu, tmp_path, content):
    path = tmp_path / "c.json"
    path.write_text(content.replace("KEY", cpu_kernels.cache_key()))
    assert cpu_kernels.choose(path) == "avx2"
    assert len(avx512_cpu) == 4
    assert json.loads(path.read_text())["key"] == cpu_kernels.cache_key()


def test_a_linked_cache_file_is_neither_trusted_nor_written_through(avx512_cpu, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"key": cpu_kernels.cache_key(), "choice": "avx512", "ratio_avx2_to_avx512": 1.0}))
    (tmp_path / "cache").mkdir()
    link = tmp_path / "cache" / "c.json"
    link.symlink_to(target)
    before = target.read_text()
    assert cpu_kernels.choose(link) == "avx2"  # measured, used for this process
    assert len(avx512_cpu) == 4
    assert target.read_text() == before and link.is_symlink()


def test_a_linked_cache_folder_is_neither_read_nor_written_through(avx512_cpu, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    entry = {"key": cpu_kernels.cache_key(), "choice": "avx512", "ratio_avx2_to_avx512": 1.0}
    (elsewhere / "c.json").write_text(json.dumps(entry))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "pyro_vae").symlink_to(elsewhere)
    assert cpu_kernels.choose(tmp_path / "cache" / "pyro_vae" / "c.json") == "avx2"  # its entry not read
    assert len(avx512_cpu) == 4 and json.loads((elsewhere / "c.json").read_text()) == entry


def test_a_failed_measurement_is_cached_and_leaves_torchs_default(avx512_cpu, monkeypatch, tmp_path, caplog):
    calls = []

    def broken(capability):
        calls.append(capability)
        raise RuntimeError("the avx512 probe failed: boom")

    monkeypatch.setattr(cpu_kernels, "probe", broken)
    path = tmp_path / "c.json"
    assert cpu_kernels.choose(path) is None
    assert cpu_kernels.VARIABLE not in os.environ and "boom" in json.loads(path.read_text())["failed"]
    assert "could not time the CPU kernels" in caplog.text and "boom" in caplog.text
    assert cpu_kernels.choose(path) is None and calls == ["avx512"]  # not tried again on every command


def test_nothing_escapes_choose(avx512_cpu, monkeypatch, tmp_path, caplog):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(cpu_kernels, "cache_path", no_home)
    assert cpu_kernels.choose() is None
    assert "could not choose the CPU kernels" in caplog.text and "home directory" in caplog.text


def test_a_probe_that_prints_nothing_is_a_failure_not_a_crash(monkeypatch):
    done = subprocess.CompletedProcess([], 0, stdout="", stderr="")
    monkeypatch.setattr(cpu_kernels.subprocess, "run", lambda *a, **k: done)
    with pytest.raises(RuntimeError, match="printed no timings"):
        cpu_kernels.probe("avx2")


def test_too_late_in_a_process_that_already_chose(avx512_cpu, monkeypatch, tmp_path, caplog):
    caplog.set_level("INFO")
    monkeypatch.setattr(cpu_kernels, "capability", lambda: "AVX512")  # ATen fixed its choice earlier
    assert cpu_kernels.choose(tmp_path / "c.json") is None
    assert cpu_kernels.VARIABLE not in os.environ  # inductor keeps to ATen's choice
    assert cpu_kernels.INDUCTOR_CACHE not in os.environ
    assert "already run a tensor operation" in caplog.text


def _x86_with_avx512() -> bool:
    return cpu_kernels._has_avx512()


@pytest.mark.skipif(not _x86_with_avx512(), reason="needs an x86 CPU with AVX-512 (Linux)")
def test_the_probe_runs_the_build_it_asks_for_and_nothing_from_the_working_folder(tmp_path, monkeypatch):
    for name in ("json", "torch", "time"):  # a shared folder's files named like what the probe imports
        (tmp_path / f"{name}.py").write_text("raise SystemExit('imported from the working folder')\n")
    monkeypatch.chdir(tmp_path)
    for capability in ("avx2", "avx512"):
        seconds = cpu_kernels.probe(capability)
        assert set(seconds) == set(FAST) and all(0 < s < 1 for s in seconds.values()), (capability, seconds)


@pytest.mark.skipif(not _x86_with_avx512(), reason="needs an x86 CPU with AVX-512 (Linux)")
def test_the_command_chooses_before_its_first_tensor_operation(tmp_path):
    """`pyro-vae train` in a fresh process, with a cache saying AVX2 for this CPU: the run records
    that ATen ran AVX2 (it could not have, had anything computed before the choice)."""
    home = tmp_path / "home"
    (home / ".cache" / "pyro_vae").mkdir(parents=True)
    entry = {"key": cpu_kernels.cache_key(), "choice": "avx2", "ratio_avx2_to_avx512": 0.4}
    (home / ".cache" / "pyro_vae" / "cpu_kernels.json").write_text(json.dumps(entry))
    env = {k: v for k, v in os.environ.items() if k != cpu_kernels.VARIABLE}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--set", "train.epochs=1"]
    args += ["--set", "data.subset=300", "--set", "eval.iwae_k=2", "--set", "model.hidden=[16]"]
    done = subprocess.run([sys.executable, "-m", "pyro_vae", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CPU kernels: AVX2, which takes 40%" in done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["environment"]["cpu_kernels"] == "AVX2"


@pytest.mark.slow
@pytest.mark.skipif(not _x86_with_avx512(), reason="needs an x86 CPU with AVX-512 (Linux)")
def test_a_compiled_step_of_either_build_does_not_run_the_others_code(tmp_path):
    """The whole step compiled by an AVX2 `pyro-vae` process, then by an AVX-512 process on the same
    machine (inductor's default cache under the same TMPDIR): the second runs its own code. Before
    the AVX2 process cached apart, the second loaded the first's code and crashed (torch 2.14)."""
    home = tmp_path / "home"
    (home / ".cache" / "pyro_vae").mkdir(parents=True)
    entry = {"key": cpu_kernels.cache_key(), "choice": "avx2", "ratio_avx2_to_avx512": 0.4}
    (home / ".cache" / "pyro_vae" / "cpu_kernels.json").write_text(json.dumps(entry))
    (tmp_path / "tmp").mkdir()
    base = {k: v for k, v in os.environ.items() if k not in (cpu_kernels.VARIABLE, cpu_kernels.INDUCTOR_CACHE)}
    base.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"), OMP_NUM_THREADS="1")
    args = ["--no-progress", "--set", "train.epochs=1", "--set", "train.engine=compiled", "--set", "data.subset=300"]
    args += ["--set", "eval.iwae_k=2", "--set", "model.hidden=[16]", "--set", "train.batch_size=32"]
    for name, extra in (("avx2", {}), ("avx512", {cpu_kernels.VARIABLE: "avx512"})):
        cmd = [sys.executable, "-m", "pyro_vae", "train", "--out", str(tmp_path / name), *args]
        done = subprocess.run(cmd, env={**base, **extra}, capture_output=True, text=True)
        assert done.returncode == 0, (name, done.returncode, done.stderr[-2000:])
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["environment"]["cpu_kernels"] == name.upper() and summary["engine"] == "compiled"
    caches = sorted(p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("torchinductor"))
    assert len(caches) == 2 and caches[1] == caches[0] + "_avx2", caches
