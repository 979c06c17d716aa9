r"""Evaluation in nats per image: the negative ELBO and the importance-sampled negative
log-likelihood (the IWAE bound of Burda et al., 2016).

With :math:`w_k = p(x, z_k) / q(z_k | x)` and :math:`z_k \sim q(z | x)`:

.. math::

    \mathrm{ELBO} = \mathbb E_q[\log w],\qquad
    \log p(x) \ge \mathcal L_K = \mathbb E\Big[\log \tfrac1K \textstyle\sum_{k=1}^K w_k\Big]
    \ge \mathrm{ELBO},

and :math:`\mathcal L_K \uparrow \log p(x)` as :math:`K \to \infty`. Papers report
:math:`-\mathcal L_{5000}` averaged over the test set. Samples are streamed in chunks of K and
images so memory stays bounded; the log-sum-exp is accumulated exactly. :func:`layer_means` gives
every latent layer's guide means, from which :mod:`pyro_vae.evaluation.latent` counts the active units.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from pyro_vae.data.pixels import blocks, is_binary
from pyro_vae.model import EnumeratedWeights, Structure
from pyro_vae.seeding import fork_rng

# Most floats held at once by the likelihood's parameters (chunk_K x batch x D). On a CPU 4 MB in fp32,
# so the temporaries of one chunk stay small (a larger chunk was no faster and raised peak memory). On
# a GPU one launch should carry as much work as fits: a sixty-fourth of the free memory (a chunk's
# temporaries take about sixteen times its logits), at most 2^28 elements (1 GiB of logits).
MAX_ELEMENTS_CPU = 1 << 20
MAX_ELEMENTS_GPU = 1 << 28


def max_elements(device: torch.device) -> int:
    """The largest chunk (samples x images x pixels) evaluated at once on ``device``."""
    if device.type != "cuda":
        return MAX_ELEMENTS_CPU
    free, _ = torch.cuda.mem_get_info(device)
    return max(MAX_ELEMENTS_CPU, min(MAX_ELEMENTS_GPU, free // 64))


@dataclass
class Estimate:
    """A test-set mean in nats per image and its standard error over images."""

    mean: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.se:.2f}"


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """The mean of ``values`` (any shape) and its standard error (NaN for a single value)."""
    values = values.double().flatten()
    n = values.numel()
    return float(values.mean()), float(values.std() / math.sqrt(n)) if n > 1 else float("nan")


def samples_per_chunk(x: torch.Tensor, limit: int | None = None) -> int:
    """How many samples per image of the batch ``x`` (B, D) to evaluate at once: as many as fit
    in :func:`max_elements`, at least 1, at most ``limit``."""
    fit = max(1, max_elements(x.device) // max(1, x.shape[0] * x.shape[1]))
    return fit if limit is None else min(fit, limit)


def _summarise(values: torch.Tensor) -> Estimate:
    return Estimate(*mean_se(values), values.numel())


@torch.no_grad()
def iwae_log_likelihood(
    vae: Structure, x: torch.Tensor, k: int, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image IWAE bound with ``k`` samples and the K-sample mean of log w (an ELBO estimate).

    :param x: images (B, D).
    :param chunk: samples drawn at once (default: as many as fit in :func:`max_elements`).
    :returns: two tensors of shape (B,): :math:`\\mathcal L_K` and the mean of :math:`\\log w`.
    """
    if k < 1:
        raise ValueError(f"the number of importance samples K must be at least 1, got {k}")
    if x.shape[0] == 0:
        raise ValueError("there are no images to evaluate: x holds 0 rows (check eval.iwae_images and data.subset)")
    chunk = chunk or samples_per_chunk(x, k)
    # The batch encoded once for all its chunks (Structure.weigher); any model with log_weights evaluates.
    weigher = getattr(vae, "weigher", None)
    log_weights = weigher(x) if weigher is not None else lambda n: vae.log_weights(x, n)
    running_lse = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    running_sum = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for start in range(0, k, chunk):
        draws = log_weights(min(chunk, k - start))
        if isinstance(draws, EnumeratedWeights):  # discrete sites summed out: every value, weighed by q
            stratified = (draws.log_w + draws.log_q).reshape(-1, x.shape[0])
            running_lse = torch.logaddexp(running_lse, torch.logsumexp(stratified, dim=0))
            running_sum += (draws.log_q.exp() * draws.log_w).reshape(-1, x.shape[0]).sum(0)
        else:
            running_lse = torch.logaddexp(running_lse, torch.logsumexp(draws, dim=0))
            running_sum += draws.sum(0)
    return running_lse - math.log(k), running_sum / k


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module.eval()`` inside the block (a plugin's network may have dropout or batch norm), its
    mode (training or not) restored on the way out, however the block ends."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def evaluate(
    vae: Structure,
    x: torch.Tensor,
    k: int = 1,
    batch_size: int = 1000,
    seed: int | None = 0,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, Estimate]:
    """Negative ELBO and (for ``k > 1``) negative IWAE log-likelihood of ``x`` (N, D), in nats.
    ``x`` holds float images in [0, 1] or uint8 levels (:func:`pyro_vae.data.pixels.decode`), on any
    device: one batch at a time is moved to the model's device and decoded.

    Draws use a private RNG seeded with ``seed`` (the caller's RNG is left untouched), so the
    same images evaluated twice get the same samples: common random numbers across epochs.
    :returns: ``{"neg_elbo": Estimate}`` plus ``"nll"`` (the K-sample bound) when ``k > 1``.
    """
    if k < 1:
        raise ValueError(f"the number of importance samples K must be at least 1, got {k}")
    device = next((p.device for p in vae.parameters()), x.device)  # the model's (a parameter-free one: x's)
    bounds, elbos = [], []
    with eval_mode(vae), fork_rng(device):
        if seed is not None:
            torch.manual_seed(seed)
        batch_size = max(1, min(batch_size, x.shape[0]))
        batches = tqdm(
            blocks(x, batch_size, device),
            total=math.ceil(x.shape[0] / batch_size),
            desc=desc,
            disable=None if progress else True,
            unit="batch",
            leave=False,
        )
        for batch in batches:
            bound, elbo = iwae_log_likelihood(vae, batch, k)
            bounds.append(bound)
            elbos.append(elbo)
    out = {"neg_elbo": _summarise(-torch.cat(elbos))}
    if k > 1:
        out["nll"] = _summarise(-torch.cat(bounds))
    return out


