"""A run or model folder from elsewhere writes nowhere else, and nothing a user made is lost:
links refused, rewrites atomic, --overwrite checked before it deletes, one writer per folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyro_vae import files
from pyro_vae.cli import main
from pyro_vae.training import loop as T
from tests.helpers import SMALL, small_cfg

QUIET = ["--no-progress", "--device", "cpu"]


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    T.fit(small_cfg(), run, progress=False, figures=False)  # two epochs
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may change."""
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock file's text, who held it last, aside)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".pyro-vae.lock"
    }


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


class Killed(BaseException):
    """Stands for a kill -9 at that point: nothing after it runs, no handler cleans up."""


def _kill_when_replacing(monkeypatch, name: str) -> None:
    real = files.os.replace

    def replace(src, dst, **kw):
        if Path(dst).name == name:
            raise Killed
        return real(src, dst, **kw)

    monkeypatch.setattr(files.os, "replace", replace)


# ---------------------------------------------------------------- writes stay inside


def test_evaluate_refuses_a_linked_output_and_keeps_the_victim(run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "evaluation_k2.json").symlink_to(victim)
    assert main(["evaluate", str(run), "--k", "2", "--images", "4", *QUIET]) == 2
    assert "evaluation_k2.json is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "precious"


def test_the_latent_commands_refuse_a_linked_output_folder(run, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "latent").symlink_to(elsewhere)
    assert main(["sample", str(run), "--n", "4", "--device", "cpu"]) == 2
    assert "latent is a symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_plot_and_compare_refuse_linked_folders(run, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "figures").symlink_to(elsewhere)
    assert main(["plot", str(run), "--device", "cpu"]) == 2
    (run / "compare").symlink_to(elsewhere)
    lab = [
        "--images",
        "2",
        "--k",
        "2",
        "--particles",
        "1,2",
        "--reps",
        "2",
        "--grad-images",
        "2",
        "--grad-reps",
        "2",
        "--snr-k",
        "2",
    ]
    assert main(["compare", str(run), *QUIET, *lab]) == 2
    assert capsys.readouterr().err.count("is a symbolic link") == 2
    assert list(elsewhere.iterdir()) == []


def test_a_model_folder_refers_to_files_inside_itself_only(run, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["export", str(run), "--out", str(model)]) == 0
    outside = tmp_path / "outside.safetensors"
    shutil.move(model / "model.safetensors", outside)
    (model / "model.safetensors").symlink_to(outside)
    assert main(["sample", str(model), "--n", "4", "--device", "cpu"]) == 2
    assert "model.safetensors is a symbolic link" in capsys.readouterr().err


