"""Data-parallel training with torch.distributed on CPU (gloo): two processes take the same
steps as one process working through the same global batches, and torchrun runs the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pyro
import pytest
import torch
import torch.multiprocessing as mp

from pyro_vae.cli import main as cli_main
from pyro_vae.config import ExperimentConfig, ModelConfig, TrainConfig
from pyro_vae.model import build_vae
from pyro_vae.objectives.fast import build_loss
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training import distributed
from pyro_vae.training.engine import make_optimizer, train_step
from tests.helpers import ROOT

WORLD, STEPS, GLOBAL_BATCH, D = 2, 4, 10, 16
CFG = ExperimentConfig(model=ModelConfig(latent_dim=3, hidden=(8,)), train=TrainConfig(elbo="trace"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data() -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((STEPS * GLOBAL_BATCH - 3, D), 0.3), generator=g)  # a short last batch
    perm = torch.randperm(x.shape[0], generator=g)
    return x, [perm[i : i + GLOBAL_BATCH] for i in range(0, x.shape[0], GLOBAL_BATCH)]


def _setup():
    pyro.set_rng_seed(0)  # every rank builds the same model (DDP would broadcast rank 0's anyway)
    vae = build_vae(CFG.model, D)
    x, batches = _data()
    return vae, make_optimizer(vae, 1e-2), build_loss(vae, CFG.train, x[:GLOBAL_BATCH]), x, batches


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    ctx = distributed.from_environment(use_cuda=False)
    vae, optim, loss_fn, x, batches = _setup()
    pyro.set_rng_seed(100 + ctx.rank)  # every rank draws its own z
    step_loss = distributed.wrap_loss(vae, loss_fn, ctx)
    losses = [
        train_step(step_loss, optim, x[distributed.shard(b, ctx)], None, len(b) / WORLD, ctx).item() for b in batches
    ]
    torch.save(
        {"params": {k: v.detach() for k, v in vae.named_parameters()}, "losses": losses},
        os.path.join(out, f"rank{rank}.pt"),
    )
    distributed.shutdown(ctx)  # a barrier first: a rank tearing gloo down while the other still talks aborts


def test_two_gloo_ranks_equal_one_process_on_the_same_global_batches(tmp_path):
    """Both ranks end with identical parameters, equal (float tolerance) to one process that,
    for every global batch, evaluates each rank's shard with that rank's random stream and steps on
    the global batch's mean negative ELBO. The losses reported on each rank are the global means."""
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, p0 in ranks[0]["params"].items():
        assert torch.equal(p0, ranks[1]["params"][name]), f"ranks disagree on {name}"
    assert ranks[0]["losses"] == ranks[1]["losses"]

    vae, optim, loss_fn, x, batches = _setup()
    streams = []
    for r in range(WORLD):
        pyro.set_rng_seed(100 + r)
        streams.append(torch.get_rng_state())
    losses = []
    for b in batches:
        total = 0.0
        for r in range(WORLD):
            torch.set_rng_state(streams[r])
            total = total + loss_fn(x[b[r::WORLD]])
            streams[r] = torch.get_rng_state()
        loss = total / len(b)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    for name, p in vae.named_parameters():
        assert torch.allclose(p, ranks[0]["params"][name], atol=1e-5, rtol=1e-5), name
    assert losses == pytest.approx(ranks[0]["losses"], rel=1e-5)


