"""The contribution estimates meet known answers: a useless modality, a duplicated one,
an exact Bayes posterior; the leave-one-out predictor and the fill they rest on."""

import math

import numpy as np
import pyro
import pytest
import torch
from scipy.special import logsumexp

import pyro_mm as pm
from pyro_mm.factors import ARM
from pyro_mm.factors.contributions import leave_one_out, modality_contributions
from pyro_mm.model.distributions import MultimodalMixture


def _fit(train, factors=(), epochs=12, seed=0, **model_kwargs):
    pyro.set_rng_seed(seed)
    # fusion "concat": these known answers (a redundant copy adds nothing given the
    # other) need a classifier that can learn it; "experts" sums per-modality evidence,
    # so it counts two copies twice (its naive-Bayes assumption), see pyro_mm.model.fusion.
    model_kwargs.setdefault("fusion", "concat")
    model = pm.MultimodalDPMixture(train.dims, num_classes=train.num_classes, latent_dim=4,
                                   num_components=6, hidden=(64,), factors=list(factors),
                                   **model_kwargs)
    return pm.fit(model, train, num_epochs=epochs, batch_size=64, seed=seed, progress=False)


@pytest.fixture(scope="module")
def informative_and_noise():
    """``inf`` carries the label, ``noise`` is independent of everything; 5 classes."""
    data = pm.datasets.make_synthetic(
        num_examples=500, num_clusters=5, dims={"inf": 6, "noise": 6},
        signal={"inf": 2.0, "noise": 0.0}, noise=1.0, seed=1)
    return data.split(0.4, seed=0)


@pytest.mark.parametrize("weight, epochs", [(0.1, 12), (1.0, 12), (10.0, 12), (1.0, 24)])
def test_a_useless_modality_scores_zero_whatever_arms_weight(informative_and_noise,
                                                              weight, epochs,
                                                              assert_bounded):
    train, test = informative_and_noise
    c = modality_contributions(_fit(train, [ARM(weight=weight)], epochs=epochs), test)
    assert abs(c["noise"]) < 0.05
    assert c["inf"] > 0.5
    assert abs(c.unimodal["noise"]) < 0.1
    assert_bounded(c)


def test_each_of_two_identical_copies_adds_nothing_given_the_other(assert_bounded):
    base = pm.datasets.make_synthetic(num_examples=500, num_clusters=4,
                                      dims={"copy": 6, "third": 6},
                                      signal={"copy": 2.0, "third": 0.7}, seed=2)
    features = {"a": base.features["copy"], "b": base.features["copy"].copy(),
                "third": base.features["third"]}
    train, test = pm.MultimodalData(features, labels=base.labels).split(0.4, seed=0)
    c = modality_contributions(_fit(train, [ARM()], epochs=15), test)
    assert abs(c["a"]) < 0.1 and abs(c["b"]) < 0.1
    alone = min(c.unimodal["a"], c.unimodal["b"])  # but each holds a lot on its own
    assert alone > 0.3 and alone > 10 * max(abs(c["a"]), abs(c["b"]))
    assert c["third"] > max(c["a"], c["b"])  # the one thing nothing else carries
    assert_bounded(c)


# ---------------------------------------------------------------- an exact answer
_C, _M, _D = 3, 3, 2
_MEANS = np.random.default_rng(0).normal(size=(_C, _M, _D)) * np.array([1.6, 1.0, 0.6])[
    None, :, None]


def _gaussian_classes(n, seed):
    """Class-conditional Gaussians, independent given y: unit variance, uniform y."""
    rng = np.random.default_rng(seed)
    y = rng.integers(_C, size=n)
    return _MEANS[y] + rng.normal(size=(n, _M, _D)), y


def _bayes_log_posterior(x, y, keep):
    """``log p(y | x_keep)`` exactly (equal priors cancel)."""
    ll = -0.5 * ((x[:, None, keep] - _MEANS[None][:, :, keep]) ** 2).sum((-1, -2))
    return (ll - logsumexp(ll, axis=1, keepdims=True))[np.arange(len(y)), y]


def _true_conditional_information(num_samples=200_000):
    """``I(y; x_m | x_-m) = E[log p(y | x) - log p(y | x_-m)]`` by Monte Carlo."""
    x, y = _gaussian_classes(num_samples, 1)
    full = _bayes_log_posterior(x, y, list(range(_M)))
    return [float((full - _bayes_log_posterior(x, y, [j for j in range(_M) if j != m])).mean())
            for m in range(_M)]


