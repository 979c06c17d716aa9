from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.config import ModelConfig
from pyro_vae.model import build_vae
from tests.helpers import SHARED_DATA

# The longest tests first (seconds on one core in brackets), so that under
# `pytest -n 2 --dist worksteal` they start early and the run does not end waiting on one of them:
# the docs build that test_docs.py's tests share, then tests that start processes or train.
# Only the order changes; a test missing from this list runs after them in collection order.
LONGEST_FIRST = (  # (their longest tests, 2026-12-03)
    "tests/test_docs.py",  # its build first (41), then the checks that read it, on the same worker
    "tests/training/test_fault_tolerance.py",  # (10 + 3)
    "tests/training/test_distributed.py",  # (15 + 6)
    "tests/test_benchmarks.py",  # (13, 9, 6, ...)
    "tests/objectives/test_elbos.py::test_every_elbo_recovers_the_exact_conjugate_posterior",  # (2-9 each)
    "tests/runs/test_checkpoint.py",  # (7)
    "tests/training/test_train.py",  # (5, 2, ...)
    "tests/data/test_data.py",  # (2, ...)
)


def _rank(item) -> int:
    return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    """The longest tests first (:data:`LONGEST_FIRST`); tests marked ``cuda`` run where a GPU is and
    are skipped, saying why, where none is."""
    items.sort(key=_rank)  # stable: the collection order within each group
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on a two-core host: one thread each (and for the processes they start), so that the
    # workers do not fight over the cores; `make test` runs them (pytest -n 2), `pytest` alone runs one.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cpu_kernel_choice_stays_in_its_test():
    """The command and the benchmarks, run in this process by some tests, choose the CPU kernels
    (:func:`pyro_vae.cpu_kernels.choose`) through process-wide variables: undone after each test, so
    that no later test's processes inherit them."""
    names = ("ATEN_CPU_CAPABILITY", "TORCHINDUCTOR_CACHE_DIR")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} (the project's shared data folder) is not beside the checkout")
    return SHARED_DATA


@pytest.fixture
def tiny_vae64():
    """A small default-architecture VAE in float64 (D=20, L=3) and binary data for it."""
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(latent_dim=3, hidden=(16,)), data_dim=20).double()
    x = torch.bernoulli(torch.full((6, 20), 0.3, dtype=torch.float64))
    return vae, x


def _write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path, shared_data):
    """The real MNIST test files, plus a 300-image stand-in for the training files (not shipped)."""
    images = np.frombuffer(gzip.open(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    images = images.reshape(-1, 28, 28)
    for folder in ("MNIST", "FashionMNIST"):  # Fashion-MNIST has the same layout; MNIST digits stand in
        raw = tmp_path / folder / "raw"
        raw.mkdir(parents=True)
        _write_idx(raw / "t10k-images-idx3-ubyte", images, 2051)
        _write_idx(raw / "t10k-labels-idx1-ubyte", labels, 2049)
        _write_idx(raw / "train-images-idx3-ubyte", images[:300], 2051)
        _write_idx(raw / "train-labels-idx1-ubyte", labels[:300], 2049)
    return tmp_path
