"""The epoch order of a structure that learns from a few labels (``Structure.uses_labels``): every
batch holds ``per_batch`` labelled images beside unlabelled ones, so the labels reach every step.

An epoch is one pass over the unlabelled images (shuffled), ``batch_size - per_batch`` per batch;
the labelled images fill the other ``per_batch`` places of every batch, shuffled afresh each time
all of them have been used, so each appears about ``repeats`` = batches x per_batch / N_L times an
epoch (the structure scales their terms by 1 / repeats: :meth:`~pyro_vae.semi_supervised.
SemiSupervised.weigh_labels`). Consecutive runs of ``batch_size`` rows of the order are the batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyro_vae.config import ConfigError


@dataclass(frozen=True)
class LabelledPlan:
    """What an epoch of :func:`labelled_order` holds: ``batches`` of ``batch_size`` rows (the last
    with fewer unlabelled images), ``length`` rows in all, each labelled image ``repeats`` times."""

    unlabelled: int
    labelled: int
    batch_size: int
    per_batch: int

    @property
    def batches(self) -> int:
        return math.ceil(self.unlabelled / (self.batch_size - self.per_batch))

    @property
    def length(self) -> int:
        return self.unlabelled + self.batches * self.per_batch

    @property
    def repeats(self) -> float:
        return self.batches * self.per_batch / self.labelled


def labelled_plan(labels: torch.Tensor, batch_size: int, per_batch: int) -> LabelledPlan:
    """The plan of an epoch for ``labels`` (-1 where unknown); ``ConfigError`` when a batch cannot
    hold ``per_batch`` labelled images beside at least one unlabelled one, or a side is empty."""
    known = int((labels >= 0).sum())
    unknown = labels.numel() - known
    if known == 0 or unknown == 0:
        raise ConfigError(
            f"a semi-supervised structure needs labelled and unlabelled training images; the training split "
            f"has {known:,} labelled and {unknown:,} unlabelled: set data.labels to a number between the "
            "classes and the training images"
        )
    if not 1 <= per_batch < batch_size:
        raise ConfigError(
            f"labelled_per_batch = {per_batch} leaves no room in batches of train.batch_size = {batch_size}: "
            "choose fewer labelled images per batch than the batch size"
        )
    return LabelledPlan(unknown, known, batch_size, per_batch)


def labelled_order(labels: torch.Tensor, plan: LabelledPlan, generator: torch.Generator) -> torch.Tensor:
    """One epoch's order of training rows (``plan.length``,), drawn with ``generator``."""
    labels = labels.cpu()
    unlabelled = (labels < 0).nonzero().squeeze(1)
    labelled = (labels >= 0).nonzero().squeeze(1)
    unlabelled = unlabelled[torch.randperm(len(unlabelled), generator=generator)]
    needed, cycles = plan.batches * plan.per_batch, []
    while sum(len(c) for c in cycles) < needed:
        cycles.append(labelled[torch.randperm(len(labelled), generator=generator)])
    labelled = torch.cat(cycles)[:needed]
    take, rows = plan.batch_size - plan.per_batch, []
    for i in range(plan.batches):
        rows += [unlabelled[i * take : (i + 1) * take], labelled[i * plan.per_batch : (i + 1) * plan.per_batch]]
    return torch.cat(rows)
