r"""Scores of a clustering against class labels, and k-means, the pixel baseline of a clustering VAE.

**Contingency table.** For cluster ids :math:`u_n` and labels :math:`v_n`, :math:`n = 1..N`,
:math:`n_{ij}` counts the points of cluster :math:`i` with label :math:`j`; rows are the distinct
cluster ids, columns the distinct labels, both in increasing order (ids need not be contiguous).

**Clustering accuracy.** Cluster ids are arbitrary, so a clustering is scored under the one-to-one
map :math:`m` of clusters to labels that matches the most points,

.. math::

    \mathrm{ACC} = \max_m \frac1N \sum_n [\,m(u_n) = v_n\,] = \max_m \frac1N \sum_i n_{i\,m(i)},

an assignment problem solved exactly by the Hungarian algorithm (Kuhn-Munkres, :math:`O(n^3)`) on
the table padded with zeros to a square. With more clusters than labels, the clusters left without
a label count as wrong; with fewer, the unmatched labels are never predicted.

**Normalised mutual information.** With :math:`p_{ij} = n_{ij}/N` and marginals :math:`a_i, b_j`
(natural logarithms, nats),

.. math::

    \mathrm{NMI} = \frac{I(U; V)}{\tfrac12\,(H(U) + H(V))},\qquad
    I = \sum_{ij} p_{ij} \log\frac{p_{ij}}{a_i b_j},\quad H(U) = -\sum_i a_i \log a_i,

the arithmetic-mean normalisation (scikit-learn's default). It lies in [0, 1], is symmetric and
ignores how either side is labelled. When both partitions are a single cluster the ratio is 0/0;
it is defined as 1.0 there (the partitions are identical), as scikit-learn does.

**k-means.** Lloyd's algorithm minimises :math:`\sum_n \lVert x_n - c_{u_n}\rVert^2` by alternating
assignment to the nearest centre and moving each centre to its points' mean. Centres start from
k-means++ (Arthur & Vassilvitskii, 2007): the first a uniform draw, each next one a point drawn with
probability proportional to its squared distance to the nearest centre chosen so far. Draws use a
private :class:`torch.Generator`, so the caller's random stream is untouched. Distances are
computed a chunk of rows at a time (:math:`\lVert x\rVert^2 - 2 x c^\top + \lVert c\rVert^2`), so
memory stays bounded by ``chunk x k``. A cluster left empty is re-seeded at the point farthest
from its own cluster's mean. Iterations stop when the total squared shift of the centres is at
most ``tol`` times the mean per-feature variance of the data (scikit-learn's relative tolerance)
or after ``iters``.
"""

from __future__ import annotations

import numpy as np
import torch


def _ids(values, name: str) -> torch.Tensor:
    """``values`` (a tensor, array or list) as a 1-D int64 tensor of non-negative ids on the CPU."""
    t = values.detach().cpu() if torch.is_tensor(values) else torch.as_tensor(np.asarray(values))
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one id per point), got shape {tuple(t.shape)}; flatten it first")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; scoring a clustering needs at least one point")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer ids, got dtype {t.dtype}; convert with .long() after rounding")
    if int(t.min()) < 0:
        raise ValueError(f"{name} must hold ids >= 0, found {int(t.min())}; shift or re-encode the ids")
    return t.long()


def _pair(pred, labels) -> tuple[torch.Tensor, torch.Tensor]:
    pred, labels = _ids(pred, "pred"), _ids(labels, "labels")
    if pred.numel() != labels.numel():
        raise ValueError(
            f"pred and labels must have one entry per point, got lengths {pred.numel()} and {labels.numel()}"
        )
    return pred, labels


