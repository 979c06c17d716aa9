"""Scores against the test labels, for the structures that have a use for labels: a classifier's
error (:attr:`~pyro_vae.model.Structure.uses_labels`, e.g. ``semi_supervised``) and a clustering's
accuracy and normalised mutual information (:meth:`~pyro_vae.model.Structure.components`, e.g.
``mixture``). They are watched, every epoch (``metrics.jsonl``, the log line, TensorBoard, the
curves figure) and at the end (``summary.json``), and never used to choose the best epoch: the
validation ELBO does that. Models are scored in eval mode (a plugin's network may have dropout or
batch norm), their mode restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyro_vae.data import Splits
from pyro_vae.data.pixels import blocks
from pyro_vae.evaluation.clustering import cluster_accuracy, nmi
from pyro_vae.evaluation.metrics import eval_mode
from pyro_vae.model import Structure

# metrics.jsonl's keys for the watched scores, and how figures and logs name them
WATCHED = {
    "test_error": "test classification error",
    "test_cluster_accuracy": "test clustering accuracy",
    "test_nmi": "test clustering NMI",
}


@torch.no_grad()
def _predict(
    predict: Callable[[torch.Tensor], torch.Tensor], vae: Structure, data: Splits, device, batch_size: int
) -> torch.Tensor:
    """``predict`` (one class or cluster per image) over the whole test split, in eval mode."""
    with eval_mode(vae):
        return torch.cat([predict(batch).cpu() for batch in blocks(data.stored("test"), batch_size, device)])


def clustering_report(vae: Structure, data: Splits, device: torch.device, batch_size: int) -> dict | None:
    """A clustering structure's clusters of the whole test split against the test labels: accuracy
    under the best one-to-one map of clusters to classes, and NMI; None for a structure that does
    not cluster or a data set without test labels."""
    if vae.components() == 0 or data.test_labels is None:
        return None
    pred = _predict(vae.clusters, vae, data, device, batch_size)
    return {
        "accuracy": cluster_accuracy(pred, data.test_labels),
        "nmi": nmi(pred, data.test_labels),
        "components": vae.components(),
        "clusters_used": int(pred.unique().numel()),
        "images": int(pred.numel()),
    }


def classification_report(vae: Structure, data: Splits, device: torch.device, batch_size: int) -> dict | None:
    """A structure's classifier's error on the whole test split (never seen in training); None for
    a structure that does not learn from labels or a data set without test labels."""
    if not vae.uses_labels or data.test_labels is None:
        return None
    pred = _predict(vae.classify, vae, data, device, batch_size)
    return {"test_error": float((pred != data.test_labels).double().mean()), "images": int(pred.numel())}


def watched_scores(vae: Structure, data: Splits, device: torch.device, batch_size: int) -> dict[str, float]:
    """The epoch's watched scores, keyed as in :data:`WATCHED` (empty where none applies)."""
    scores = {}
    classified = classification_report(vae, data, device, batch_size)
    if classified is not None:
        scores["test_error"] = classified["test_error"]
    clustered = clustering_report(vae, data, device, batch_size)
    if clustered is not None:
        scores["test_cluster_accuracy"], scores["test_nmi"] = clustered["accuracy"], clustered["nmi"]
    return scores


def describe(record: dict) -> str:
    """The watched scores of a ``metrics.jsonl`` record, for the epoch's log line ('' if none)."""
    if "test_error" in record:
        return f", test error {record['test_error']:.2%}"
    if "test_cluster_accuracy" in record:
        return f", test clusters {record['test_cluster_accuracy']:.1%} accurate (NMI {record['test_nmi']:.3f})"
    return ""
