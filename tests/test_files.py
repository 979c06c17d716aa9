"""pyro_vae.files: writes stay inside their folder (no link followed) and every rewrite is atomic."""

from __future__ import annotations

import errno
import os

import pytest

from pyro_vae import files
from pyro_vae.files import UnsafePath, append_line, check_regular, write_atomic


def test_write_atomic_makes_folders_inside_and_replaces_the_file(tmp_path):
    path = write_atomic(tmp_path / "a" / "b" / "f.txt", "one", tmp_path)
    write_atomic(path, b"two", tmp_path)
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]  # no temporary file left


def test_a_link_to_a_file_outside_is_refused_and_the_victim_kept(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "out.json").symlink_to(victim)
    for write in (
        lambda: write_atomic(folder / "out.json", "{}", folder),
        lambda: append_line(folder / "out.json", "{}", folder),
    ):
        with pytest.raises(UnsafePath, match="out.json is a symbolic link"):
            write()
    assert victim.read_text() == "precious"


def test_a_linked_folder_is_refused_and_nothing_written_through_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "latent").symlink_to(elsewhere)
    with pytest.raises(UnsafePath, match="latent is a symbolic link"):
        write_atomic(folder / "latent" / "deep" / "samples.png", b"png", folder)
    assert list(elsewhere.iterdir()) == []
    (folder / "figures").write_text("a file where a folder should be")
    with pytest.raises(UnsafePath, match="figures is not a regular file|figures is"):
        write_atomic(folder / "figures" / "x.png", b"png", folder)


def test_the_folder_the_user_named_may_itself_be_a_link(tmp_path):
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "runs").symlink_to(real)
    write_atomic(tmp_path / "runs" / "x.txt", "ok")
    assert (real / "x.txt").read_text() == "ok"


def test_a_write_stopped_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "summary.json", "old")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    monkeypatch.setattr(files.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "new" * 1000)
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_kill_between_write_and_rename_leaves_the_old_file(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "metrics.jsonl", "line 1\nline 2\n")

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(Killed):
        write_atomic(path, "")
    assert path.read_text() == "line 1\nline 2\n"


def test_check_regular_names_what_is_there(tmp_path):
    (tmp_path / "best.pt").mkdir()
    with pytest.raises(UnsafePath, match="best.pt is a folder"):
        check_regular(tmp_path / "best.pt", "checkpoint file")
    os.symlink("/nonexistent", tmp_path / "dangling")
    with pytest.raises(UnsafePath, match="symbolic link"):
        check_regular(tmp_path / "dangling")
    check_regular(tmp_path / "missing")  # absent is fine