def _broadcast_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    ctx = distributed.from_environment(use_cuda=False)
    pyro.set_rng_seed(rank)  # every rank its own weights
    vae = build_vae(CFG.model, D)
    distributed.broadcast_module(vae, ctx)
    torch.save(vae.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    distributed.shutdown(ctx)


def test_broadcast_module_gives_every_rank_rank_0s_weights_in_place(tmp_path):
    """What a learning-rate drop relies on: only rank 0 reads best.pt, the others receive it."""
    mp.spawn(_broadcast_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    pyro.set_rng_seed(0)
    rank0 = build_vae(CFG.model, D).state_dict()
    for name, value in rank0.items():
        assert torch.equal(ranks[0][name], value) and torch.equal(ranks[1][name], value), name


def test_torchrun_trains_writes_once_and_resumes_exactly(tmp_path, capsys):
    run = tmp_path / "run"
    common = [
        "--set",
        "data.subset=256",
        "--set",
        "model.latent_dim=2",
        "--set",
        "model.hidden=16",
        "--set",
        "train.batch_size=64",
        "--set",
        "eval.iwae_k=5",
        "--no-progress",
        "--no-figures",
        "--set",
        "train.device=cpu",
    ]  # gloo, on any machine
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        "-m",
        "pyro_vae",
        "train",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        [*torchrun, "--out", str(run), "--set", "train.epochs=1", "--tensorboard", *common],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("run folder:") == 1  # rank 0 alone prints (and writes)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # and logs to TensorBoard
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2 and ckpt["step"] == 4
    again = subprocess.run(
        [*torchrun, "--resume", str(run), "--set", "train.epochs=2", *common[8:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 8
    straight = subprocess.run(
        [*torchrun, "--out", str(tmp_path / "straight"), "--set", "train.epochs=2", *common],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "1 + 1 resumed epochs differ from 2 straight ones"
    # one process (this one, through the command's own entry point) refuses a 2-process run's checkpoint
    assert cli_main(["train", "--resume", str(run), "--set", "train.epochs=3", *common[8:]]) == 2
    assert "written by 2 processes; resume it with as many" in capsys.readouterr().err


def test_more_processes_per_node_than_gpus_is_a_clear_error_before_any_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("a group was started"))
    with pytest.raises(
        ValueError,
        match=r"2 processes per node .* this machine has 1 GPU: NCCL needs one GPU per "
        r"process\. Start at most 1 \(torchrun --nproc_per_node=1\), or train on "
        r"the CPU with gloo \(--set train\.device=cpu\)",
    ):
        distributed.from_environment(use_cuda=True)
    distributed.check_gpus_per_node(2, 2)  # one process per GPU is fine


def test_every_reduction_the_loop_issues_is_on_the_groups_device(monkeypatch):
    """Under NCCL a CPU tensor fails at the first reduction ("No backend type associated with device
    type cpu", as the stop flag once did); all_sum refuses a tensor off the group's device on any
    backend, so the gloo runs above check every reduction the loop makes. Here an NCCL context is
    faked (no GPU needed): the stop flag is built on the group's device, a CPU tensor is refused."""
    from pyro_vae.training.stopping import any_rank

    nccl = distributed.Context(rank=0, world_size=2, cuda=True)
    reduced = []
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t, op=None: reduced.append(t.device))
    monkeypatch.setattr(distributed, "device", lambda ctx: torch.device("cpu"))  # stands in for cuda:LOCAL_RANK
    assert any_rank(False, nccl) is False and reduced == [torch.device("cpu")]
    monkeypatch.setattr(distributed, "device", lambda ctx: torch.device("meta"))
    with pytest.raises(ValueError, match="a collective on a cpu tensor, but this rank's process group works on meta"):
        distributed.all_sum(torch.zeros(1), nccl)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL data parallelism)")
def test_torchrun_on_two_gpus_trains_and_resumes(tmp_path):
    run = tmp_path / "run"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port",
        str(_free_port()),
        "-m",
        "pyro_vae",
        "train",
        "--no-progress",
        "--no-figures",
    ]
    common = ["--set", "data.subset=512", "--set", "train.device=cuda", "--set", "eval.iwae_k=5"]
    first = subprocess.run(
        [*torchrun, "--out", str(run), *common, "--set", "train.epochs=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["device"] == "cuda"
    again = subprocess.run(
        [*torchrun, "--resume", str(run), *common, "--set", "train.epochs=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.cuda
def test_torchrun_with_more_processes_than_gpus_fails_with_the_clear_error(tmp_path):
    procs = torch.cuda.device_count() + 1
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={procs}",
        "--master_port",
        str(_free_port()),
        "-m",
        "pyro_vae",
        "train",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cuda",
        "--no-progress",
        "--no-figures",
        "--set",
        "data.subset=256",
    ]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{procs} processes per node were started on CUDA" in result.stderr, result.stderr[-3000:]
    assert "Duplicate GPU" not in result.stderr and not (tmp_path / "run" / "checkpoints").exists()


def _torchrun_train(run, settings: list[str]) -> subprocess.CompletedProcess:
    """``pyro-vae train --out RUN --set S ...`` under torchrun: two gloo processes of one thread."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port())]
    argv += ["-m", "pyro_vae", "train", "--out", str(run), "--no-progress", "--no-figures"]
    return subprocess.run(
        [*argv, *[arg for setting in settings for arg in ("--set", setting)]],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "structure, report",
    [
        (["model.structure=hierarchical", "model.hierarchical.latent_dims=[2,2]"], "active_units"),
        (["model.structure=mixture", "model.mixture.components=3", "train.elbo=enum"], "clustering"),
        (["model.structure=semi_supervised", "train.elbo=enum", "data.labels=20"], "classification"),
    ],
    ids=["hierarchical", "mixture", "semi_supervised"],
)
def test_torchrun_trains_the_structures_beyond_one_latent(tmp_path, structure, report):
    """Two gloo processes train each structure (several layers; a class summed out; labelled
    images in every batch, sharded with their labels) and rank 0 alone writes its report."""
    run = tmp_path / "run"
    small = ["data.subset=256", "model.hidden=16", "train.batch_size=64", "eval.iwae_k=5", "train.epochs=1"]
    done = _torchrun_train(run, [*small, "train.device=cpu", *structure])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1
    assert load_checkpoint(run / "checkpoints" / "last.pt")["world_size"] == 2
    summary = json.loads((run / "summary.json").read_text())
    assert report in summary or report in summary["final"], sorted(summary)


def test_torchrun_makes_a_learning_rate_drop_on_every_rank(tmp_path):
    """Rank 0 reads best.pt and broadcasts it; both ranks restart Adam and go on in step (a rank
    that skipped the broadcast would hang the run; the timeout catches it)."""
    run = tmp_path / "run"
    settings = ["data.subset=384", "model.latent_dim=2", "model.hidden=16", "train.batch_size=64", "eval.iwae_k=5"]
    settings += ["train.device=cpu", "train.epochs=8", "train.lr=0.3", "train.patience=1", "train.lr_drops=1"]
    done = _torchrun_train(run, settings)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr_drops"] == 1, [(r["valid_neg_elbo"], r["lr"]) for r in rows]
    assert "learning-rate drops: 1)" in done.stdout
