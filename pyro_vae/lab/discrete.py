r"""The estimator laboratory for discrete latent sites: bias, variance and signal-to-noise ratio of
each estimator's gradient for the parameters of the discrete site, measured against the exact one.

On fixed images and a (trained) structure with a discrete guide site (``mixture``,
``semi_supervised``), every registered estimator that handles discrete sites (those with a
``discrete_label``: ``enum``, exact in c by enumeration; ``trace``, the score function;
``tracegraph``, with its learned baseline, where the structure builds one; ``gumbel`` and
``gumbel_st``, the relaxation, at each temperature) gives ``groups`` independent gradient
estimates, each the mean of ``copies`` single draws per image, of the parameters q(c | x) depends
on (found by differentiating the enumerated log q(c | x)). With g the estimates and g* those of
``enum`` (exact in c; Monte Carlo only in the continuous sites):

- **bias**: ``|E g - E g*|`` (Euclidean norm over the parameters), relative to ``|E g*|``, and its
  z-score along its own direction (the standard error of both means);
- **variance**: the summed variance of one estimate over the parameters;
- **SNR**: ``|E g| / sqrt(sum_j var(g_j))``, the mean gradient's length against its spread (a
  ratio of sums: coordinates a relaxation saturates, of variance near 0, do not dominate it).

``enum``'s own row is its variance and SNR (its bias is 0 by construction). The score function is
unbiased, but where q(c | x) is nearly certain its draws miss the rare values of c whose terms the
exact gradient holds (a heavy tail): a bias measured for it there is that finite-sample miss.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pyro_vae.evaluation.metrics import eval_mode
from pyro_vae.evaluation.plots import save_figure
from pyro_vae.files import write_atomic
from pyro_vae.model import Structure
from pyro_vae.objectives.elbos import ELBOS
from pyro_vae.objectives.sites import LeanSource, PyroSource, draw, record_structure
from pyro_vae.seeding import fork_rng


@dataclass(frozen=True)
class DiscreteLabConfig:
    images: int = 32  # evenly spaced test images in the batch whose gradient is estimated
    groups: int = 50  # independent gradient estimates per estimator
    copies: int = 20  # single draws averaged in one estimate (the batch repeated)
    temperatures: tuple[float, ...] = (1.0, 0.5, 0.2)  # of the relaxed estimators
    seed: int = 0

    def __post_init__(self) -> None:
        if self.images < 1 or self.groups < 2 or self.copies < 1:
            raise ValueError(
                f"images (got {self.images}) and copies (got {self.copies}) must be at least 1, groups (got "
                f"{self.groups}) at least 2 to estimate a spread"
            )
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"every temperature must be positive, got {list(self.temperatures)}")


@dataclass
class DiscreteLabResult:
    config: DiscreteLabConfig
    parameters: int = 0  # coordinates of the discrete site's parameters
    rows: list[dict] = field(default_factory=list)


def has_discrete_site(vae: Structure, x: torch.Tensor) -> bool:
    """Whether ``vae``'s guide draws a discrete site (seen on a Pyro trace of the images ``x``)."""
    return any(s.discrete for s in record_structure(vae.model, vae.guide, x).of("guide"))


def _source(vae: Structure):
    return LeanSource(vae) if vae.has_stories else PyroSource(vae.model, vae.guide, vae)


def discrete_parameters(vae: Structure, x: torch.Tensor) -> list[torch.nn.Parameter]:
    """The parameters the enumerated log q(c | x) of the guide's discrete sites depends on; a
    ``ValueError`` when the guide has no discrete site."""
    with fork_rng(x.device):
        t = draw(_source(vae), x, None, 1, enumerate=True)
    log_q = t.log_q_enumerated()
    if log_q is None:
        raise ValueError(
            "this structure's guide has no discrete site: the discrete-estimator laboratory needs one "
            "(model.structure=mixture or semi_supervised); the continuous one is `pyro-vae compare`'s default"
        )
    params = [p for p in vae.parameters() if p.requires_grad]
    grads = torch.autograd.grad(log_q.sum(), params, allow_unused=True)
    return [p for p, g in zip(params, grads) if g is not None and bool(g.abs().sum() > 0)]


def _estimates(vae, x, estimator, params, cfg: DiscreteLabConfig, seed: int) -> torch.Tensor:
    """``cfg.groups`` gradient estimates (groups, P), each the mean over ``cfg.copies`` draws."""
    loss_fn, xs, out = estimator.loss_fn(_source(vae)), x.repeat(cfg.copies, 1), []
    with fork_rng(x.device):
        for i in range(cfg.groups):
            torch.manual_seed(seed + i)
            grads = torch.autograd.grad(loss_fn(xs) / (cfg.copies * x.shape[0]), params)
            out.append(torch.cat([g.flatten() for g in grads]).double())
    return torch.stack(out)


