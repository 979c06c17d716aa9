"""Output of the estimator laboratory: a terminal table, JSON, a markdown report and figures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyro_vae.evaluation.plots import save_figure  # noqa: E402
from pyro_vae.files import write_atomic  # noqa: E402
from pyro_vae.lab.estimators import GRADIENT_ESTIMATORS, SNR_VS_K_ESTIMATORS, LabResult, snr_noise_floor  # noqa: E402

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
LABEL = {name: e.label for name, e in GRADIENT_ESTIMATORS.items()}  # the gradient table's rows
SNR_LABEL = {name: e.snr_label for name, e in GRADIENT_ESTIMATORS.items() if e.snr_label}


def to_dict(result: LabResult) -> dict:
    return {
        "unit": "nats per image",
        "config": dataclasses.asdict(result.config),
        "values": result.values,
        "spread": {name: {str(p): v for p, v in rows.items()} for name, rows in result.spread.items()},
        "gradients": {est: {str(p): groups for p, groups in rows.items()} for est, rows in result.gradients.items()},
        "encoder_snr_vs_k": {est: {str(k): v for k, v in rows.items()} for est, rows in result.snr_vs_k.items()},
        "encoder_snr_slopes": snr_slopes(result),
    }


def snr_slopes(result: LabResult) -> dict[str, float]:
    """Least-squares slope of log encoder SNR against log K per estimator (IWAE: about -1/2 in
    theory; DReG: not negative)."""
    out = {}
    for est, rows in result.snr_vs_k.items():
        pts = [(math.log(k), math.log(v["snr"])) for k, v in rows.items() if v["snr"] > 0]
        if len(pts) >= 2:
            mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
            sxx = sum((p[0] - mx) ** 2 for p in pts)
            out[est] = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else float("nan")
    return out


def snr_findings(result: LabResult) -> list[str]:
    """What the encoder-SNR-against-K panel shows, in sentences with its numbers."""
    rows, slopes = result.snr_vs_k, snr_slopes(result)
    if not rows or not slopes:
        return []
    ks = sorted(next(iter(rows.values())))
    k_lo, k_hi = ks[0], ks[-1]
    lines = []
    for est in SNR_VS_K_ESTIMATORS:
        if est in rows:
            lo, hi = rows[est][k_lo]["snr"], rows[est][k_hi]["snr"]
            lines.append(
                f"- {SNR_LABEL[est]}: encoder SNR {lo:.3f} at K={k_lo}, {hi:.3f} at K={k_hi} "
                f"(slope of log SNR against log K: {slopes.get(est, float('nan')):+.2f})"
            )
    if "iwae" in rows and "iwae_dreg" in rows:
        ratio = rows["iwae_dreg"][k_hi]["snr"] / rows["iwae"][k_hi]["snr"]
        lines.append(
            f"- At K={k_hi} DReG's encoder SNR is {ratio:.1f} times IWAE's; theory: IWAE's falls like "
            "1/sqrt(K) (slope -0.5), DReG's does not fall."
        )
    return lines


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
        for group in gradient_groups(result):
            snr = "".join(f"{result.gradients[est][p][group]['snr']:>10.3f}" for p in ps)
            var = "".join(f"{result.gradients[est][p][group]['variance']:>10.2e}" for p in ps)
            lines.append(f"{LABEL[est]:<52}{group:<9}{snr}")
            lines.append(f"{'':<52}{'  var':<9}{var}")
    if result.snr_vs_k:
        ks = sorted(next(iter(result.snr_vs_k.values())))
        header = f"{'estimator':<52}" + "".join(f"{'K=' + str(k):>9}" for k in ks)
        lines += ["", "Encoder gradient SNR against K", header]
        for est, rows in result.snr_vs_k.items():
            lines.append(f"{SNR_LABEL[est]:<52}" + "".join(f"{rows[k]['snr']:>9.3f}" for k in ks))
        lines += snr_findings(result)
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
        for group in gradient_groups(result):
            cells = [
                f"{result.gradients[est][p][group]['snr']:.3f} ({result.gradients[est][p][group]['variance']:.1e})"
                for p in ps
            ]
            md.append(f"| {LABEL[est]} | {group} | " + " | ".join(cells) + " |")
    if result.snr_vs_k:
        ks = sorted(next(iter(result.snr_vs_k.values())))
        md += [
            "",
            f"## Encoder gradient SNR against K ({cfg.grad_images} images, {cfg.grad_reps} draws per cell)",
            "",
            "| estimator | " + " | ".join(f"K={k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for est, rows in result.snr_vs_k.items():
            md.append(f"| {SNR_LABEL[est]} | " + " | ".join(f"{rows[k]['snr']:.3f}" for k in ks) + " |")
        md += ["", *snr_findings(result)]
    md += [
        "",
        "![spread](figures/estimator_spread.png)",
        "![iwae](figures/iwae_vs_k.png)",
        "![snr](figures/gradient_snr.png)",
        "![snr against K](figures/encoder_snr_vs_k.png)",
        "",
    ]
    return "\n".join(md)


def plot_spread(result: LabResult):
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
    return fig


def plot_iwae(result: LabResult):
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
    return fig


def gradient_groups(result: LabResult) -> list[str]:
    """The parameter groups the gradient table measured (the structure's
    :meth:`~pyro_vae.model.Structure.parameter_groups`: encoder and decoder, and any others), in
    the order measured."""
    first = next(iter(result.gradients.values()))
    return list(next(iter(first.values())))


def plot_snr(result: LabResult):
    ps = list(result.config.particles)
    groups = gradient_groups(result)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, group in zip(axes, groups):
        for est in GRADIENT_ESTIMATORS:
            ax.loglog(ps, [result.gradients[est][p][group]["snr"] for p in ps], "o-", label=LABEL[est])
        ax.set(xlabel="particles P", title=f"{group} gradients")
        ax.grid(alpha=0.3, which="both")
    floor = snr_noise_floor(result.config.grad_reps)
    for ax in axes:
        ax.axhline(floor, color="gray", ls="--", lw=1, label=f"noise floor of {result.config.grad_reps} draws")
    axes[0].set_ylabel("mean SNR |E g| / sd(g)")
    axes[0].legend(fontsize=7)
    return fig


def plot_snr_vs_k(result: LabResult):
    fig, ax = plt.subplots(figsize=(6, 4))
    for est, rows in result.snr_vs_k.items():
        ks = sorted(rows)
        ax.loglog(ks, [rows[k]["snr"] for k in ks], "o-", label=SNR_LABEL[est])
    if "iwae" in result.snr_vs_k:
        rows = result.snr_vs_k["iwae"]
        ks = sorted(rows)
        ax.loglog(
            ks,
            [rows[ks[0]]["snr"] * (ks[0] / k) ** 0.5 for k in ks],
            "k--",
            alpha=0.5,
            label=r"$\propto 1/\sqrt{K}$ (from IWAE at the smallest K)",
        )
    ax.axhline(
        snr_noise_floor(result.config.grad_reps),
        color="gray",
        ls=":",
        lw=1,
        label=f"noise floor of {result.config.grad_reps} draws",
    )
    ax.set(
        xlabel="samples per image K",
        ylabel="mean encoder SNR |E g| / sd(g)",
        title="Encoder gradient signal-to-noise against K",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


def write_outputs(
    result: LabResult, out_dir: str | Path, command: str = "", inside: str | Path | None = None
) -> list[Path]:
    """Write ``compare.json``, ``report.md`` and ``figures/*.png`` into ``out_dir``, a folder made
    inside ``inside`` (default: ``out_dir`` itself) without following a link."""
    out_dir = Path(out_dir)
    inside = Path(inside) if inside is not None else out_dir
    figs = out_dir / "figures"
    written = [
        write_atomic(
            out_dir / "compare.json", json.dumps({"command": command, **to_dict(result)}, indent=2) + "\n", inside
        ),
        write_atomic(out_dir / "report.md", markdown(result, command), inside),
    ]
    for plot, name in (
        (plot_spread, "estimator_spread"),
        (plot_iwae, "iwae_vs_k"),
        (plot_snr, "gradient_snr"),
        *([(plot_snr_vs_k, "encoder_snr_vs_k")] if result.snr_vs_k else []),
    ):
        written.append(save_figure(plot(result), figs / f"{name}.png", inside))
    return written
