"""Writing files inside a folder: never through a symbolic link, every rewrite atomic.

A run folder, a model folder or an output folder may come from someone else, so what pyro-vae
writes there must stay there: each folder below the one the user named is opened with
``O_NOFOLLOW`` (a symbolic link, or a file where a folder should be, is refused with
:class:`UnsafePath`), and a file is written to a new temporary file beside it, flushed to disk and
renamed over the old one, so that a crash, a kill or a full disk leaves the old file or the new
one, never half of either. A file that is a symbolic link (or a folder) is refused, not replaced.

The folder the user named (``inside``) may itself be a link: that is the user's choice of path.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UnsafePath(ValueError):
    """A path inside a folder is a symbolic link, or not the kind of entry it must be."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _parts(path: Path, inside: Path) -> tuple[str, ...]:
    try:
        parts = path.relative_to(inside).parts
    except ValueError:
        raise UnsafePath(f"{path} is not inside {inside}") from None
    if not parts or ".." in parts:
        raise UnsafePath(f"{path} must name a file inside {inside}")
    return parts


def _kind(mode: int) -> str:
    """What a directory entry of ``mode`` is, for a refusal."""
    return "a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def _refuse(dir_fd: int, name: str, where: Path, want: str) -> UnsafePath:
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        return UnsafePath(f"{where} disappeared while it was opened")
    return UnsafePath(
        f"{where} is {_kind(mode)}; pyro-vae writes only {want} inside the folder it was given and never "
        "follows a link out of it: remove or rename it"
    )


@contextmanager
def open_folder(folder: Path, inside: Path | None = None, create: bool = True) -> Iterator[int]:
    """A file descriptor of ``folder``, made (with its parents) when ``create``; every folder below
    ``inside`` (default: ``folder`` itself) is opened without following a link."""
    folder = Path(folder)
    inside = Path(inside) if inside is not None else folder
    parts = () if folder == inside else _parts(folder, inside)
    if create:
        if inside.is_file():
            raise UnsafePath(f"{inside} is a file; give a folder")
        inside.mkdir(parents=True, exist_ok=True)
    fd = os.open(inside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        where = inside
        for part in parts:
            where = where / part
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise _refuse(fd, part, where, "files in folders") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: str | Path, data: bytes | str, inside: str | Path | None = None) -> Path:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename, fsync of the
    folder), creating the folders between ``inside`` (default: ``path``'s folder) and it. Refuses
    (:class:`UnsafePath`) a link anywhere below ``inside`` and a ``path`` that is not a regular file."""
    path = Path(path)
    inside = Path(inside) if inside is not None else path.parent
    name = _parts(path, inside)[-1]
    payload = data.encode() if isinstance(data, str) else bytes(data)
    with open_folder(path.parent, inside) as dir_fd:
        try:
            if not stat.S_ISREG(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise _refuse(dir_fd, name, path, "regular files")
        except FileNotFoundError:
            pass
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dir_fd)
    return path


def append_line(path: str | Path, line: str, inside: str | Path | None = None) -> Path:
    """Append ``line`` (a newline is added) to ``path`` and make it durable (fsync); the file is
    created if missing and refused if it is a link or not a regular file."""
    path = Path(path)
    inside = Path(inside) if inside is not None else path.parent
    name = _parts(path, inside)[-1]
    with open_folder(path.parent, inside) as dir_fd:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise _refuse(dir_fd, name, path, "regular files") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _refuse(dir_fd, name, path, "regular files")
            _write_all(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def figure_bytes(fig, **savefig_kw) -> bytes:
    """A matplotlib figure as PNG bytes (for :func:`write_atomic`)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kw)
    return buffer.getvalue()


def check_regular(path: str | Path, what: str = "file") -> None:
    """Refuse (:class:`UnsafePath`) a ``path`` that exists but is a link or not a regular file."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UnsafePath(
            f"{path} is {_kind(mode)}, not a {what}: pyro-vae reads and writes only regular files inside a "
            "run or model folder; remove or rename it"
        )