def test_an_exported_model_never_downloads(run, tmp_path, capsys, monkeypatch):
    import urllib.request

    model = tmp_path / "model"
    assert main(["export", str(run), "--out", str(model)]) == 0
    record = json.loads((model / "config.json").read_text())
    nowhere = tmp_path / "nowhere" / "deep"
    record["config"]["data"].update(download=True, root=str(nowhere))
    (model / "config.json").write_text(json.dumps(record))

    def no_network(*args, **kwargs):
        raise AssertionError("an exported model tried the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert main(["sample", str(model), "--n", "4", "--device", "cpu"]) == 2  # its data are not here
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- resumed runs, atomic rewrites


def test_a_resumed_run_opens_with_every_command(run, tmp_path):
    assert (
        main(
            ["train", "--resume", str(run), "--no-progress", "--no-figures", *_sets("train.epochs=3", "eval.iwae_k=5")]
        )
        == 0
    )
    assert main(["evaluate", str(run), "--k", "2", "--images", "4", *QUIET]) == 0
    assert main(["sample", str(run), "--n", "4", "--device", "cpu"]) == 0
    assert main(["plot", str(run), "--device", "cpu"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0


def test_a_kill_while_resume_rewrites_the_metrics_keeps_the_history(run, monkeypatch):
    resume = ["train", "--resume", str(run), "--no-progress", "--no-figures", *_sets("train.epochs=3")]
    _kill_when_replacing(monkeypatch, "metrics.jsonl")
    with pytest.raises(Killed):
        main(resume)
    monkeypatch.undo()
    assert _epochs(run) == [1, 2]
    assert main(resume) == 0
    assert _epochs(run) == [1, 2, 3]


def test_a_kill_while_resume_rewrites_the_config_keeps_it(run, monkeypatch):
    before = (run / "config.toml").read_bytes()
    _kill_when_replacing(monkeypatch, "config.toml")
    with pytest.raises(Killed):
        main(["train", "--resume", str(run), "--no-progress", "--no-figures", *_sets("train.epochs=3")])
    monkeypatch.undo()
    assert (run / "config.toml").read_bytes() == before
    assert main(["evaluate", str(run), "--k", "2", "--images", "4", *QUIET]) == 0


def test_a_metrics_line_cut_short_is_dropped_and_a_damaged_one_named(run, caplog, capsys):
    resume = ["train", "--resume", str(run), "--no-progress", "--no-figures", *_sets("train.epochs=3")]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 9, "train_ne')  # a kill mid-append
    assert main(resume) == 0
    assert "cut short" in caplog.text and _epochs(run) == [1, 2, 3]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(["{not json", *lines[1:]]) + "\n")
    assert main([*resume[:-1], "train.epochs=4"]) == 2
    assert "metrics.jsonl, line 1, is damaged" in capsys.readouterr().err


def test_a_full_disk_keeps_the_old_summary(run, monkeypatch):
    before = (run / "summary.json").read_bytes()
    real_write = files.os.write

    def full(fd, data):
        if b'"final"' in bytes(data):
            raise OSError(28, "No space left on device (simulated)")
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        T.fit(small_cfg("train.epochs=3"), run, resume=True, progress=False, figures=False)
    assert (run / "summary.json").read_bytes() == before


# ---------------------------------------------------------------- nothing lost to a new run


def test_overwrite_with_a_bad_setting_touches_nothing(run, capsys):
    before = _snapshot(run)
    bad = [
        "train",
        "--out",
        str(run),
        "--overwrite",
        "--no-progress",
        *_sets(*SMALL, "data.name=array", "data.root=/nonexistent/x.npy"),
    ]
    assert main(bad) == 2
    assert "data.root" in capsys.readouterr().err
    assert _snapshot(run) == before
    assert main(["train", "--resume", str(run), "--no-progress", "--no-figures", *_sets("train.epochs=3")]) == 0


def test_overwrite_keeps_the_old_run_until_the_first_checkpoint(run, monkeypatch):
    before = _snapshot(run)
    argv = ["train", "--out", str(run), "--overwrite", "--no-progress", "--no-figures", *_sets(*SMALL)]

    def fails(self, stop):
        raise RuntimeError("the first epoch failed (simulated)")

    monkeypatch.setattr(T.Trainer, "train_epoch", fails)
    with pytest.raises(RuntimeError, match="simulated"):
        main(argv)
    monkeypatch.undo()
    assert _snapshot(run) == before
    assert not (run / ".replaced").exists()
    assert main(argv) == 0  # now it goes through: the old run is gone, the new one is complete
    assert not (run / ".replaced").exists() and _epochs(run) == [1, 2]


@pytest.mark.parametrize("name", ["config.toml", "metrics.jsonl", "summary.json", "plugins.json"])
def test_a_new_run_never_replaces_someone_elses_files(tmp_path, capsys, name):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_text("my own notes\n")
    argv = ["train", "--out", str(folder), "--no-progress", "--no-figures", *_sets(*SMALL, "train.epochs=1")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert name in err and "--overwrite" in err
    assert sorted(p.name for p in folder.iterdir()) == [name] and (folder / name).read_text() == "my own notes\n"


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    argv = ["train", "--out", str(folder), "--no-progress", "--no-figures", *_sets(*SMALL, "train.epochs=1")]

    def killed(self, stop):
        raise Killed

    monkeypatch.setattr(T.Trainer, "train_epoch", killed)
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.undo()
    assert (folder / "config.toml").is_file() and not (folder / "checkpoints" / "last.pt").exists()
    assert main(argv) == 0


def test_a_bad_new_run_leaves_no_folder(tmp_path, capsys):
    folder = tmp_path / "new"
    assert (
        main(
            [
                "train",
                "--out",
                str(folder),
                "--no-progress",
                *_sets(*SMALL, "data.name=array", "data.root=/nonexistent/x.npy"),
            ]
        )
        == 2
    )
    assert not folder.exists()


def test_out_that_is_a_file_and_a_checkpoint_that_is_a_folder(run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", "--out", str(afile), "--no-progress", *_sets(*SMALL)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "x"
    (run / "checkpoints" / "best.pt").unlink()
    (run / "checkpoints" / "best.pt").mkdir()
    assert main(["train", "--resume", str(run), "--no-progress", *_sets("train.epochs=3")]) == 2
    assert "best.pt is a folder" in capsys.readouterr().err
    assert _epochs(run) == [1, 2]  # refused before it trained


def test_export_replaces_files_only_with_overwrite(run, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "README.md" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == ["README.md"]
    assert main(["export", str(run), "--out", str(out), "--overwrite"]) == 0
    assert (out / "README.md").read_text().startswith("# pyro-vae model")


def test_a_second_training_in_the_same_folder_is_refused(run, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pyro_vae.runs.folder import RunDir; "
            "from pyro_vae.runs.writer import RunLock; RunLock(RunDir(Path(sys.argv[1]))).acquire(); print('held', "
            "flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(run)
        started = time.perf_counter()
        assert main(["train", "--resume", str(run), "--no-progress", *_sets("train.epochs=3")]) == 2
        assert main(["train", "--out", str(run), "--overwrite", "--no-progress", *_sets(*SMALL)]) == 2
        err = capsys.readouterr().err
        assert err.count(f"is being written by process {holder.pid}") == 2
        assert time.perf_counter() - started < 30 and _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(run), "--no-progress", "--no-figures", *_sets("train.epochs=3")]) == 0


def test_a_damaged_checkpoint_is_named_when_resumed_or_opened(run, capsys):
    import torch

    from pyro_vae.runs.checkpoint import load_checkpoint, save_checkpoint

    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    save_checkpoint({k: v for k, v in state.items() if k not in ("optim", "format_version")}, last)
    assert main(["train", "--resume", str(run), "--no-progress", *_sets("train.epochs=3")]) == 2
    assert "last.pt cannot be resumed: no optim" in capsys.readouterr().err
    state["model"] = {k: torch.zeros(1) for k in state["model"]}
    save_checkpoint({k: v for k, v in state.items() if k != "format_version"}, last)
    assert main(["train", "--resume", str(run), "--no-progress", *_sets("train.epochs=3")]) == 2
    assert "last.pt cannot be resumed: tensor" in capsys.readouterr().err
    save_checkpoint({k: v for k, v in state.items() if k not in ("config", "format_version")}, last)
    assert main(["evaluate", str(run), "--checkpoint", "last", "--k", "2", *QUIET]) == 2
    assert "last.pt holds no config table" in capsys.readouterr().err
    assert _epochs(run) == [1, 2]