def _table(pred, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contingency table with its row ids (clusters) and column ids (labels)."""
    pred, labels = _pair(pred, labels)
    clusters, rows = torch.unique(pred, return_inverse=True)
    classes, cols = torch.unique(labels, return_inverse=True)
    counts = torch.zeros(len(clusters) * len(classes), dtype=torch.long)
    counts.index_add_(0, rows * len(classes) + cols, torch.ones_like(rows))
    return counts.view(len(clusters), len(classes)), clusters, classes


def contingency(pred, labels) -> torch.Tensor:
    """Counts (n_clusters, n_classes), int64: entry (i, j) is the number of points of the i-th
    smallest cluster id with the j-th smallest label.

    :param pred, labels: 1-D integer ids >= 0 of equal length (tensors, arrays or lists).
    """
    return _table(pred, labels)[0]


def hungarian(cost: np.ndarray) -> np.ndarray:
    """The column of each row in a one-to-one assignment of least total ``cost`` (square, n x n):
    Kuhn-Munkres with row and column potentials, one shortest augmenting path per row, O(n^3)."""
    n = cost.shape[0]
    u, v = np.zeros(n + 1), np.zeros(n + 1)  # potentials; index 0 of the columns is a virtual start
    match = np.zeros(n + 1, dtype=np.int64)  # match[j]: the row (1-based) holding column j, 0 = none
    way = np.zeros(n + 1, dtype=np.int64)  # the previous column on the augmenting path
    for row in range(1, n + 1):
        match[0], j0 = row, 0
        slack, used = np.full(n + 1, np.inf), np.zeros(n + 1, dtype=bool)
        while match[j0]:
            used[j0] = True
            free = np.flatnonzero(~used)
            reduced = cost[match[j0] - 1, free - 1] - u[match[j0]] - v[free]
            better = reduced < slack[free]
            slack[free[better]], way[free[better]] = reduced[better], j0
            j1 = free[np.argmin(slack[free])]
            delta = slack[j1]
            u[match[used]] += delta
            v[used] -= delta
            slack[~used] -= delta
            j0 = j1
        while j0:  # flip the path back to the start
            match[j0] = match[way[j0]]
            j0 = way[j0]
    assignment = np.empty(n, dtype=np.int64)
    assignment[match[1:] - 1] = np.arange(n)
    return assignment


def best_mapping(pred, labels) -> dict[int, int]:
    """The one-to-one map of cluster ids to labels that matches the most points (cluster id ->
    label); clusters left without a label (more clusters than labels) are not in it."""
    counts, clusters, classes = _table(pred, labels)
    n = max(counts.shape)
    gain = np.zeros((n, n))
    gain[: counts.shape[0], : counts.shape[1]] = counts.numpy()
    cols = hungarian(-gain)
    return {int(clusters[i]): int(classes[cols[i]]) for i in range(counts.shape[0]) if cols[i] < counts.shape[1]}


def cluster_accuracy(pred, labels) -> float:
    """The fraction of points whose cluster maps to their label under :func:`best_mapping`."""
    mapping = best_mapping(pred, labels)
    pred, labels = _pair(pred, labels)
    hits = sum(int(((pred == c) & (labels == j)).sum()) for c, j in mapping.items())
    return hits / labels.numel()


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def nmi(pred, labels) -> float:
    """Normalised mutual information I(U; V) / mean(H(U), H(V)) in [0, 1], natural logs; 1.0 when
    both partitions are a single cluster (see the module's docstring)."""
    counts = contingency(pred, labels).double()
    if counts.shape == (1, 1):
        return 1.0
    p = counts / counts.sum()
    a, b = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = max(0.0, float((p[nz] * (p[nz] / (a * b)[nz]).log()).sum()))
    return mi / (0.5 * (_entropy(a) + _entropy(b)))


def _check_points(x: torch.Tensor, name: str = "x") -> None:
    if not torch.is_tensor(x) or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be a float32 or float64 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N >= 1, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite values; k-means needs finite points")


def _nearest(x: torch.Tensor, centres: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's nearest centre (N,) and squared distance to it (N,), ``chunk`` rows at a time."""
    c2 = (centres * centres).sum(1)
    index, dist = [], []
    for start in range(0, x.shape[0], chunk):
        rows = x[start : start + chunk]
        d, i = ((rows * rows).sum(1, keepdim=True) - 2 * rows @ centres.T + c2).min(1)
        index.append(i)
        dist.append(d.clamp_min(0))
    return torch.cat(index), torch.cat(dist)


def _sq_dist(x: torch.Tensor, centres: torch.Tensor, chunk: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """Exact squared distances (N,) of each point to ``centres[index_n]``, or with no ``index`` to
    the one centre (1, D), ``chunk`` rows at a time (identical points are at distance 0 exactly)."""
    parts = []
    for start in range(0, x.shape[0], chunk):
        rows = x[start : start + chunk]
        c = centres if index is None else centres[index[start : start + chunk]]
        parts.append((rows - c).pow(2).sum(1))
    return torch.cat(parts)


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, chunk: int) -> torch.Tensor:
    """k-means++ centres (k, D)."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator, device=x.device))
    centres = [x[first]]
    d2 = _sq_dist(x, x[first : first + 1], chunk)
    for found in range(1, k):
        if not bool((d2 > 0).any()):
            raise ValueError(f"x has only {found} distinct points, fewer than k = {k} clusters; lower k or add points")
        pick = int(torch.multinomial(d2.double(), 1, generator=generator))
        centres.append(x[pick])
        d2 = torch.minimum(d2, _sq_dist(x, x[pick : pick + 1], chunk))
    return torch.stack(centres)


def _means(x: torch.Tensor, index: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Each cluster's mean (k, D); an empty cluster re-seeded at the point farthest from its own mean."""
    counts = torch.bincount(index, minlength=k)
    centres = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, index, x)
    centres /= counts.clamp_min(1).unsqueeze(1).to(x.dtype)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        far = _sq_dist(x, centres, chunk, index)
        for j in empty:
            i = int(far.argmax())
            centres[j] = x[i]
            far[i] = -1  # taken
    return centres


def assign(x: torch.Tensor, centres: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """The index of each point's nearest centre (N,), int64, computed ``chunk`` rows at a time.

    :param x: points (N, D), float32 or float64.
    :param centres: (k, D), of ``x``'s dtype and device.
    """
    _check_points(x)
    _check_points(centres, "centres")
    if centres.shape[1] != x.shape[1] or centres.dtype != x.dtype:
        raise ValueError(
            f"centres {tuple(centres.shape)} {centres.dtype} do not fit x {tuple(x.shape)} {x.dtype}: "
            "they need x's number of columns and dtype"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 row, got {chunk}")
    return _nearest(x, centres, chunk)[0]


@torch.no_grad()
def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, iters: int = 100, tol: float = 1e-6, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k-means++ centres (see the module's docstring).

    :param x: points (N, D), float32 or float64, on any device; the work is done in its dtype.
    :param k: clusters, 1 <= k <= the number of distinct points.
    :param seed: seeds a private generator (the global RNG is left untouched).
    :param iters: at most this many Lloyd iterations.
    :param tol: stop once the centres' total squared shift is at most ``tol`` x the mean variance of a feature.
    :param chunk: rows whose distances to the centres are held at once.
    :returns: the centres (k, D) and each point's nearest centre (N,), int64.
    """
    _check_points(x)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must lie between 1 and the number of points {x.shape[0]}, got k = {k}")
    if chunk < 1 or iters < 0 or tol < 0:
        raise ValueError(f"need chunk >= 1, iters >= 0 and tol >= 0, got {chunk}, {iters} and {tol}")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    centres = _plus_plus(x, k, generator, chunk)
    threshold = tol * float(x.var(0, unbiased=False).mean())
    for _ in range(iters):
        updated = _means(x, _nearest(x, centres, chunk)[0], k, chunk)
        shift = float((updated - centres).pow(2).sum())
        centres = updated
        if shift <= threshold:
            break
    return centres, _nearest(x, centres, chunk)[0]
