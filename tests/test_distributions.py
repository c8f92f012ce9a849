"""Stick breaking and :class:`pyro_mm.model.distributions.MultimodalMixture`, checked against
brute-force computations with explicit loops (float64)."""

import math

import pytest
import torch
from torch.distributions import Normal

from pyro_mm.model.distributions import (MultimodalMixture, gaussian_component_log_density,
                                         stick_breaking_weights)

DT = torch.float64


def _random_mixture(K=3, M=2, d=(2, 3), B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(K, generator=g, dtype=DT) + 0.1
    weights = weights / weights.sum()
    locs = [torch.randn(K, dm, generator=g, dtype=DT) for dm in d[:M]]
    scales = [0.5 + torch.rand(K, dm, generator=g, dtype=DT) for dm in d[:M]]
    xs = [torch.randn(B, dm, generator=g, dtype=DT) for dm in d[:M]]
    return weights, locs, scales, xs


def _component_log_density_loop(x, loc, scale):
    """``log N(x; loc, diag scale^2)`` for a single example and component."""
    return sum(-0.5 * ((x[j] - loc[j]) / scale[j]) ** 2 - math.log(scale[j])
               - 0.5 * math.log(2 * math.pi) for j in range(len(x)))


def _joint_loop(weights, locs, scales, xs, b, modalities):
    total = 0.0
    for k in range(len(weights)):
        log_term = math.log(weights[k])
        for m in modalities:
            log_term += _component_log_density_loop(xs[m][b].tolist(), locs[m][k].tolist(),
                                                    scales[m][k].tolist())
        total += math.exp(log_term)
    return math.log(total)


def _independent_loop(weights, locs, scales, xs, b, modalities):
    out = 0.0
    for m in modalities:
        total = 0.0
        for k in range(len(weights)):
            total += weights[k].item() * math.exp(_component_log_density_loop(
                xs[m][b].tolist(), locs[m][k].tolist(), scales[m][k].tolist()))
        out += math.log(total)
    return out


#: The mixture kind -> its brute-force log-density of one example.
BRUTE_FORCE = {"joint": _joint_loop, "independent": _independent_loop}


# ---------------------------------------------------------------- stick breaking
def test_stick_breaking_halves_match_hand_computation():
    w = stick_breaking_weights(torch.tensor([0.5, 0.5, 0.5], dtype=DT))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=DT))


def test_stick_breaking_random_sticks_match_python_loop():
    sticks = torch.rand(7, dtype=DT, generator=torch.Generator().manual_seed(1))
    expected, rest = [], 1.0
    for v in sticks.tolist():
        expected.append(v * rest)
        rest *= 1.0 - v
    expected.append(rest)
    torch.testing.assert_close(stick_breaking_weights(sticks),
                               torch.tensor(expected, dtype=DT))


def test_stick_breaking_weights_sum_to_one_over_a_batch():
    sticks = torch.rand(4, 9, dtype=DT, generator=torch.Generator().manual_seed(2))
    w = stick_breaking_weights(sticks)
    assert w.shape == (4, 10)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(4, dtype=DT))


# ---------------------------------------------------------------- component density
def test_gaussian_component_log_density_matches_normal_log_prob():
    _, locs, scales, xs = _random_mixture(K=4, M=1, d=(3,), B=6)
    x, loc, scale = xs[0], locs[0], scales[0]
    got = gaussian_component_log_density(x, loc, scale)
    expected = Normal(loc.unsqueeze(0), scale.unsqueeze(0)).log_prob(
        x.unsqueeze(1)).sum(-1)
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- mixture log_prob
@pytest.mark.parametrize("mixture", ["joint", "independent"])
def test_log_prob_matches_brute_force_sum_over_components(mixture):
    weights, locs, scales, xs = _random_mixture()
    mix = MultimodalMixture(weights.log(), locs, scales, mixture=mixture,
                            batch_size=5, stacked=False)
    got = mix.log_prob(torch.cat(xs, dim=-1))
    loop = BRUTE_FORCE[mixture]
    expected = torch.tensor([loop(weights, locs, scales, xs, b, [0, 1]) for b in range(5)],
                            dtype=DT)
    torch.testing.assert_close(got, expected)


