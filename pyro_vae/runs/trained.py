"""The one way to open a trained model: :func:`open_model` takes a run folder (its ``best`` or
``last`` checkpoint, :mod:`pyro_vae.runs.folder`) or an exported model folder
(:mod:`pyro_vae.runs.export`) and returns a :class:`TrainedModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pyro_vae.config import ExperimentConfig
from pyro_vae.data import Splits, load_data
from pyro_vae.model import Structure
from pyro_vae.runs.export import CONFIG, WEIGHTS, ModelFileError, _read_export, is_model_dir
from pyro_vae.runs.folder import RunDir, _read_run, check_checkpoint, offline


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained VAE, as :func:`open_model` returns it.

    ``config``: the run's resolved config. ``vae``: the VAE, in eval mode, on the device asked for.
    ``source``: the folder it was opened from. ``kind``: ``"run"`` (a run folder) or ``"export"`` (an
    exported model folder). ``which``: the checkpoint of a run (``"best"`` or ``"last"``), ``None``
    for an exported model (it holds one set of weights). ``data``: the splits ``config.data`` names,
    read with downloads off. A run's are read to open it (they give the VAE its shape); an exported
    model's on the first use of ``data`` (it opens without them), then kept.
    """

    config: ExperimentConfig = field(repr=False)
    vae: Structure = field(repr=False)
    source: Path
    kind: Literal["run", "export"]
    which: str | None
    _data: Splits | None = field(default=None, repr=False)

    @property
    def data(self) -> Splits:
        """The data the model was trained on (``ValueError`` naming the folder when it does not load)."""
        if self._data is None:
            try:
                data = load_data(offline(self.config.data))
            except ValueError as exc:  # the loader's own error (and type), with the folder named
                exc.args = (f"the data of the {self.kind} folder {self.source} does not load: {exc}",)
                raise
            object.__setattr__(self, "_data", data)
        return self._data


def open_model(path: str | Path, which: str = "best", device: str = "auto") -> TrainedModel:
    """Open a trained model: a run folder (its ``which`` checkpoint, ``best`` or ``last``) or an
    exported model folder (its one set of weights), with the VAE on ``device`` (``auto``: CUDA when
    there is one). Nothing is downloaded and no plugin is imported (load those the model needs first).

    :raises ValueError: for a folder that does not exist, ``which`` other than ``best`` or ``last``,
        or ``last`` for an exported model; :class:`~pyro_vae.runs.export.ModelFileError` for a folder
        that is neither kind, or an exported model whose files are damaged or altered; the errors of
        a run folder's checkpoints and config (:mod:`pyro_vae.runs.folder`); ``PluginError`` for a
        plugin the model needs that is not loaded.
    """
    folder = Path(path)
    if is_model_dir(folder):
        if which != "best":
            check_checkpoint(which)
            raise ValueError(
                f"{folder} is an exported model: exported models hold one set of weights (the checkpoint "
                f"they were exported from), so checkpoint {which!r} does not apply; open it without one, "
                f"or export the run's {which} checkpoint (pyro-vae export RUN --checkpoint {which})"
            )
        cfg, vae = _read_export(folder, device)
        return TrainedModel(cfg, vae, folder, "export", None)
    if folder.is_dir() and not RunDir(folder).config.is_file():
        raise ModelFileError(
            f"{folder} is neither an exported model ({CONFIG}, {WEIGHTS}) nor a run folder "
            "(config.toml); make one with pyro-vae export RUN --out DIR"
        )
    cfg, vae, data = _read_run(folder, which, device)
    return TrainedModel(cfg, vae, folder, "run", which, data)
