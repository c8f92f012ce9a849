""":mod:`pyro_mm.predictive.metrics` against scikit-learn and closed-form values."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from pyro_mm.predictive.metrics import adjusted_rand_index, weights_perplexity


@pytest.mark.parametrize("seed,n,ka,kb", [(0, 50, 3, 3), (1, 200, 5, 2), (2, 17, 4, 6),
                                          (3, 100, 1, 4), (4, 30, 10, 10)])
def test_ari_matches_sklearn_on_random_labelings(seed, n, ka, kb):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, ka, n)
    b = rng.integers(0, kb, n)
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_ari_matches_sklearn_on_correlated_labelings():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 4, 120)
    b = np.where(rng.random(120) < 0.7, a, rng.integers(0, 4, 120))
    expected = adjusted_rand_score(a, b)
    assert 0.2 < expected < 0.95  # genuinely partial agreement
    assert adjusted_rand_index(a, b) == pytest.approx(expected, abs=1e-12)


def test_ari_is_one_under_relabelling():
    rng = np.random.default_rng(6)
    a = rng.integers(0, 5, 80)
    relabel = np.array([7, 3, 9, 0, 42])
    assert adjusted_rand_index(a, relabel[a]) == pytest.approx(1.0)


def test_ari_accepts_tensors():
    a = torch.tensor([0, 0, 1, 1, 2, 2])
    b = torch.tensor([1, 1, 0, 0, 2, 0])
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a.numpy(),
                                                                          b.numpy()))


def test_ari_rejects_labelings_of_different_lengths():
    with pytest.raises(ValueError, match="lengths"):
        adjusted_rand_index([0, 1, 1], [0, 1])


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_weights_perplexity_equals_k_for_uniform_weights(k):
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    assert weights_perplexity(w).item() == pytest.approx(k)


def test_weights_perplexity_is_about_one_for_a_dominant_weight():
    w = torch.tensor([1.0 - 1e-6] + [1e-6 / 9] * 9, dtype=torch.float64)
    assert weights_perplexity(w).item() == pytest.approx(1.0, abs=1e-4)


def test_weights_perplexity_normalises_and_batches():
    w = torch.tensor([[2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(weights_perplexity(w), torch.tensor([2.0, 4.0]))
