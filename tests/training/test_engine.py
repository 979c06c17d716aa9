"""The step engines (pyro_vae.training.engine): the choice of engine, the device-side step (batch gather,
warm-up weight, accumulators, non-finite flag) against a hand-written loop, the host-read cadence
in ``fit``, the compiled engine on the CPU, and (marked ``cuda``) capture in a CUDA graph."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from pyro_vae.config import ConfigError, load_config
from pyro_vae.data.pixels import decode
from pyro_vae.model import build_vae
from pyro_vae.objectives.fast import build_loss
from pyro_vae.runs.checkpoint import load_checkpoint
from pyro_vae.training import loop as T
from pyro_vae.training.engine import (
    CAPTURE_CUDNN,
    Choice,
    StepEngine,
    _init_optimizer_state,
    choose_engine,
    cudnn_for_capture,
    make_optimizer,
    train_step,
)
from pyro_vae.training.stopping import TrainingInterrupted
from tests.helpers import assert_same_last_weights, metrics, small_cfg

EAGER = Choice("eager", False, False)
CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    "requested, device, fast, ddp, expected",
    [
        ("auto", CPU, True, False, ("compiled", False, False, False)),
        ("auto", CPU, False, False, ("eager", False, False, True)),
        ("auto", CPU, True, True, ("eager", False, False, True)),
        ("auto", GPU, True, False, ("graph", True, False, False)),
        ("auto", GPU, False, False, ("eager", False, False, True)),
        ("auto", GPU, True, True, ("eager", False, False, True)),
        ("graph", CPU, True, False, ("eager", False, False, True)),
        ("eager", GPU, True, False, ("eager", False, False, False)),
        ("compiled", CPU, True, False, ("compiled", False, False, False)),
        ("compiled", CPU, True, True, ("compiled", False, True, False)),
        ("compiled", GPU, True, False, ("compiled", True, True, False)),
        ("compiled", GPU, True, True, ("compiled", False, True, False)),
        ("compiled", CPU, False, False, ("eager", False, False, True)),
    ],
)
def test_engine_choice_and_the_reason_for_a_fallback(requested, device, fast, ddp, expected):
    choice = choose_engine(requested, device, fast, ddp)
    assert (choice.name, choice.capture, choice.compile_loss, choice.reason is not None) == expected
    assert choice.whole == (choice.name == "compiled" and device == CPU and not ddp)  # the whole step, on a CPU
    if choice.reason:
        assert choice.reason.startswith(f"train.engine={requested} runs eagerly: ")


@pytest.mark.parametrize("device, expected", [(CPU, ("eager", False)), (GPU, ("graph", True))])
def test_estimators_with_gradient_hooks_are_not_compiled(device, expected):
    choice = choose_engine("compiled", device, True, False, compilable=False)
    assert (choice.name, choice.capture, choice.compile_loss) == (*expected, False)
    assert "hooks on z" in choice.reason


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="train.engine must be one of"):
        choose_engine("fast", CPU, True, False)


def _setup(seed=0, n=300, particles=1, elbo="trace", dim=12):
    cfg = load_config(
        None, [f"train.elbo={elbo}", f"train.num_particles={particles}", "model.latent_dim=3", "model.hidden=8"]
    )
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, dim, generator=gen) * 255).to(torch.uint8)  # stored levels, decoded per batch
    torch.manual_seed(seed)
    vae = build_vae(cfg.model, dim)
    optim = make_optimizer(vae, 1e-2)
    loss = build_loss(vae, cfg.train, decode(x[:8]))
    return vae, optim, loss, x


def _params(vae):
    return [p.detach().clone() for p in vae.parameters()]


@pytest.mark.parametrize(
    "binarize, warmup, kl_weight", [(False, 0.0, 1.0), (True, 7.0, 1.0), (False, 0.0, 4.0), (False, 7.0, 4.0)]
)
def test_the_engine_step_equals_a_hand_written_loop(binarize, warmup, kl_weight):
    """Same permutation, seed and steps: the engine's device-side gather, decoding, binarization,
    warm-up weight and accumulators give the parameters and loss sum of ``train_step`` in a loop."""
    bs, perm = 64, torch.randperm(300, generator=torch.Generator().manual_seed(1))
    vae_a, optim_a, loss_a, x = _setup()
    engine = StepEngine(loss_a, optim_a, x, bs, EAGER, binarize=binarize, warmup_steps=warmup, kl_weight=kl_weight)
    vae_b, optim_b, loss_b, _ = _setup()
    pyro.set_rng_seed(5)
    engine.start_epoch(perm)
    for _ in range(5):
        engine.step()
    reading = engine.read()
    pyro.set_rng_seed(5)
    total = 0.0
    for i in range(5):
        xb = decode(x[perm[i * bs : (i + 1) * bs]])
        xb = torch.bernoulli(xb) if binarize else xb
        beta = kl_weight * min((i + 1) / warmup, 1.0) if warmup else (kl_weight if kl_weight != 1 else None)
        total += train_step(loss_b, optim_b, xb, beta).item() * xb.shape[0]
    assert engine.size(4) == 300 - 4 * 64 == 44
    assert reading.bad_step is None and math.isclose(reading.total, total, rel_tol=1e-6)
    for a, b in zip(_params(vae_a), _params(vae_b)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_normalized_gradients_are_adam_fed_each_gradient_over_its_norm(normalize):
    """``train.normalize_grads`` (Tomczak & Welling's AdamNormGrad): the engine's step is PyTorch's
    reference Adam (unfused) fed every gradient divided by its L2 norm + 1e-7; without it the same
    reference does not match (the control)."""
    bs, perm = 64, torch.randperm(300, generator=torch.Generator().manual_seed(1))
    vae_a, optim_a, loss_a, x = _setup()
    engine = StepEngine(loss_a, optim_a, x, bs, EAGER, normalize_grads=True)
    vae_b, _, loss_b, _ = _setup()
    reference = torch.optim.Adam(vae_b.parameters(), lr=1e-2, foreach=False)
    pyro.set_rng_seed(5)
    engine.start_epoch(perm)
    for _ in range(3):
        engine.step()
    assert engine.read().bad_step is None
    pyro.set_rng_seed(5)
    for i in range(3):
        reference.zero_grad()
        (loss_b(decode(x[perm[i * bs : (i + 1) * bs]])) / bs).backward()
        if normalize:
            for p in vae_b.parameters():
                p.grad /= torch.linalg.vector_norm(p.grad) + 1e-7
        reference.step()
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(_params(vae_a), _params(vae_b)))
    assert same == normalize
    norms = [torch.linalg.vector_norm(p.grad).item() for p in vae_a.parameters()]
    assert all(abs(n - 1) < 1e-5 for n in norms), norms  # the engine's last gradients, normalised


def test_a_non_finite_loss_is_flagged_on_the_device_and_no_later_step_moves_the_parameters():
    bs, perm, bad_at = 50, torch.arange(300), 3
    vae, optim, loss, x = _setup()
    calls = {"n": 0}

    def poisoned(xb):
        calls["n"] += 1
        value = loss(xb)
        return value * float("inf") if calls["n"] == bad_at + 1 else value

    engine = StepEngine(poisoned, optim, x, bs, EAGER)
    engine.start_epoch(perm, step=10)
    for _ in range(bad_at):
        engine.step()
    good, before = engine.read(), _params(vae)
    for _ in range(6 - bad_at):  # the bad step and two more: every update is skipped
        engine.step()
    reading = engine.read()
    assert good.bad_step is None and reading.bad_step == 10 + bad_at and math.isinf(reading.bad_value)
    assert reading.total == good.total  # only good steps are summed
    assert all(torch.equal(a, b) for a, b in zip(before, _params(vae)))
    assert all(int(s["step"]) == bad_at for s in optim.state.values())  # Adam's step counts the good ones only
    assert torch.equal(engine.images(bad_at), decode(x[perm[bad_at * bs : (bad_at + 1) * bs]]))


def test_initialising_the_optimizer_state_changes_nothing():
    """The state a capture restores to (zero moments, step 0) behaves exactly as a fresh Adam."""
    vae_a, optim_a, loss_a, x = _setup()
    vae_b, optim_b, loss_b, _ = _setup()
    before = _params(vae_a)
    _init_optimizer_state(optim_a)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(vae_a)))
    assert all(int(s["step"]) == 0 and not s["exp_avg"].any() for s in optim_a.state.values())
    assert all(p.grad is None for p in vae_a.parameters())
    for optim, loss, seed in ((optim_a, loss_a, 3), (optim_b, loss_b, 3)):
        torch.manual_seed(seed)
        train_step(loss, optim, decode(x[:32]))
    assert all(torch.equal(a, b) for a, b in zip(_params(vae_a), _params(vae_b)))


def test_host_reads_follow_sync_every_and_do_not_change_the_result(tmp_path, monkeypatch):
    reads = []
    real_read = StepEngine.read

    def counted(self):
        reads.append(self._next)
        return real_read(self)

    every_step, sparse = tmp_path / "every", tmp_path / "sparse"
    T.fit(small_cfg("train.epochs=2", "train.batch_size=50"), every_step, progress=False, figures=False)
    monkeypatch.setattr(StepEngine, "read", counted)
    T.fit(
        small_cfg("train.epochs=2", "train.batch_size=50", "train.sync_every=3"), sparse, progress=False, figures=False
    )
    assert reads == [3, 6, 8] * 2  # every third step and the epoch's last (8 batches of 384 images)
    assert_same_last_weights(every_step, sparse)
    assert metrics(every_step) == metrics(sparse)


def test_a_signal_between_sparse_reads_stops_at_the_next_read_and_resumes_exactly(tmp_path, monkeypatch):
    import os
    import signal

    cfg = ("train.epochs=2", "train.batch_size=50", "train.sync_every=3")
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    T.fit(small_cfg(*cfg), straight, progress=False, figures=False)
    real_step = StepEngine.step

    def step(self):
        if self._next == 1 and self.step_count.item() == 9:  # epoch 2, batch 2
            os.kill(os.getpid(), signal.SIGINT)
        real_step(self)

    monkeypatch.setattr(StepEngine, "step", step)
    with pytest.raises(TrainingInterrupted, match=r"stopped after step 11 \(epoch 2, batch 3 of 8\)"):
        T.fit(small_cfg(*cfg), stopped, progress=False, figures=False)
    assert load_checkpoint(stopped / "checkpoints" / "last.pt")["partial"]["batch"] == 3
    monkeypatch.setattr(StepEngine, "step", real_step)
    T.fit(small_cfg(*cfg), stopped, resume=True, progress=False, figures=False)
    assert_same_last_weights(straight, stopped)
    assert metrics(straight) == metrics(stopped)


def test_an_engine_that_cannot_run_here_falls_back_with_one_warning(tmp_path, caplog):
    with caplog.at_level("INFO", logger="pyro_vae.training.loop"):
        summary = T.fit(
            small_cfg("train.epochs=1", "train.engine=graph"), tmp_path / "r", progress=False, figures=False
        )
    lines = [r for r in caplog.records if "runs eagerly" in r.getMessage()]
    assert summary["engine"] == "eager" and len(lines) == 1 and lines[0].levelname == "WARNING"
    assert lines[0].getMessage() == "train.engine=graph runs eagerly: CUDA graphs need a CUDA device"


def test_matmul_precision_is_recorded_and_restored(tmp_path):
    before = torch.get_float32_matmul_precision()
    summary = T.fit(
        small_cfg("train.epochs=1", "train.matmul_precision=high"), tmp_path / "r", progress=False, figures=False
    )
    assert summary["matmul_precision"] == "high" and summary["engine"] == "eager"
    assert torch.get_float32_matmul_precision() == before


def test_the_compiled_engine_trains_like_the_eager_one_on_the_cpu(tmp_path):
    eager = T.fit(small_cfg("train.epochs=2"), tmp_path / "eager", progress=False, figures=False)
    compiled = T.fit(
        small_cfg("train.epochs=2", "train.engine=compiled"), tmp_path / "compiled", progress=False, figures=False
    )
    assert compiled["engine"] == "compiled"
    a = json.loads((tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()[-1])
    b = json.loads((tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()[-1])
    # The same draws; the compiled kernels fuse and reorder float32 arithmetic, so not bit-exact.
    assert abs(a["train_neg_elbo"] - b["train_neg_elbo"]) < 1e-2 * abs(a["train_neg_elbo"])
    assert eager["engine"] == "eager"


# -- CUDA ------------------------------------------------------------------------------------------
def _cuda_setup(**kw):
    vae, optim, loss, x = _setup(**kw)
    vae.cuda()
    optim = make_optimizer(vae, 1e-2)
    return vae, optim, loss, x.cuda()


@pytest.mark.cuda
def test_the_eager_step_never_waits_for_the_host_on_cuda():
    vae, optim, loss, x = _cuda_setup()
    engine = StepEngine(loss, optim, x, 64, EAGER, binarize=True, warmup_steps=5.0)
    engine.start_epoch(torch.randperm(300, device="cuda"))
    engine.step()  # lazy initialisation may synchronise once
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            engine.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert engine.read().bad_step is None


@pytest.mark.cuda
@pytest.mark.parametrize("elbo, particles", [("trace", 1), ("mean_field", 1), ("iwae", 3), ("trace", 4)])
def test_the_captured_step_equals_the_eager_step(elbo, particles):
    """100 steps (4 epochs of 5 batches, the last one short) from the same seed, captured and eager:
    the same random numbers (the graph replays the philox offsets the eager kernels advance), so
    parameters agree to float tolerance."""
    results = []
    for choice in (EAGER, Choice("graph", True, False)):
        vae, optim, loss, x = _cuda_setup(elbo=elbo, particles=particles)
        engine = StepEngine(loss, optim, x, 64, choice, binarize=True, warmup_steps=30.0)
        torch.manual_seed(0)
        total = 0.0
        for epoch in range(20):
            engine.start_epoch(
                torch.randperm(300, generator=torch.Generator().manual_seed(epoch)).cuda(), step=5 * epoch
            )
            for _ in range(5):
                engine.step()
            reading = engine.read()
            assert reading.bad_step is None
            total += reading.total
        results.append((_params(vae), total))
    (eager, eager_total), (graph, graph_total) = results
    assert math.isclose(eager_total, graph_total, rel_tol=1e-4)
    for a, b in zip(eager, graph):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_a_non_finite_loss_under_capture_is_flagged_and_skipped():
    vae, optim, loss, x = _cuda_setup()
    bomb = torch.ones((), device="cuda")
    engine = StepEngine(lambda xb: loss(xb) * bomb, optim, x, 50, Choice("graph", True, False))
    engine.start_epoch(torch.arange(300, device="cuda"))
    engine.step()
    engine.step()
    before = _params(vae)
    bomb.fill_(float("nan"))
    engine.step()
    bomb.fill_(1.0)
    engine.step()
    reading = engine.read()
    assert reading.bad_step == 2 and math.isnan(reading.bad_value)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(vae)))


@pytest.mark.cuda
def test_a_graph_run_resumes_bit_for_bit(tmp_path):
    cfg = ("train.device=cuda", "train.engine=graph")
    straight, split = tmp_path / "straight", tmp_path / "split"
    summary = T.fit(small_cfg("train.epochs=3", *cfg), straight, progress=False, figures=False)
    assert summary["engine"] == "graph"
    T.fit(small_cfg("train.epochs=1", *cfg), split, progress=False, figures=False)
    T.fit(small_cfg("train.epochs=3", *cfg), split, resume=True, progress=False, figures=False)
    assert_same_last_weights(straight, split)
    assert metrics(straight) == metrics(split)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "extra",
    [
        ("model.prior=mixture_of_gaussians", "model.mixture_of_gaussians.components=4"),
        ("model.prior=vamp", "model.vamp.components=4"),
        ("model.prior=student_t",),
        ("model.guide=iaf",),
        ("model.likelihood=continuous_bernoulli",),
        ("train.elbo=mean_field", "train.kl_warmup_epochs=1"),
        ("train.elbo=iwae", "train.num_particles=3"),
        ("train.elbo=stl",),
        ("train.elbo=iwae_dreg", "train.num_particles=4"),
        ("train.elbo=miwae", "train.iw_groups=2"),
        ("train.elbo=ciwae", "train.num_particles=3"),
        ("train.elbo=piwae", "train.num_particles=2", "train.iw_groups=3"),
        ("model.network=gated_mlp",),
        ("model.network=conv", "model.conv.channels=[8,16]"),
        ("model.network=resnet", "model.resnet.channels=[8,16]", "model.prior=vamp", "model.vamp.components=4"),
    ],
)
def test_components_train_under_capture(tmp_path, extra):
    summary = T.fit(
        small_cfg("train.device=cuda", "train.engine=graph", *extra), tmp_path / "r", progress=False, figures=False
    )
    assert summary["engine"] == "graph" and math.isfinite(summary["final"]["test_neg_elbo"]["mean"])


def test_cudnn_is_held_fixed_for_a_capture_and_given_back():
    flags = torch.backends.cudnn
    names = list(CAPTURE_CUDNN)
    before = {name: getattr(flags, name) for name in names}
    try:
        flags.benchmark, flags.deterministic = False, True  # what a user may have set before training
        with cudnn_for_capture() as held:
            assert held == CAPTURE_CUDNN and {name: getattr(flags, name) for name in names} == CAPTURE_CUDNN
        assert (flags.benchmark, flags.deterministic) == (False, True)
        with pytest.raises(RuntimeError), cudnn_for_capture():
            raise RuntimeError("a failed capture")
        assert (flags.benchmark, flags.deterministic) == (False, True)
    finally:
        for name, value in before.items():
            setattr(flags, name, value)


@pytest.mark.cuda
def test_a_conv_capture_leaves_the_users_cudnn_flags_as_they_were(tmp_path):
    flags = torch.backends.cudnn
    before = (flags.benchmark, flags.deterministic)
    flags.benchmark, flags.deterministic = False, True
    try:
        cfg = small_cfg("train.device=cuda", "train.engine=graph", "model.network=conv", "model.conv.channels=[8,16]")
        summary = T.fit(cfg, tmp_path / "r", progress=False, figures=False)
        assert summary["engine"] == "graph" and (flags.benchmark, flags.deterministic) == (False, True)
    finally:
        flags.benchmark, flags.deterministic = before


@pytest.mark.cuda
def test_a_step_a_graph_cannot_hold_is_refused_by_name_and_runs_eagerly_under_auto(tmp_path):
    iaf_dreg = ("model.guide=iaf", "train.elbo=iwae_dreg", "train.num_particles=3", "train.device=cuda")
    with pytest.raises(ConfigError, match="cannot hold a host sync"):
        T.fit(small_cfg("train.engine=graph", *iaf_dreg), tmp_path / "named", progress=False, figures=False)
    summary = T.fit(small_cfg("train.engine=auto", *iaf_dreg), tmp_path / "auto", progress=False, figures=False)
    assert summary["engine"] == "eager" and math.isfinite(summary["final"]["test_neg_elbo"]["mean"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "elbo, k, m",
    [
        ("trace", 2, 1),
        ("mean_field", 1, 1),
        ("iwae", 3, 1),
        ("stl", 2, 1),
        ("miwae", 2, 2),
        ("ciwae", 3, 1),
        ("piwae", 2, 2),
    ],
)
def test_compiled_losses_give_the_eager_gradients(elbo, k, m):
    """torch.compile of every compilable fast loss: the same draws (inductor's own RNG switched to
    torch's) give the eager gradients. (iwae_dreg's gradient hook is lost in compilation, which is
    why the engine never compiles it.)"""
    import torch._inductor.config as inductor

    vae, _, loss, x = _setup(elbo=elbo, particles=k)
    if m > 1:
        cfg = load_config(None, [f"train.elbo={elbo}", f"train.num_particles={k}", f"train.iw_groups={m}"])
        loss = build_loss(vae, cfg.train, decode(x[:8]))
    xb = decode(x[:16])
    compiled = torch.compile(loss)
    pyro.set_rng_seed(1)
    eager = torch.autograd.grad(loss(xb), list(vae.parameters()))
    with inductor.patch(fallback_random=True):
        for _ in range(2):  # the first call compiles
            pyro.set_rng_seed(1)
            got = torch.autograd.grad(compiled(xb), list(vae.parameters()))
    for a, b in zip(eager, got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