def test_stacked_and_concatenated_values_give_same_log_prob():
    weights, locs, scales, xs = _random_mixture(d=(3, 3))
    stacked = MultimodalMixture(weights.log(), locs, scales, batch_size=5, stacked=True)
    flat = MultimodalMixture(weights.log(), locs, scales, batch_size=5, stacked=False)
    torch.testing.assert_close(stacked.log_prob(torch.stack(xs, dim=-2)),
                               flat.log_prob(torch.cat(xs, dim=-1)))


@pytest.mark.parametrize("mixture", ["joint", "independent"])
def test_masked_out_modality_contributes_nothing(mixture):
    weights, locs, scales, xs = _random_mixture()
    mask = torch.tensor([[True, False]] * 5)
    garbage = [xs[0], 1e3 * torch.randn(5, 3, dtype=DT)]  # masked values are arbitrary
    mix = MultimodalMixture(weights.log(), locs, scales, mixture=mixture, mask=mask,
                            stacked=False)
    only_a = MultimodalMixture(weights.log(), locs[:1], scales[:1], mixture=mixture,
                               batch_size=5, stacked=False)
    got = mix.log_prob(torch.cat(garbage, dim=-1))
    torch.testing.assert_close(got, only_a.log_prob(xs[0]))
    loop = BRUTE_FORCE[mixture]
    expected = torch.tensor([loop(weights, locs, scales, xs, b, [0]) for b in range(5)],
                            dtype=DT)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mixture", ["joint", "independent"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_in_a_masked_out_modality_stay_out(mixture, bad):
    weights, locs, scales, xs = _random_mixture()
    mask = torch.tensor([[True, False]] * 5)
    mix = MultimodalMixture(weights.log(), locs, scales, mixture=mixture, mask=mask,
                            stacked=False)
    poisoned = torch.cat([xs[0], torch.full((5, 3), bad, dtype=DT)], dim=-1)
    clean = torch.cat([xs[0], torch.zeros(5, 3, dtype=DT)], dim=-1)
    torch.testing.assert_close(mix.log_prob(poisoned), mix.log_prob(clean))


@pytest.mark.parametrize("mixture", ["joint", "independent"])
def test_row_wise_mask_matches_brute_force(mixture):
    weights, locs, scales, xs = _random_mixture()
    mask = torch.tensor([[True, True], [True, False], [False, True],
                         [True, True], [False, True]])
    mix = MultimodalMixture(weights.log(), locs, scales, mixture=mixture, mask=mask,
                            stacked=False)
    got = mix.log_prob(torch.cat(xs, dim=-1))
    loop = BRUTE_FORCE[mixture]
    expected = torch.tensor(
        [loop(weights, locs, scales, xs, b, [m for m in range(2) if mask[b, m]])
         for b in range(5)], dtype=DT)
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- responsibilities
def test_joint_responsibilities_have_shape_bk_and_rows_sum_to_one():
    weights, locs, scales, xs = _random_mixture()
    mix = MultimodalMixture(weights.log(), locs, scales, mixture="joint",
                            batch_size=5, stacked=False)
    r = mix.responsibilities(torch.cat(xs, dim=-1))
    assert r.shape == (5, 3)
    torch.testing.assert_close(r.sum(-1), torch.ones(5, dtype=DT))


def test_independent_responsibilities_have_shape_bmk_and_rows_sum_to_one():
    weights, locs, scales, xs = _random_mixture()
    mix = MultimodalMixture(weights.log(), locs, scales, mixture="independent",
                            batch_size=5, stacked=False)
    r = mix.responsibilities(torch.cat(xs, dim=-1))
    assert r.shape == (5, 2, 3)
    torch.testing.assert_close(r.sum(-1), torch.ones(5, 2, dtype=DT))


