"""Clustering scores against brute force and hand-derived values, k-means on cases with a known
answer, bad input ending in a ValueError that says what was wrong, and the k-means baseline script."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from pyro_vae.evaluation import clustering
from pyro_vae.evaluation.clustering import (
    assign,
    best_mapping,
    cluster_accuracy,
    contingency,
    hungarian,
    kmeans,
    nmi,
)


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to 6 cluster ids and 6 labels, both drawn from non-contiguous ids, 1 to 30 points."""
    n = int(rng.integers(1, 31))
    clusters = rng.choice(20, size=int(rng.integers(1, 7)), replace=False)
    classes = rng.choice(20, size=int(rng.integers(1, 7)), replace=False)
    return rng.choice(clusters, n), rng.choice(classes, n)


def _brute_force_hits(pred, labels) -> int:
    """The most points matched by any one-to-one map of clusters to labels, over every permutation."""
    pairs = Counter(zip(pred.tolist(), labels.tolist()))
    clusters, classes = sorted(set(pred.tolist())), sorted(set(labels.tolist()))
    m = max(len(clusters), len(classes))
    return max(
        sum(pairs[(c, classes[j])] for c, j in zip(clusters, perm) if j < len(classes))
        for perm in itertools.permutations(range(m))
    )


def _nmi_by_hand(pred, labels) -> float:
    """NMI from its definition, with Counter and math.log."""
    n = len(pred)
    joint, a, b = Counter(zip(pred, labels)), Counter(pred), Counter(labels)
    mi = sum(c / n * math.log((c / n) / (a[i] / n * b[j] / n)) for (i, j), c in joint.items())
    h_u = -sum(c / n * math.log(c / n) for c in a.values())
    h_v = -sum(c / n * math.log(c / n) for c in b.values())
    return mi / ((h_u + h_v) / 2)


def test_contingency_counts_pairs_with_rows_and_columns_in_increasing_id_order():
    table = contingency(torch.tensor([7, 7, 2, 2, 2]), np.array([0, 3, 3, 3, 0]))
    assert table.dtype == torch.int64
    assert table.tolist() == [[1, 2], [1, 1]]  # rows: clusters 2, 7; columns: labels 0, 3


def test_hungarian_finds_the_least_cost_assignment_of_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(1, 7))
        cost = rng.normal(size=(n, n)).round(1)  # rounded: ties happen
        cols = hungarian(cost)
        assert sorted(cols.tolist()) == list(range(n))
        best = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
        assert cost[np.arange(n), cols].sum() == pytest.approx(best, abs=1e-9)


def test_accuracy_equals_the_brute_force_maximum_over_permutations():
    rng = np.random.default_rng(1)
    shapes = Counter()
    for _ in range(200):
        pred, labels = _random_case(rng)
        clusters, classes = len(set(pred.tolist())), len(set(labels.tolist()))
        shapes[(clusters > classes) - (clusters < classes)] += 1
        hits = _brute_force_hits(pred, labels)
        assert cluster_accuracy(pred, labels) == hits / len(pred), (pred, labels)
        mapping = best_mapping(pred, labels)
        assert len(mapping) == min(clusters, classes) and len(set(mapping.values())) == len(mapping)
        assert set(mapping) <= set(pred.tolist()) and set(mapping.values()) <= set(labels.tolist())
        assert sum(int(((pred == c) & (labels == j)).sum()) for c, j in mapping.items()) == hits
    assert min(shapes[s] for s in (-1, 0, 1)) >= 20, shapes  # fewer, as many and more clusters than classes


def test_accuracy_is_invariant_under_relabelling_the_clusters_and_one_for_a_perfect_clustering():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 7, 300))
    acc = cluster_accuracy(pred, labels)
    assert 0.7 <= acc < 1
    for _ in range(5):
        relabel = rng.permutation(7) * 10 + 3  # a new, non-contiguous id for every cluster
        assert cluster_accuracy(relabel[pred], labels) == acc
    assert cluster_accuracy(rng.permutation(5)[labels], labels) == 1.0
    assert cluster_accuracy(torch.as_tensor(labels), torch.as_tensor(labels)) == 1.0


