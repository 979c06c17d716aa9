"""Output of the estimator laboratory: a terminal table, JSON, a markdown report and figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .estimators import GRADIENT_ESTIMATORS, LabResult, snr_noise_floor  # noqa: E402

VALUE_LABELS = {
    "trace": "negative ELBO, Trace_ELBO (Monte-Carlo KL)",
    "mean_field": "negative ELBO, TraceMeanField_ELBO (analytic KL)",
    "closed_form": "negative ELBO, hand-written closed form",
}
SPREAD_LABELS = {
    "trace": "Trace_ELBO",
    "mean_field": "TraceMeanField_ELBO",
    "trace_kl_term": "  its KL term (Monte Carlo)",
    "mean_field_kl_term": "  its KL term (analytic)",
}
GRADIENT_LABELS = {
    "reparam_mc_kl": "reparameterised, Monte-Carlo KL (Trace_ELBO)",
    "reparam_analytic_kl": "reparameterised, analytic KL (TraceMeanField_ELBO)",
    "score_function": "score function (TraceGraph_ELBO)",
}


def to_dict(result: LabResult) -> dict:
    return {
        "unit": "nats per image",
        "config": dataclasses.asdict(result.config),
        "values": result.values,
        "spread": {name: {str(p): v for p, v in rows.items()} for name, rows in result.spread.items()},
        "gradients": {est: {str(p): groups for p, groups in rows.items()} for est, rows in result.gradients.items()},
    }


def value_rows(result: LabResult) -> list[tuple[str, float, float]]:
    v = result.values
    rows = [(VALUE_LABELS[name], v[name]["mean"], v[name]["se"]) for name in VALUE_LABELS if name in v]
    for k in sorted(int(key.split("_")[1]) for key in v if key.startswith("iwae_")):
        rows.append((f"negative IWAE bound, K={k}", v[f"iwae_{k}"]["mean"], v[f"iwae_{k}"]["se"]))
    rows.append((f"NLL, importance sampled (K={v['nll']['k']})", v["nll"]["mean"], v["nll"]["se"]))
    rows.append(("gap ELBO - log p(x)", v["gap"]["mean"], v["gap"]["se"]))
    return rows


def format_table(result: LabResult) -> str:
    cfg = result.config
    lines = [f"Values ({cfg.images} images, nats per image)", f"{'':<52}{'mean':>10}{'± s.e.':>10}"]
    lines += [f"{name:<52}{mean:>10.3f}{se:>10.3f}" for name, mean, se in value_rows(result)]
    ps = list(cfg.particles)
    lines += ["", "Per-image standard deviation of the estimate, by particles P (nats)"]
    lines.append(f"{'estimator':<32}" + "".join(f"{'P=' + str(p):>10}" for p in ps))
    for name, label in SPREAD_LABELS.items():
        lines.append(f"{label:<32}" + "".join(f"{result.spread[name][p]['mean_sd']:>10.3f}" for p in ps))
    lines += [
        "",
        f"Gradients ({cfg.grad_images} images, {cfg.grad_reps} draws): mean SNR |E g|/sd(g) and mean variance",
        f"(an SNR near {snr_noise_floor(cfg.grad_reps):.3f} is the noise floor of {cfg.grad_reps} draws)",
    ]
    lines.append(f"{'estimator':<52}{'group':<9}" + "".join(f"{'P=' + str(p):>10}" for p in ps))
    for est in GRADIENT_ESTIMATORS:
        for group in ("encoder", "decoder"):
            snr = "".join(f"{result.gradients[est][p][group]['snr']:>10.3f}" for p in ps)
            var = "".join(f"{result.gradients[est][p][group]['variance']:>10.2e}" for p in ps)
            lines.append(f"{GRADIENT_LABELS[est]:<52}{group:<9}{snr}")
            lines.append(f"{'':<52}{'  var':<9}{var}")
    return "\n".join(lines)


def markdown(result: LabResult, command: str = "") -> str:
    cfg = result.config
    ps = list(cfg.particles)
    md = ["# Estimator laboratory", ""]
    if command:
        md += [f"Made by `{command}`.", ""]
    md += [
        f"## Values ({cfg.images} evenly spaced test images, nats per image)",
        "",
        "| quantity | mean | s.e. |",
        "|---|---|---|",
    ]
    md += [f"| {name} | {mean:.3f} | {se:.3f} |" for name, mean, se in value_rows(result)]
    md += [
        "",
        "## Per-image standard deviation of the negative-ELBO estimate",
        "",
        "| estimator | " + " | ".join(f"P={p}" for p in ps) + " |",
        "|---|" + "---|" * len(ps),
    ]
    for name, label in SPREAD_LABELS.items():
        md.append(f"| {label.strip()} | " + " | ".join(f"{result.spread[name][p]['mean_sd']:.3f}" for p in ps) + " |")
    md += [
        "",
        f"## Gradient signal-to-noise ratio ({cfg.grad_images} images, {cfg.grad_reps} draws per cell)",
        "",
        "Mean over parameter coordinates of |E g| / sd(g); mean variance in brackets. "
        f"An SNR near {snr_noise_floor(cfg.grad_reps):.3f} is the noise floor of {cfg.grad_reps} draws "
        "(what a zero gradient would show): no signal seen.",
        "",
        "| estimator | group | " + " | ".join(f"P={p}" for p in ps) + " |",
        "|---|---|" + "---|" * len(ps),
    ]
    for est in GRADIENT_ESTIMATORS:
        for group in ("encoder", "decoder"):
            cells = [
                f"{result.gradients[est][p][group]['snr']:.3f} ({result.gradients[est][p][group]['variance']:.1e})"
                for p in ps
            ]
            md.append(f"| {GRADIENT_LABELS[est]} | {group} | " + " | ".join(cells) + " |")
    md += [
        "",
        "![spread](figures/estimator_spread.png)",
        "![iwae](figures/iwae_vs_k.png)",
        "![snr](figures/gradient_snr.png)",
        "",
    ]
    return "\n".join(md)


def plot_spread(result: LabResult, out: Path) -> Path:
    ps = list(result.config.particles)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("trace", "o-"), ("mean_field", "s-"), ("trace_kl_term", "o:")):
        ax.loglog(ps, [result.spread[name][p]["mean_sd"] for p in ps], style, label=SPREAD_LABELS[name].strip())
    ref = result.spread["trace"][ps[0]]["mean_sd"]
    ax.loglog(ps, [ref * (ps[0] / p) ** 0.5 for p in ps], "k--", alpha=0.4, label=r"$\propto 1/\sqrt{P}$")
    ax.set(
        xlabel="particles P",
        ylabel="per-image sd of the estimate (nats)",
        title="ELBO estimator spread (the analytic KL term has sd 0)",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out)


def plot_iwae(result: LabResult, out: Path) -> Path:
    v = result.values
    ks = sorted(int(key.split("_")[1]) for key in v if key.startswith("iwae_"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(
        ks,
        [v[f"iwae_{k}"]["mean"] for k in ks],
        yerr=[2 * v[f"iwae_{k}"]["se_vs_kmax"] for k in ks],
        fmt="o-",
        capsize=3,
        label=f"-L_K (±2 s.e. of the difference to K={ks[-1]}, paired by image)",
    )
    ax.axhline(v["mean_field"]["mean"], color="C1", ls="--", label="negative ELBO")
    ax.axhline(v["nll"]["mean"], color="C2", ls=":", label=f"NLL estimate (K={v['nll']['k']})")
    ax.set_xscale("log")
    ax.set(xlabel="importance samples K", ylabel="nats per image", title="IWAE bound approaching log p(x)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_snr(result: LabResult, out: Path) -> Path:
    ps = list(result.config.particles)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, group in zip(axes, ("encoder", "decoder")):
        for est in GRADIENT_ESTIMATORS:
            ax.loglog(ps, [result.gradients[est][p][group]["snr"] for p in ps], "o-", label=GRADIENT_LABELS[est])
        ax.set(xlabel="particles P", title=f"{group} gradients")
        ax.grid(alpha=0.3, which="both")
    floor = snr_noise_floor(result.config.grad_reps)
    for ax in axes:
        ax.axhline(floor, color="gray", ls="--", lw=1, label=f"noise floor of {result.config.grad_reps} draws")
    axes[0].set_ylabel("mean SNR |E g| / sd(g)")
    axes[0].legend(fontsize=7)
    return _save(fig, out)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_outputs(result: LabResult, out_dir: str | Path, command: str = "") -> list[Path]:
    """Write ``compare.json``, ``report.md`` and ``figures/*.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps({"command": command, **to_dict(result)}, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown(result, command))
    figs = out_dir / "figures"
    return [
        out_dir / "compare.json",
        out_dir / "report.md",
        plot_spread(result, figs / "estimator_spread.png"),
        plot_iwae(result, figs / "iwae_vs_k.png"),
        plot_snr(result, figs / "gradient_snr.png"),
    ]
