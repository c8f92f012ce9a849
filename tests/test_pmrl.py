"""PMRL (DESIGN 4.1): singular values, alignment optimum, finite gradients in the
degenerate cases, the sign of the leading direction, input errors, and the factor
attached to the model (history, trace site and scale, save/load)."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import pyro_mm as pm
from pyro_mm.factors import FACTORS, PMRL, factor_config, make_factor


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many tiny tensor operations; extra intra-op threads only add
    overhead (and contention on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit_columns(z):
    """``(B, D, M)`` stack of unit-normalised representations."""
    return (z / z.norm(dim=-1, keepdim=True)).transpose(-1, -2)


def _rank_one(batch, M, D, dtype=torch.float64, seed=0):
    """Every modality of an example points the same way (positive, unequal norms)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(batch, 1, D, generator=g, dtype=dtype)
    norms = torch.rand(batch, M, 1, generator=g, dtype=dtype) * 3 + 0.1
    return direction * norms


def _orthogonal(batch, M, D, dtype=torch.float64, seed=0):
    """Every example's modalities are orthonormal (a random rotation of e_1..e_M)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, D, D, generator=g, dtype=dtype))
    return q[..., :M].transpose(-1, -2).contiguous()


# ---------------------------------------------------------------- singular values
def test_rank_one_stack_has_leading_singular_value_sqrt_m_and_minimal_alignment():
    M, D = 4, 6
    factor = PMRL()
    aligned = factor.components(_rank_one(8, M, D))
    assert torch.allclose(aligned.singular_values[:, 0],
                          torch.full((8,), math.sqrt(M), dtype=torch.float64), atol=1e-10)
    assert torch.allclose(aligned.singular_values[:, 1:], torch.zeros(8, M - 1,
                          dtype=torch.float64), atol=1e-6)
    # The minimum of -log softmax(s / tau): sqrt(M) against M - 1 zeros.
    optimum = math.log1p((M - 1) * math.exp(-math.sqrt(M) / factor.tau_align))
    assert torch.allclose(aligned.align, torch.full((8,), optimum, dtype=torch.float64))
    orthogonal = factor.components(_orthogonal(8, M, D))
    assert torch.allclose(orthogonal.singular_values, torch.ones(8, M, dtype=torch.float64))
    assert torch.allclose(orthogonal.align, torch.full((8,), math.log(M),
                                                      dtype=torch.float64))
    random = factor.components(torch.randn(256, M, D, dtype=torch.float64))
    assert bool((aligned.align.max() < random.align).all())
    assert bool((random.singular_values[:, 0] <= math.sqrt(M) + 1e-12).all())
    assert bool((random.singular_values[:, 0] >= 1 - 1e-12).all())


@pytest.mark.parametrize("M,D", [(2, 3), (3, 3), (5, 4), (6, 8)])
def test_singular_values_match_svdvals(M, D):
    z = torch.randn(16, M, D, dtype=torch.float64)
    parts = PMRL().components(z)
    expected = torch.linalg.svdvals(_unit_columns(z))          # min(D, M) values
    k = expected.shape[-1]
    assert torch.allclose(parts.singular_values[:, :k], expected, atol=1e-10)
    assert torch.allclose(parts.singular_values[:, k:], torch.zeros(16, M - k,
                          dtype=torch.float64), atol=1e-6)
    assert torch.allclose(parts.singular_values.pow(2).sum(-1),
                          torch.full((16,), float(M), dtype=torch.float64))
    assert torch.allclose(parts.direction.norm(dim=-1), torch.ones(16, dtype=torch.float64))


def test_float32_matches_float64():
    z = torch.randn(32, 3, 5, dtype=torch.float64)
    factor = PMRL(penalise_antialigned=True)
    full, single = factor.components(z), factor.components(z.float())
    for name in ("align", "instance", "singular_values", "antialigned", "total"):
        assert torch.allclose(getattr(single, name).double(), getattr(full, name),
                              atol=1e-4, rtol=1e-4), name


# ---------------------------------------------------------------- gradients
DEGENERATE = {
    "all equal": lambda: _rank_one(6, 3, 5),
    "all orthogonal": lambda: _orthogonal(6, 3, 5),
    "nearly equal": lambda: _rank_one(6, 3, 5) + 1e-9 * torch.randn(6, 3, 5,
                                                                    dtype=torch.float64),
    "nearly orthogonal": lambda: _orthogonal(6, 3, 5) + 1e-9 * torch.randn(
        6, 3, 5, dtype=torch.float64),
    "anti-aligned": lambda: _rank_one(6, 2, 5) * torch.tensor([1.0, -1.0],
                                                              dtype=torch.float64)[:, None],
    "two modalities": lambda: torch.randn(6, 2, 5, dtype=torch.float64),
    "many modalities": lambda: torch.randn(6, 6, 8, dtype=torch.float64),
    "more modalities than dims": lambda: torch.randn(6, 6, 3, dtype=torch.float64),
    "a zero vector": lambda: torch.cat([torch.zeros(6, 1, 5, dtype=torch.float64),
                                        torch.randn(6, 2, 5, dtype=torch.float64)], 1),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_in_degenerate_cases(case, dtype):
    z = DEGENERATE[case]().to(dtype).requires_grad_(True)
    parts = PMRL(penalise_antialigned=True).components(z)
    for name in ("align", "instance", "antialigned", "total"):
        value = getattr(parts, name)
        assert bool(torch.isfinite(value).all()), name
        (grad,) = torch.autograd.grad(value.sum(), z, retain_graph=True)
        assert bool(torch.isfinite(grad).all()), name
    assert bool(torch.isfinite(parts.singular_values).all())


def test_gradient_of_orthogonal_columns_is_finite_when_eigenvectors_are_not():
    """With all columns orthogonal the Gram matrix is the identity: eigh's eigenvector
    gradient there carries 1/(lambda_1 - lambda_2) = 1/rounding error (huge or
    non-finite), the trap the detached eigenvector avoids."""
    z = _orthogonal(4, 3, 5).requires_grad_(True)
    gram = _unit_columns(z).transpose(-1, -2) @ _unit_columns(z)
    _, vecs = torch.linalg.eigh(gram)
    (naive,) = torch.autograd.grad(vecs[..., -1].sum(), z)
    assert not bool(torch.isfinite(naive).all()) or float(naive.abs().max()) > 1e8
    (ours,) = torch.autograd.grad(PMRL(penalise_antialigned=True)(z), z)
    assert bool(torch.isfinite(ours).all()) and float(ours.abs().max()) < 1e3


@pytest.mark.parametrize("M,D", [(2, 3), (2, 5), (3, 4), (6, 8)])
def test_alignment_gradient_passes_gradcheck(M, D):
    """Where the singular values are distinct the alignment gradient is exact (the
    eigenvector enters a Rayleigh quotient). The instance term is a surrogate (the
    leading direction moves with w held fixed) and is not checked this way."""
    z = torch.randn(2, M, D, dtype=torch.float64, requires_grad=True)
    factor = PMRL(penalise_antialigned=True)
    assert torch.autograd.gradcheck(lambda x: factor.components(x).align, (z,))
    # The anti-alignment penalty is a function of the Gram matrix alone.
    assert torch.autograd.gradcheck(lambda x: factor.components(x).antialigned, (z,))


def test_alignment_gradient_moves_columns_together():
    """One gradient step on the alignment loss raises the leading singular value."""
    z = torch.randn(32, 4, 6, dtype=torch.float64, requires_grad=True)
    factor = PMRL(instance_weight=0.0)
    before = factor.components(z).singular_values[:, 0]
    (grad,) = torch.autograd.grad(factor(z), z)
    after = factor.components(z - 0.5 * grad).singular_values[:, 0]
    assert bool((after >= before - 1e-12).all()) and bool((after > before).any())


# ---------------------------------------------------------------- sign of u
def test_leading_direction_points_along_the_representations():
    z = torch.randn(64, 3, 5, dtype=torch.float64)
    parts = PMRL().components(z)
    mean_direction = _unit_columns(z).sum(-1)
    assert bool(((parts.direction * mean_direction).sum(-1) >= -1e-12).all())


def test_losses_do_not_depend_on_the_eigensolver_sign(monkeypatch):
    """eigh may return +w or -w; with the sign fixed the losses are the same."""
    z = torch.randn(16, 3, 4, dtype=torch.float64)
    factor = PMRL(penalise_antialigned=True)
    reference = factor.components(z)
    eigh = torch.linalg.eigh
    flips = torch.tensor([-1.0 if i % 3 == 0 else 1.0 for i in range(16)],
                         dtype=torch.float64)

    def flipped_eigh(matrix, *args, **kwargs):
        values, vectors = eigh(matrix, *args, **kwargs)
        return values, vectors * flips[:, None, None]

    monkeypatch.setattr(torch.linalg, "eigh", flipped_eigh)
    flipped = factor.components(z)
    for name in ("direction", "align", "instance", "total"):
        assert torch.allclose(getattr(flipped, name), getattr(reference, name)), name


def test_flipping_one_example_flips_only_its_direction():
    """Negating every representation of one example leaves its singular values and
    alignment loss unchanged and negates its leading direction (u follows the
    representations), leaving every other direction unchanged."""
    z = torch.randn(16, 3, 4, dtype=torch.float64)
    factor = PMRL()
    reference = factor.components(z)
    flipped_z = z.clone()
    flipped_z[5] = -flipped_z[5]
    flipped = factor.components(flipped_z)
    assert torch.allclose(flipped.singular_values, reference.singular_values)
    assert torch.allclose(flipped.align, reference.align)
    assert torch.allclose(flipped.direction[5], -reference.direction[5])
    others = torch.arange(16) != 5
    assert torch.allclose(flipped.direction[others], reference.direction[others])
    # The instance loss is the InfoNCE of these directions.
    u = flipped.direction
    logits = u @ u.T / factor.tau_instance
    expected = -torch.log_softmax(logits, dim=-1).diagonal()
    assert torch.allclose(flipped.instance, expected)


def test_flipping_every_example_leaves_instance_loss_unchanged():
    z = torch.randn(16, 3, 4, dtype=torch.float64)
    factor = PMRL(penalise_antialigned=True)
    reference, flipped = factor.components(z), factor.components(-z)
    for name in ("align", "instance", "antialigned", "total"):
        assert torch.allclose(getattr(flipped, name), getattr(reference, name)), name


def test_exactly_anti_aligned_pair_breaks_the_tie_with_the_first_modality():
    z = _rank_one(8, 2, 4) * torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None]
    parts = PMRL().components(z)
    first = z[:, 0] / z[:, 0].norm(dim=-1, keepdim=True)
    # The representations' mean direction is zero; u is the first modality's direction.
    assert torch.allclose(parts.direction, first)


# ---------------------------------------------------------------- anti-alignment
def test_anti_aligned_columns_are_rank_one_and_only_the_penalty_sees_them():
    M, D = 3, 5
    aligned = _rank_one(8, M, D)
    anti = aligned * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)[:, None]
    plain, penalised = PMRL(), PMRL(penalise_antialigned=True)
    assert torch.allclose(plain.components(anti).singular_values[:, 0],
                          torch.full((8,), math.sqrt(M), dtype=torch.float64))
    assert torch.allclose(plain.components(anti).align, plain.components(aligned).align)
    # Two of the three pairs have cosine -1.
    penalty = penalised.components(anti).antialigned
    assert torch.allclose(penalty, torch.full((8,), 2 / penalised.tau_align,
                                              dtype=torch.float64))
    assert torch.allclose(penalised.components(aligned).antialigned,
                          torch.zeros(8, dtype=torch.float64))
    assert torch.allclose(penalised.components(anti).total - plain.components(anti).total,
                          penalty)


def test_penalty_pulls_anti_aligned_pair_to_agreement():
    """Without the penalty an anti-aligned pair stays anti-aligned (it is an optimum of
    the alignment term); with it gradient descent crosses orthogonality."""
    final = {}
    for penalise in (False, True):
        angle = torch.tensor([0.0, 0.9 * math.pi], requires_grad=True)
        factor = PMRL(instance_weight=0.0, penalise_antialigned=penalise)
        optimizer = torch.optim.SGD([angle], lr=0.05)
        for _ in range(300):
            z = torch.stack([angle.cos(), angle.sin()], -1)[None]
            optimizer.zero_grad()
            factor(z).backward()
            optimizer.step()
        final[penalise] = math.cos(float((angle[1] - angle[0]).detach()))
    assert final[False] < -0.9
    assert final[True] > 0.5


# ---------------------------------------------------------------- plain loss, masks
def test_plain_loss_is_the_mean_and_accepts_a_list():
    z = torch.randn(10, 3, 4)
    factor = PMRL(instance_weight=0.5)
    parts = factor.components(z)
    assert factor(z).shape == ()
    assert torch.allclose(factor(z), parts.total.mean())
    assert torch.allclose(parts.total, parts.align + 0.5 * parts.instance)
    assert torch.allclose(factor(list(z.unbind(1))), factor(z))
    assert torch.allclose(factor.per_example(z), parts.total)
    assert parts.singular_values.shape == (10, 3)
    assert parts.direction.shape == (10, 4)


def test_single_example_batch_has_zero_instance_loss():
    parts = PMRL().components(torch.randn(1, 2, 3))
    assert torch.allclose(parts.instance, torch.zeros(1))


def test_chunked_instance_loss_matches():
    z = torch.randn(50, 3, 4, dtype=torch.float64)
    factor = PMRL()
    whole = factor.components(z).instance
    factor.chunk_size = 7
    assert torch.allclose(factor.components(z).instance, whole)


def test_missing_modality_is_left_out():
    z = torch.randn(12, 3, 4, dtype=torch.float64)
    mask = torch.ones(12, 3, dtype=torch.bool)
    mask[:6, 2] = False
    mask[6:8, 1:] = False                       # one observed modality
    factor = PMRL()
    parts = factor.components(z, mask)
    pair = factor.components(z[:6, :2])
    assert torch.allclose(parts.align[:6], pair.align)
    assert torch.allclose(parts.singular_values[:6, :2], pair.singular_values)
    assert torch.allclose(parts.singular_values[:6, 2], torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(parts.align[6:8], torch.zeros(2, dtype=torch.float64))
    single = z[6:8, 0] / z[6:8, 0].norm(dim=-1, keepdim=True)
    assert torch.allclose(parts.direction[6:8], single)
    full = factor.components(z[8:])
    assert torch.allclose(parts.align[8:], full.align)
    # Garbage in a missing modality changes nothing.
    noisy = z.clone()
    noisy[:6, 2] = 1e3 * torch.randn(6, 4, dtype=torch.float64)
    assert torch.allclose(factor.components(noisy, mask).total, parts.total)


def test_non_finite_input_gives_a_non_finite_loss_not_an_exception():
    z = torch.randn(4, 3, 5)
    z[1, 0, 2] = float("nan")
    assert not bool(torch.isfinite(PMRL()(z)))


# ---------------------------------------------------------------- errors, config
def test_fewer_than_two_modalities_is_an_error():
    with pytest.raises(ValueError, match=r"PMRL.*2 modalities.*got 1"):
        PMRL()(torch.randn(4, 1, 3))
    with pytest.raises(ValueError, match=r"PMRL.*2 modalities.*got 1"):
        PMRL()([torch.randn(4, 3)])
    with pytest.raises(ValueError, match=r"PMRL.*\(batch, modalities, latent\)"):
        PMRL()(torch.randn(4, 3))


def test_unequal_latent_sizes_are_an_error():
    with pytest.raises(ValueError, match=r"PMRL.*same latent size.*\[4, 3\]"):
        PMRL()([torch.randn(5, 4), torch.randn(5, 3)])
    with pytest.raises(ValueError, match=r"PMRL.*same batch shape"):
        PMRL()([torch.randn(5, 4), torch.randn(6, 4)])


def test_one_modality_model_is_an_error(tiny_data):
    dims = tiny_data.select(["a"]).dims
    with pytest.raises(ValueError, match=r"PMRL.*2 modalities.*got 1.*\['a'\]"):
        pm.MultimodalDPMixture(dims, latent_dim=2, num_components=3, factors=[PMRL()])
    model = pm.MultimodalDPMixture(dims, latent_dim=2, num_components=3)
    with pytest.raises(ValueError, match=r"PMRL.*2 modalities.*got 1.*\['a'\]"):
        PMRL().check_model(model)
    # Inside the model as well (a factor list changed after construction).
    model.factors.append(PMRL())
    with pytest.raises(ValueError, match=r"PMRL.*2 modalities.*got 1.*\['a'\]"):
        pm.fit(model, tiny_data.select(["a"]), num_epochs=1, progress=False, device="cpu")


@pytest.mark.parametrize("kwargs", [{"tau_align": 0}, {"tau_instance": -1.0},
                                    {"instance_weight": -0.1}, {"weight": -1},
                                    {"penalise_antialigned": "yes"}])
def test_bad_arguments_are_errors(kwargs):
    with pytest.raises(ValueError):
        PMRL(**kwargs)


def test_registered_and_config_round_trips():
    assert FACTORS["pmrl"] is PMRL
    factor = PMRL(weight=0.3, tau_align=0.1, tau_instance=0.2, instance_weight=0.5,
                  penalise_antialigned=True, name="align")
    spec = factor_config(factor)
    assert spec == {"kind": "pmrl", "weight": 0.3, "name": "align", "tau_align": 0.1,
                    "tau_instance": 0.2, "instance_weight": 0.5,
                    "penalise_antialigned": True}
    again = make_factor(spec)
    assert type(again) is PMRL and again.config() == factor.config()
    assert pm.factors.PMRL is PMRL


# ---------------------------------------------------------------- in the model
@pytest.fixture(scope="module")
def synthetic():
    return pm.datasets.make_synthetic(num_examples=200, num_clusters=3,
                                      dims={"a": 4, "b": 3})


def test_attached_factor_logs_scales_and_round_trips(synthetic, tmp_path):
    factor = PMRL(weight=0.5, instance_weight=2.0, penalise_antialigned=True)
    model = pm.MultimodalDPMixture(synthetic.dims, num_classes=3, latent_dim=4,
                                   num_components=5, factors=[factor])
    result = pm.fit(model, synthetic, num_epochs=2, batch_size=64, progress=False,
                    device="cpu")
    steps = result.history.steps
    assert len(steps) == 8
    for key in ("pmrl/align", "pmrl/instance", "pmrl/leading_sv", "pmrl/antialigned",
                "pmrl/loss"):
        values = result.history.series(key)
        assert len(values) == len(steps) and all(math.isfinite(v) for v in values), key
    assert all(1.0 - 1e-5 <= v <= math.sqrt(2) + 1e-5
               for v in result.history.series("pmrl/leading_sv"))

    # The site: per example, inside the data plate, scaled by N / B.
    batch = model.prepare(synthetic)
    idx = torch.arange(40)
    guide_trace = poutine.trace(result.guide).get_trace(batch, idx)
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch, idx)
    model.pop_records()
    site = trace.nodes["pmrl"]
    assert site["fn"].batch_shape == (40,)
    assert any(frame.name == "data" for frame in site["cond_indep_stack"])
    assert site["scale"] == pytest.approx(200 / 40)
    z = trace.nodes["z"]["value"]
    expected = -0.5 * PMRL(instance_weight=2.0, penalise_antialigned=True).per_example(
        z, batch.index(idx).masks)
    assert torch.allclose(site["fn"].log_prob(site["value"]), expected, atol=1e-5)
    # Its gradient reaches the encoders through the reparameterised z.
    encoder = [p for p in result.guide.encoders.parameters() if p.requires_grad]
    grads = torch.autograd.grad(site["fn"].log_prob(site["value"]).sum(), encoder,
                                allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)

    path = result.save(tmp_path / "run")
    loaded = pm.load(path)
    (restored,) = loaded.model.factors
    assert type(restored) is PMRL and restored.config() == factor.config()
    assert np.allclose(pm.predict(loaded, synthetic)["latent_mean"],
                       pm.predict(result, synthetic)["latent_mean"])


def test_default_factor_in_the_model(synthetic):
    model = pm.MultimodalDPMixture(synthetic.dims, num_classes=3, latent_dim=4,
                                   num_components=5, factors=[PMRL()])
    result = pm.fit(model, synthetic, num_epochs=2, progress=False, device="cpu")
    keys = set().union(*result.history.steps)
    assert {"pmrl/align", "pmrl/instance", "pmrl/leading_sv"} <= keys
    assert "pmrl/antialigned" not in keys


# ---------------------------------------------------------------- mfeat (slow)
def _mfeat_run(train, test, factors, seed):
    pyro.set_rng_seed(seed)  # the networks' initial weights
    model = pm.MultimodalDPMixture(train.dims, num_classes=10, latent_dim=16,
                                   num_components=20, factors=factors)
    result = pm.fit(model, train, num_epochs=30, batch_size=128, seed=seed, progress=False,
                    device="cpu")
    latent = torch.as_tensor(pm.predict(result, test)["latent_mean"])
    leading = float(PMRL().components(latent).singular_values[:, 0].mean())
    return leading, pm.evaluate(result, test)["accuracy"]


@pytest.mark.slow
def test_pmrl_aligns_held_out_mfeat_without_costing_accuracy():
    """All six views, three seeds, same budget with and without PMRL at the weight the
    guide recommends (the likelihood's scale): the held-out leading singular value rises
    and the mean accuracy falls by at most one point."""
    data = pm.datasets.load_mfeat()
    plain, aligned = [], []
    for seed in range(3):
        train, test = data.split(0.2, seed=seed)
        plain.append(_mfeat_run(train, test, [], seed))
        aligned.append(_mfeat_run(train, test, [PMRL(weight=100.0, tau_align=1.0)], seed))
    (plain_sv, plain_acc), (sv, acc) = np.mean(plain, 0), np.mean(aligned, 0)
    assert sv > plain_sv + 0.1, (plain, aligned)
    assert acc >= plain_acc - 0.01, (plain, aligned)