def test_accuracy_counts_clusters_left_without_a_class_as_wrong():
    labels = [0, 0, 0, 1, 1, 1]
    pred = [0, 0, 1, 2, 2, 3]  # four clusters, two classes: clusters 1 and 3 stay unmatched
    assert best_mapping(pred, labels) == {0: 0, 2: 1}
    assert cluster_accuracy(pred, labels) == 4 / 6


def test_nmi_of_a_small_example_derived_by_hand():
    # p(cluster, label): (0, 0) = 1/2, (1, 0) = 1/4, (1, 1) = 1/4; marginals (1/2, 1/2) and (3/4, 1/4)
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / 0.125)
    h_u, h_v = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(mi / ((h_u + h_v) / 2), rel=1e-12)
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-15)  # independent: I = 0


def test_nmi_matches_the_definition_is_symmetric_and_ignores_labelling():
    rng = np.random.default_rng(3)
    for _ in range(50):
        pred, labels = _random_case(rng)
        if len(set(pred.tolist())) == len(set(labels.tolist())) == 1:
            continue
        value = nmi(pred, labels)
        assert value == pytest.approx(_nmi_by_hand(pred.tolist(), labels.tolist()), rel=1e-9, abs=1e-12)
        assert nmi(labels, pred) == pytest.approx(value, rel=1e-12, abs=1e-15)
        assert nmi(rng.permutation(20)[pred], rng.permutation(20)[labels]) == pytest.approx(value, rel=1e-12, abs=1e-15)
        assert 0 <= value <= 1 + 1e-12


def test_nmi_is_one_for_identical_partitions_and_for_two_single_clusters():
    labels = np.random.default_rng(4).integers(0, 6, 500)
    assert nmi(labels, labels) == pytest.approx(1.0, rel=1e-12)
    assert nmi((labels + 1) * 5, labels) == pytest.approx(1.0, rel=1e-12)
    assert nmi([3, 3, 3], [1, 1, 1]) == 1.0  # 0/0, defined as 1 (scikit-learn's convention)
    assert nmi([3, 3, 3], [0, 1, 2]) == 0.0  # one side a single cluster, the other not: I = 0


def test_nmi_of_independent_partitions_is_near_zero():
    """For independent partitions 2 N I is about chi-squared with (r - 1)(c - 1) degrees of freedom,
    so E[I] = (r - 1)(c - 1) / (2N); the bound is that mean plus 6 of its standard deviations."""
    n, r, c = 100_000, 10, 8
    g = torch.Generator().manual_seed(5)
    pred, labels = torch.randint(r, (n,), generator=g), torch.randint(c, (n,), generator=g)
    dof = (r - 1) * (c - 1)
    mean_h = 0.5 * (math.log(r) + math.log(c))  # uniform draws: the entropies are nearly log r, log c
    value = nmi(pred, labels)
    assert 0 < value < (dof + 6 * math.sqrt(2 * dof)) / (2 * n) / (0.99 * mean_h), value


BAD_IDS = [
    ([0, 1, 2], [0, 1], "one entry per point, got lengths 3 and 2"),
    ([0, -1], [0, 1], r"pred must hold ids >= 0, found -1"),
    ([0, 1], [[0, 1]], r"labels must be 1-D .* got shape \(1, 2\)"),
    ([], [], "pred is empty"),
    ([0.0, 1.0], [0, 1], "pred must hold integer ids, got dtype torch.float64"),
]


@pytest.mark.parametrize("score", [cluster_accuracy, best_mapping, nmi, contingency])
@pytest.mark.parametrize("pred, labels, message", BAD_IDS)
def test_bad_ids_raise_a_value_error_saying_what_was_wrong(score, pred, labels, message):
    with pytest.raises(ValueError, match=message):
        score(np.array(pred), np.array(labels))


