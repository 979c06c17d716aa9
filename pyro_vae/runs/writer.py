"""Who may write a run folder, and how a new run replaces an old one without losing it.

- **One writer**: training holds an advisory lock (``flock``) on ``RUN/.pyro-vae.lock`` for as long
  as it runs; a second ``pyro-vae train`` on the same folder is refused (:class:`RunFolderBusy`,
  exit status 2) naming the process that holds it. The lock dies with its process (kill -9 included).
- **Nothing that is not ours is replaced**: a new run goes into a folder that is missing, empty of
  the files a run writes, or one that pyro-vae made and that never reached its first checkpoint (a
  run killed early starts again without ``--overwrite``). A folder with someone's ``config.toml``,
  ``metrics.jsonl``, ``summary.json``, ``plugins.json`` or ``checkpoints/`` needs ``--overwrite``.
- **Checked, then moved aside, then deleted**: ``--overwrite`` touches nothing until the new run's
  config, data and model have been built and checked (:func:`pyro_vae.training.loop.fit`); the
  old run's files are then moved into ``RUN/.replaced/``, put back if the new run fails before its
  first checkpoint, and deleted once it has one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
from pathlib import Path

from pyro_vae.config import ConfigError
from pyro_vae.files import UnsafePath, check_regular, open_folder
from pyro_vae.runs.folder import RunDir

# What a run writes at its top level: a folder holding any of these holds a run (or someone's files).
RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "plugins.json", "checkpoints", "figures", "tensorboard")


class RunFolderBusy(ConfigError):
    """Another process is training into the run folder."""


class RunLock:
    """The advisory lock of one run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run: RunDir) -> None:
        self.run, self.fd, self.created = run, None, False

    def acquire(self) -> RunLock:
        existed = os.path.lexists(self.run.lock)
        with open_folder(self.run.root) as dir_fd:
            try:
                fd = os.open(self.run.lock.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
            except OSError:
                check_regular(self.run.lock, "lock file")
                raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(f"{self.run.lock} is not a regular file; remove it")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusy(
                f"{self.run.root} is being written by {holder}: two trainings in one run folder would "
                "mix their epochs. Wait for it to end, or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} (pyro-vae train)\n".encode(), 0)
        self.fd, self.created = fd, not existed
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def check_new_run(run: RunDir, overwrite: bool, lock_existed: bool) -> None:
    """Refuse to start a new run in ``run`` unless it may: see the module's docstring. Reads only."""
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"--out {run.root} is a file; give a folder for the run (it is made if missing)")
    for path in (run.last, run.best):
        check_regular(path, "checkpoint file")
    present = [name for name in RUN_FILES if os.path.lexists(run.root / name)]
    if overwrite or not present:
        return
    if os.path.lexists(run.replaced):
        raise ConfigError(
            f"{run.replaced} holds the run that an interrupted --overwrite was replacing: move its files "
            f"back into {run.root} to keep it, or pass --overwrite again to replace it"
        )
    if os.path.lexists(run.last):
        raise ConfigError(
            f"{run.root} already holds a run; continue it with --resume {run.root}, pass --overwrite "
            "to replace it, or choose another --out"
        )
    if not lock_existed:
        raise ConfigError(
            f"{run.root} holds files that pyro-vae did not write there ({', '.join(present)}); a new run "
            "would replace them. Choose another --out, or pass --overwrite to replace them"
        )
    # A run of ours killed before its first checkpoint: it starts again in place.


def move_aside(run: RunDir) -> list[str]:
    """Move the run files of ``run`` (:data:`RUN_FILES`) into ``RUN/.replaced``; returns their names.
    A ``.replaced`` left by an interrupted overwrite is kept (it holds the older, complete run)."""
    present = [name for name in RUN_FILES if os.path.lexists(run.root / name)]
    if not present:
        return []
    if os.path.lexists(run.replaced):
        if not os.path.lexists(run.last):  # the files here are an unfinished replacement's
            for name in present:
                _remove(run.root / name)
            return []
        _remove(run.replaced)
    run.replaced.mkdir()
    for name in present:
        os.replace(run.root / name, run.replaced / name)
    return present


def restore(run: RunDir, moved: list[str]) -> None:
    """Undo :func:`move_aside`: remove what the new run wrote and put the old run back."""
    for name in moved:
        if os.path.lexists(run.root / name):
            _remove(run.root / name)
        os.replace(run.replaced / name, run.root / name)
    if os.path.lexists(run.replaced) and not any(run.replaced.iterdir()):
        run.replaced.rmdir()


def drop_replaced(run: RunDir) -> None:
    """Delete the replaced run once the new one has its first checkpoint."""
    if os.path.lexists(run.replaced):
        _remove(run.replaced)


def _remove(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree (links inside are unlinked, not followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
