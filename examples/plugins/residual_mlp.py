"""A plugin network: dense residual blocks, x + W2 act(W1 x), after one projection to a width.

    pyro-vae train --plugin examples/plugins/residual_mlp.py --set model.network=residual_mlp \\
        --set model.residual_mlp.width=256 --set model.residual_mlp.blocks=2
"""

from dataclasses import dataclass

from torch import nn

from pyro_vae import NETWORKS
from pyro_vae.components.nets import ACTIVATIONS


class _Block(nn.Module):
    def __init__(self, width, activation):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, width), ACTIVATIONS[activation](), nn.Linear(width, width))
        self.act = ACTIVATIONS[activation]()

    def forward(self, h):
        return self.act(h + self.inner(h))


@NETWORKS.register("residual_mlp")
class ResidualMLP:
    @dataclass(frozen=True)
    class Settings:
        width: int = 256
        blocks: int = 2

        def __post_init__(self):
            if self.width < 1 or self.blocks < 0:
                raise ValueError(f"width = {self.width} must be >= 1 and blocks = {self.blocks} >= 0")

    def __init__(self, cfg, settings, **_):
        self.width, self.blocks, self.activation = settings.width, settings.blocks, cfg.activation

    def _stack(self, n_in):
        act = ACTIVATIONS[self.activation]
        return [nn.Linear(n_in, self.width), act(), *(_Block(self.width, self.activation) for _ in range(self.blocks))]

    def encoder(self, data_dim):
        return nn.Sequential(*self._stack(data_dim)), self.width

    def decoder(self, latent_dim, out_dim):
        return nn.Sequential(*self._stack(latent_dim), nn.Linear(self.width, out_dim))
