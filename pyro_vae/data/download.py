"""Downloads for users who are online: a file is fetched to a temporary name beside its target,
checked, and moved into place only then, so an interrupted or wrong download leaves nothing."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def fetch(url: str, target: Path, check: Callable[[Path], None]) -> Path:
    """Download ``url`` to ``target``; ``check(path)`` raises ``ValueError`` for a wrong file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        check(Path(tmp))
        os.replace(tmp, target)
    except OSError as exc:
        raise ValueError(f"could not download {url}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