def _blobs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Five tight Gaussian blobs in 10-D, 60 points each, their means about 70 apart."""
    g = torch.Generator().manual_seed(seed)
    means = 50 * torch.randn(5, 10, generator=g, dtype=torch.float64)
    labels = torch.arange(5).repeat_interleave(60)
    x = means[labels] + torch.randn(300, 10, generator=g, dtype=torch.float64)
    return x.to(dtype), labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kmeans_recovers_well_separated_blobs(dtype):
    x, labels = _blobs(dtype)
    for seed in range(3):
        centres, index = kmeans(x, 5, seed=seed)
        assert centres.shape == (5, 10) and centres.dtype == dtype and index.shape == (300,)
        assert cluster_accuracy(index, labels) == 1.0
        means = torch.stack([x[index == j].mean(0) for j in range(5)])
        torch.testing.assert_close(centres, means)  # converged: every centre is its points' mean
        assert torch.equal(assign(x, centres), index)


def test_kmeans_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    x = torch.rand(500, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)  # no clear clusters
    state = torch.get_rng_state()
    first = kmeans(x, 6, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    second = kmeans(x, 6, seed=1)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(kmeans(x, 6, seed=2)[0], first[0])  # the seed matters


def test_kmeans_with_more_clusters_than_distinct_points_is_a_value_error():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]).repeat(4, 1)
    assert kmeans(x, 3)[1].unique().numel() == 3
    with pytest.raises(ValueError, match="x has only 3 distinct points, fewer than k = 4 clusters"):
        kmeans(x, 4)


def test_an_empty_cluster_is_reseeded_at_the_point_farthest_from_its_centre(monkeypatch):
    """Starting centres 5.75 and 100: every point is nearer 5.75, so the second cluster is empty and
    moves to 12, the point farthest from the mean 5.75 of its cluster; then {0, 1} and {10, 12}."""
    x = torch.tensor([[0.0], [1.0], [10.0], [12.0]], dtype=torch.float64)
    start = torch.tensor([[5.75], [100.0]], dtype=torch.float64)
    monkeypatch.setattr(clustering, "_plus_plus", lambda *args: start.clone())
    centres, index = kmeans(x, 2, iters=1)
    assert centres.flatten().tolist() == [5.75, 12.0] and index.tolist() == [0, 0, 1, 1]
    centres, index = kmeans(x, 2)
    assert centres.flatten().tolist() == [0.5, 11.0] and index.tolist() == [0, 0, 1, 1]


def test_chunked_distances_equal_unchunked_and_brute_force():
    g = torch.Generator().manual_seed(7)
    x, centres = torch.randn(1000, 20, generator=g, dtype=torch.float64), torch.randn(9, 20, generator=g).double()
    brute = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
    for chunk in (1, 7, 333, 1000, 5000):
        assert torch.equal(assign(x, centres, chunk=chunk), brute), chunk
    whole = kmeans(x[:300], 9, chunk=300)
    for chunk in (13, 256):
        part = kmeans(x[:300], 9, chunk=chunk)
        assert torch.equal(part[1], whole[1]) and torch.allclose(part[0], whole[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "x, k, message",
    [
        (torch.zeros(3, 2), 4, "k must lie between 1 and the number of points 3, got k = 4"),
        (torch.zeros(3, 2), 0, "k must lie between 1"),
        (torch.zeros(3, 2, dtype=torch.long), 1, "x must be a float32 or float64 tensor, got torch.int64"),
        (torch.zeros(3), 1, r"x must have shape \(N, D\) with N >= 1, got shape \(3,\)"),
        (torch.tensor([[0.0], [math.nan]]), 1, "x holds NaN or infinite values"),
    ],
)
def test_kmeans_bad_input_raises_a_value_error(x, k, message):
    with pytest.raises(ValueError, match=message):
        kmeans(x, k)


def test_assign_rejects_centres_that_do_not_fit():
    with pytest.raises(ValueError, match=r"centres \(2, 3\) torch.float32 do not fit x \(4, 2\) torch.float32"):
        assign(torch.zeros(4, 2), torch.zeros(2, 3))