def test_joint_responsibilities_match_bayes_rule_by_hand():
    weights, locs, scales, xs = _random_mixture()
    mix = MultimodalMixture(weights.log(), locs, scales, mixture="joint",
                            batch_size=5, stacked=False)
    r = mix.responsibilities(torch.cat(xs, dim=-1))
    b = 2
    joint = [math.log(weights[k]) + sum(
        _component_log_density_loop(xs[m][b].tolist(), locs[m][k].tolist(),
                                    scales[m][k].tolist()) for m in range(2))
        for k in range(3)]
    expected = torch.softmax(torch.tensor(joint, dtype=DT), dim=0)
    torch.testing.assert_close(r[b], expected)


def test_responsibilities_pick_the_nearby_of_two_far_apart_components():
    locs = [torch.tensor([[-10.0, -10.0], [10.0, 10.0]], dtype=DT)] * 2
    scales = [torch.ones(2, 2, dtype=DT)] * 2
    log_w = torch.tensor([0.5, 0.5], dtype=DT).log()
    x = torch.tensor([[[-9.5, -10.2], [-10.1, -9.8]],
                      [[10.3, 9.9], [9.7, 10.0]],
                      [[-10.0, -10.0], [-9.0, -11.0]]], dtype=DT)
    for mixture in ("joint", "independent"):
        mix = MultimodalMixture(log_w, locs, scales, mixture=mixture, batch_size=3)
        r = mix.responsibilities(x)
        hard = r.argmax(-1)
        if mixture == "joint":
            assert hard.tolist() == [0, 1, 0]
            assert (r.max(-1).values > 0.999).all()
        else:
            assert hard.tolist() == [[0, 0], [1, 1], [0, 0]]


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("mixture", ["joint", "independent"])
def test_sample_shape_for_stacked_events(mixture):
    weights, locs, scales, _ = _random_mixture(d=(3, 3))
    mix = MultimodalMixture(weights.log(), locs, scales, mixture=mixture,
                            batch_size=4, stacked=True)
    assert mix.sample().shape == (4, 2, 3)
    assert mix.sample((7,)).shape == (7, 4, 2, 3)


@pytest.mark.parametrize("mixture", ["joint", "independent"])
def test_sample_shape_for_concatenated_events(mixture):
    weights, locs, scales, _ = _random_mixture(d=(2, 3))
    mix = MultimodalMixture(weights.log(), locs, scales, mixture=mixture,
                            batch_size=4, stacked=False)
    assert mix.sample().shape == (4, 5)
    assert mix.sample((7,)).shape == (7, 4, 5)


def test_joint_samples_share_one_component_across_modalities():
    locs = [torch.tensor([[-50.0], [50.0]]), torch.tensor([[-50.0], [50.0]])]
    scales = [torch.ones(2, 1)] * 2
    mix = MultimodalMixture(torch.tensor([0.5, 0.5]).log(), locs, scales,
                            mixture="joint", batch_size=200, stacked=True)
    x = mix.sample()
    signs = torch.sign(x[..., 0])
    assert (signs[:, 0] == signs[:, 1]).all()
    assert (signs > 0).any() and (signs < 0).any()


def test_stacked_with_unequal_sizes_is_rejected():
    with pytest.raises(ValueError, match="stacked"):
        MultimodalMixture(torch.zeros(2), [torch.zeros(2, 2), torch.zeros(2, 3)],
                          [torch.ones(2, 2), torch.ones(2, 3)], stacked=True)


def test_floored_logsumexp_equals_torchs_with_its_gradient_and_infinities():
    from pyro_mm.model.distributions import floored_logsumexp

    torch.manual_seed(0)
    x = (torch.randn(64, 20, dtype=torch.float64) * 300).requires_grad_()  # far terms
    ours, theirs = floored_logsumexp(x, -1), torch.logsumexp(x, -1)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), x)
    assert torch.allclose(g_ours, g_theirs, rtol=1e-12, atol=1e-30)
    assert floored_logsumexp(x, 0, keepdim=True).shape == (1, 20)
    assert torch.allclose(floored_logsumexp(x, 0), torch.logsumexp(x, 0), rtol=1e-12)
    inf = float("inf")
    y = torch.tensor([[-inf, -inf], [0.0, -inf], [inf, 1.0]])
    assert floored_logsumexp(y).tolist() == torch.logsumexp(y, -1).tolist() == [-inf, 0.0, inf]
