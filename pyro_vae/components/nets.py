"""Plain torch network trunks (no Pyro here)."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "softplus": nn.Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(sizes: list[int] | tuple[int, ...], activation: str = "softplus", final_activation: bool = False) -> nn.Module:
    """``Linear -> act -> ... -> Linear`` through ``sizes`` (``nn.Identity`` for a single size).

    :param sizes: layer widths, input first, output last.
    :param final_activation: also apply the activation after the last layer (for a trunk).
    """
    if len(sizes) < 1:
        raise ValueError("an MLP needs at least an input size")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers) if layers else nn.Identity()