def test_contributions_match_the_exact_conditional_information(assert_bounded):
    """The observed-representation model is the honest comparison: its classifier reads
    the features themselves, so its target is I(y; x_m | x_-m) of the generating
    distribution (a latent model's z_m is a learned function of x_m)."""
    truth = _true_conditional_information()
    assert truth[0] > 0.4 and 0.03 < truth[1] < 0.2  # a strong and a weak modality

    def data(n, seed):
        x, y = _gaussian_classes(n, seed)
        return pm.MultimodalData({f"m{j}": x[:, j] for j in range(_M)}, labels=y)

    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture({f"m{j}": _D for j in range(_M)}, num_classes=_C,
                                   representation="observed", num_components=6,
                                   hidden=(32,))
    result = pm.fit(model, data(2000, 2), num_epochs=25, batch_size=128, seed=0,
                    progress=False)
    c = modality_contributions(result, data(3000, 3))
    for m, expected in enumerate(truth):
        assert c[f"m{m}"] == pytest.approx(expected, abs=0.1)
    assert_bounded(c)


# ---------------------------------------------------------------- the pieces
def test_fill_is_the_conditional_mean_of_the_joint_mixture_by_brute_force():
    torch.manual_seed(0)
    K, B = 4, 5
    log_w = torch.log_softmax(torch.randn(K), 0)
    locs = [torch.randn(K, 3), torch.randn(K, 2)]
    scales = [torch.rand(K, 3) + 0.3, torch.rand(K, 2) + 0.3]
    x = torch.randn(B, 5)
    present = torch.tensor([[True, False]] * B)
    mixture = MultimodalMixture(log_w, locs, scales, stacked=False)
    filled = mixture.fill_absent(x, present)
    for i in range(B):
        logits = log_w + torch.distributions.Normal(locs[0], scales[0]).log_prob(
            x[i, :3]).sum(-1)
        expected = torch.softmax(logits, 0) @ locs[1]
        torch.testing.assert_close(filled[i, 3:], expected)
    torch.testing.assert_close(filled[:, :3], x[:, :3])
    means, variances = mixture.conditional_moments(x, present)
    independent = MultimodalMixture(log_w, locs, scales, mixture="independent", stacked=False)
    prior_mean, _ = independent.conditional_moments(x, present)
    torch.testing.assert_close(prior_mean[1], (log_w.exp() @ locs[1]).expand(B, -1))
    assert bool((variances[1] > 0).all())


def test_leaving_a_modality_out_is_exactly_treating_it_as_missing(tiny_data):
    result = _fit(tiny_data, epochs=1)
    model, guide = result.model, result.guide
    batch = model.prepare(tiny_data)
    params = model.params_from_sites(guide.point_estimate())
    z, _ = guide.encode(batch, guide.point_estimate())
    loo = leave_one_out(model, z, params, batch.labels, batch.masks)
    without_b = batch.masks.clone()
    without_b[:, 1] = False
    torch.testing.assert_close(loo.without[:, 1],
                               model.label_log_prob(z, params, batch.labels, without_b))
    scrambled = z.clone()
    scrambled[:, 1] = 100.0 * torch.randn_like(z[:, 1])  # what was left out is never read
    torch.testing.assert_close(model.label_log_prob(scrambled, params, batch.labels, without_b),
                               loo.without[:, 1])
    assert bool(loo.valid.all())
    one_present = batch.masks.clone()
    one_present[:3, 0] = False
    loo = leave_one_out(model, z, params, batch.labels, one_present)
    assert not bool(loo.valid[:3].any()) and bool(loo.valid[3:].all())
    assert bool((loo.contributions[:3] == 0).all())


def test_modality_dropout_drops_present_modalities_and_never_all():
    model = pm.MultimodalDPMixture({"a": 2, "b": 2, "c": 2}, num_classes=2,
                                   modality_dropout=0.4)
    torch.manual_seed(0)
    mask = torch.rand(20000, 3) < 0.8
    mask[mask.sum(-1) == 0, 0] = True
    kept = model.dropout_mask(mask)
    assert not bool((kept & ~mask).any())
    assert bool(kept.any(-1).all())
    full = mask.all(-1)
    rate = 1 - kept[full].float().mean()
    # Dropped w.p. 0.4 each, plus the rescue of rows that lost all three (0.4^3).
    expected = 0.4 - 0.4**3 / 3
    assert float(rate) == pytest.approx(expected, abs=0.01)
    with pytest.raises(ValueError, match="modality_dropout"):
        pm.MultimodalDPMixture({"a": 2, "b": 2}, num_classes=2, modality_dropout=1.0)


def test_contributions_report_standard_errors_and_warn_when_nothing_was_fitted(tiny_data):
    train, test = tiny_data.split(0.5, seed=0)
    result = _fit(train, epochs=1, modality_dropout=0.0)
    with pytest.warns(UserWarning, match="modality_dropout=0"):
        c = modality_contributions(result, test)
    assert set(c.se) == set(c) == {"a", "b"}
    assert c.counts == {"a": test.num_examples, "b": test.num_examples}
    assert all(math.isfinite(v) and v > 0 for v in c.se.values())
    assert c.phi_mi_se > 0
    assert "+-" in str(c) and c.to_dict()["se"] == c.se