def bits_per_dim(est: Estimate, data_dim: int) -> Estimate:
    """Nats per image as bits per dimension, NLL / (D ln 2): the unit of colour-image papers."""
    scale = 1.0 / (data_dim * math.log(2))
    return Estimate(est.mean * scale, est.se * scale, est.n)


def with_bits_per_dim(results: dict[str, Estimate], x: torch.Tensor) -> dict[str, Estimate]:
    """``results`` and, for non-binary images ``x``, each estimate in bits per dimension too
    (``nll_bits_per_dim``, ...); binary data are reported in nats only, as papers do."""
    if is_binary(x):
        return dict(results)
    return {**results, **{f"{name}_bits_per_dim": bits_per_dim(est, x.shape[1]) for name, est in results.items()}}


@torch.no_grad()
def layer_means(vae: Structure, x: torch.Tensor, batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """Every layer's representative code (:meth:`~pyro_vae.model.Structure.point`: the guide's
    mean given the layers above at theirs) for every image (float, or uint8 levels, on any
    device), top first, (N, d) each on the CPU."""
    device = next(vae.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {}
    with eval_mode(vae):
        for batch in blocks(x, batch_size, device):
            for name, z in vae.point(batch).items():
                parts.setdefault(name, []).append(z.cpu())
    return {name: torch.cat(zs) for name, zs in parts.items()}


def as_dict(results: dict[str, Estimate]) -> dict[str, dict]:
    return {name: asdict(est) for name, est in results.items()}
