"""04 — Reparameterisation versus score function: two unbiased gradients, very different noise.

Objective: L(mu) = E_{z ~ N(mu, 1)}[(z - 3)^2] = (mu - 3)^2 + 1, whose gradient 2 (mu - 3) is known.

- reparameterised (pathwise): z = mu + eps, grad = mean of d/dmu (mu + eps - 3)^2
  (what a VAE's Trace_ELBO uses through ``rsample``);
- score function (REINFORCE): grad = mean of (z - 3)^2 * d/dmu log N(z; mu, 1)
  (what Pyro uses for a sample site that cannot be reparameterised).

Both are built with autograd, the way Pyro builds them (a pathwise loss, and a surrogate
``log q(z) * f(z).detach()``). For each number of samples N the example draws many independent
gradient estimates and plots their variance: both fall as 1/N, the score function's from a
much higher level.

    python examples/04_reparam_vs_score.py [--smoke-test] [--out DIR] [--device cpu|cuda]

Writes variance.png and results.json.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from _common import parse_args, save_figure, save_results
from torch.distributions import Normal

MU, TARGET = 0.5, 3.0


def f(z: torch.Tensor) -> torch.Tensor:
    return (z - TARGET) ** 2


def gradients(kind: str, n: int, reps: int) -> torch.Tensor:
    """``reps`` independent N-sample estimates of dL/dmu."""
    mu = torch.full((reps, 1), MU, dtype=torch.float64, requires_grad=True)
    q = Normal(mu, 1.0)
    if kind == "reparameterised":
        z = q.rsample((n,))
        loss = f(z).mean(0).sum()
    else:
        z = q.sample((n,))
        loss = (q.log_prob(z) * f(z).detach()).mean(0).sum()
    (grad,) = torch.autograd.grad(loss, mu)
    return grad.squeeze(-1)


def main() -> None:
    args = parse_args(__doc__, "04_reparam_vs_score")
    torch.manual_seed(args.seed)
    torch.set_default_device(args.device)  # every tensor below is made there
    ns = [1, 4, 16, 64, 256] if args.smoke_test else [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
    reps = 2000 if args.smoke_test else 20000
    exact = 2 * (MU - TARGET)
    results = {"exact_gradient": exact, "n": ns, "reps": reps}
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("reparameterised", "score function"):
        g = [gradients(kind, n, reps) for n in ns]
        var = [float(x.var()) for x in g]
        mean = [float(x.mean()) for x in g]
        se = [float(x.std() / reps**0.5) for x in g]
        results[kind] = {"mean": mean, "se": se, "variance": var}
        ax.loglog(ns, var, "o-", label=kind)
        print(f"{kind:>16}: mean gradient at N=1 {mean[0]:+.3f} ± {se[0]:.3f} (exact {exact:+.3f}), "
              f"variance {var[0]:.2f} at N=1 -> {var[-1]:.4f} at N={ns[-1]}")  # fmt: skip
    ax.set(xlabel="samples N per estimate", ylabel="variance of the gradient estimate",
           title="Both unbiased; both fall as 1/N; score function far noisier")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, args.out, "variance.png")
    save_results(results, args.out)


if __name__ == "__main__":
    main()