def _row(label: str, name: str, temperature, g: torch.Tensor, exact: torch.Tensor | None) -> dict:
    mean, var = g.mean(0), g.var(0)
    row = {
        "estimator": name,
        "label": label,
        "temperature": temperature,
        "variance": float(var.sum()),
        "snr": float(mean.norm() / var.sum().sqrt().clamp_min(1e-30)),
    }
    if exact is None:
        return {**row, "bias": 0.0, "relative_bias": 0.0, "bias_z": 0.0}
    bias = mean - exact.mean(0)
    direction = bias / bias.norm().clamp_min(1e-30)
    se = (direction.square() * (var + exact.var(0)) / g.shape[0]).sum().sqrt()
    return {
        **row,
        "bias": float(bias.norm()),
        "relative_bias": float(bias.norm() / exact.mean(0).norm().clamp_min(1e-30)),
        "bias_z": float(bias.norm() / se.clamp_min(1e-30)),
    }


def run_discrete_lab(vae: Structure, x: torch.Tensor, cfg: DiscreteLabConfig) -> DiscreteLabResult:
    """Every discrete-site estimator's gradient statistics on the images ``x`` (see the module's
    docstring); the caller's random state is left alone."""
    with eval_mode(vae):
        return _run(vae, x, cfg)


def _run(vae: Structure, x: torch.Tensor, cfg: DiscreteLabConfig) -> DiscreteLabResult:
    params, info = discrete_parameters(vae, x), record_structure(vae.model, vae.guide, x)
    result = DiscreteLabResult(cfg, sum(p.numel() for p in params))
    exact = _estimates(vae, x, ELBOS.get("enum")(), params, cfg, cfg.seed)
    for i, name in enumerate(n for n in ELBOS.names() if getattr(ELBOS.get(n), "discrete_label", None)):
        cls = ELBOS.get(name)
        if cls().check_structure(vae, info):  # (tracegraph on a structure built without its baseline)
            continue
        seed = cfg.seed + (i + 1) * 100_003
        if name == "enum":
            result.rows.append(_row(cls.discrete_label, name, None, exact, None))
        elif cls.relaxes:  # one row per temperature
            for t in cfg.temperatures:
                g = _estimates(vae, x, cls(temperature=t), params, cfg, seed)
                result.rows.append(_row(f"{cls.discrete_label}, tau = {t:g}", name, t, g, exact))
        else:
            result.rows.append(
                _row(cls.discrete_label, name, None, _estimates(vae, x, cls(), params, cfg, seed), exact)
            )
    return result


def to_dict(result: DiscreteLabResult) -> dict:
    return {"config": asdict(result.config), "parameters": result.parameters, "rows": result.rows}


def format_table(result: DiscreteLabResult) -> str:
    lines = [
        f"gradient of the discrete site's parameters ({result.parameters:,} coordinates), "
        f"{result.config.groups} estimates of {result.config.copies} draws x {result.config.images} images each",
        f"{'estimator':<44}{'bias / |exact|':>16}{'bias z':>9}{'variance':>12}{'SNR':>9}",
    ]
    for r in result.rows:
        lines.append(
            f"{r['label']:<44}{r['relative_bias']:>16.3f}{r['bias_z']:>9.1f}{r['variance']:>12.4g}{r['snr']:>9.3f}"
        )
    return "\n".join(lines)


def plot(result: DiscreteLabResult):
    """Bias (relative), variance and SNR per estimator, side by side (log scales)."""
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in result.rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(labels) + 1.8), sharey=True)
    for ax, key, title in zip(
        axes,
        ("relative_bias", "variance", "snr"),
        ("bias / |exact gradient|", "variance of one estimate", "SNR |E g| / sqrt(tr Var g)"),
    ):
        values = [max(r[key], 1e-6) for r in result.rows]
        ax.barh(range(len(labels)), values, color="tab:blue")
        ax.set_xscale("log")
        ax.set_title(title)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    fig.suptitle("Gradient estimators for the discrete site (against enumeration, exact in c)")
    fig.tight_layout()
    return fig


def markdown(result: DiscreteLabResult, command: str = "") -> str:
    rows = "\n".join(
        f"| {r['label']} | {r['relative_bias']:.3f} | {r['bias_z']:.1f} | {r['variance']:.4g} | {r['snr']:.3f} |"
        for r in result.rows
    )
    return (
        "# Gradient estimators for the discrete site\n\n"
        + (f"`{command}`\n\n" if command else "")
        + f"{result.parameters:,} parameter coordinates; {result.config.groups} estimates of "
        f"{result.config.copies} draws x {result.config.images} images each.\n\n"
        "| estimator | bias / \\|exact\\| | bias z | variance | SNR |\n|---|---|---|---|---|\n" + rows + "\n"
    )


def write_outputs(
    result: DiscreteLabResult, out_dir: str | Path, command: str = "", inside: str | Path | None = None
) -> list[Path]:
    """Write ``discrete_lab.json``, ``discrete_lab.md`` and ``figures/discrete_lab.png`` into
    ``out_dir``, a folder made inside ``inside`` (default: ``out_dir`` itself) without following a link."""
    out_dir = Path(out_dir)
    inside = Path(inside) if inside is not None else out_dir
    record = json.dumps({"command": command, **to_dict(result)}, indent=2) + "\n"
    return [
        write_atomic(out_dir / "discrete_lab.json", record, inside),
        write_atomic(out_dir / "discrete_lab.md", markdown(result, command), inside),
        save_figure(plot(result), out_dir / "figures" / "discrete_lab.png", inside),
    ]
