"""The multimodal Dirichlet-process Gaussian mixture as a Pyro model.

Generative model (``K`` components, ``M`` modalities, latent size ``D``)::

    alpha            fixed, or ~ Gamma(a0, b0)                       site "alpha"
    v_k              ~ Beta(1, alpha),  k = 1..K-1                    site "sticks"
    pi               = stick_breaking(v)     (all mass kept)
    mu_mk            ~ Normal(0, s0^2 I)                              site "component_loc_<m>"
    sigma_mk         ~ LogNormal(log s1, t1) per dimension            site "component_scale_<m>"
    nu_m             ~ Gamma(2, 0.1)  if component="studentt", df="learned"  site "component_df_<m>"
    W                ~ Normal(0, sigma_W^2)  classifier weights, if classifier_prior_scale
                                                        factor "classifier_prior"
    for i in plate("data", N, subsample=...):
        z_i          ~ MultimodalMixture(pi, mu, sqrt(sigma^2 + f_m^2))  (B, M, D)  site "z"
        x_im         ~ Normal(decoder_m(z_im), scale_m)  if reconstruct   site "x_<m>"
        y_i          ~ Categorical(logits=classifier(fuse(fill(z_i))))      site "y"
                       (fusion "experts": the product of the present modalities'
                       unimodal heads, fitted alone through the factor "y_experts")
        factors      pyro.factor(<factor name>, -weight * loss)

With ``representation="observed"`` there is no ``z`` and no decoder: the mixture is the
likelihood of the (standardised) features, site ``"x"``, event shape ``(sum_m d_m,)``,
with missing modalities marginalised out; the classifier, if any, reads the features
(``concat``, or ``experts``: one head per modality's features).

Component assignments are summed out exactly (no discrete site). The sites above are the
model's public interface: diagnostics and users rely on these names.

Decisions not fixed by the design:

* Features are standardised with statistics fitted on the training data
  (:meth:`MultimodalDPMixture.fit_standardization`) and stored in buffers; every
  likelihood is on that scale, and :meth:`MultimodalDPMixture.feature_log_jacobian`
  converts to the original scale.
* **Scale floor.** A component's scale is ``sqrt(sigma_mk^2 + f_m^2)``, never the bare
  ``sigma_mk``, so a feature that is constant among a component's training members
  cannot make a held-out example cost millions of nats: ``f = scale_floor`` (0.05)
  training standard deviations for observed features, ``scale_floor * s1`` for latent
  ones; why, and what it costs, in :mod:`pyro_mm.model.scale_floors`. ``scale_floor=0`` is the
  previous behaviour. :class:`~pyro_mm.model.params.MixtureParams` applies it where it builds
  the mixture, so every consumer uses the same scale.
* **Student-t components** (``component="studentt"``): each component is a product of
  univariate Student-t densities (same locs and effective scales) with ``nu_m`` degrees
  of freedom per modality, fixed or learned (site ``component_df_<m>``, prior
  ``Gamma(2, 0.1)``, mean 20). An outlying feature then costs ``~ (nu + 1) log r`` nats
  rather than ``r^2 / 2``. Assignments are still summed out exactly.
* A missing modality's representation still has the mixture prior (it is a latent
  variable like any other); only its likelihood ``x_im`` is masked out.
* The classifier never reads an absent modality's value. With ``concat`` (the default)
  or ``dp``, ``fill`` replaces it by the mixture's conditional mean given the present
  modalities
  (:meth:`~pyro_mm.model.distributions.MultimodalMixture.fill_absent`), the same prediction
  the guide uses for a missing modality. ``fusion="experts"`` leaves its head out of
  the sum instead (:mod:`pyro_mm.model.fusion` says when that is better). Either way
  "modality ``m`` missing" is one
  input the classifier handles, whether ``m`` is missing from the data or left out on
  purpose.
* Unobserved data are sampled, as Pyro users expect of ``pyro.infer.Predictive``:
  without labels, ``y`` is an ordinary latent site (its log-density masked to zero,
  so it adds nothing to the ELBO); with some labels missing, or with a modality missing
  where a decoder exists, the site stays observed and masked, and its unobserved rows
  hold a draw from the model (``y`` from the classifier, ``x_<m>`` from the decoder,
  on the standardised scale) instead of a placeholder. The ELBO is unchanged.
* Modality dropout (``modality_dropout=p``, training only): for the label likelihood,
  each present modality of each example is treated as absent with probability ``p``
  (never all of an example's modalities). The classifier is thereby fitted to predict
  ``y`` from every subset it will be asked about: examples with missing views, and the
  leave-one-out predictions ``q(y | z_-m)`` of ARM's contribution estimates
  (:mod:`pyro_mm.factors.arm`). It changes the label term of the objective to
  ``E_mask log q(y | fill(z, mask))``; the priors and reconstructions are untouched, and
  outside training (prediction, evaluation) nothing is dropped. ``fusion="experts"``
  needs none: its heads are each fitted alone (the factor ``"y_experts"``, the sum over
  present modalities of ``log q_m(y | z_m)``), so every subset's product is a fitted
  predictor; its ``"y"`` site scores that product and passes no gradient
  (:mod:`pyro_mm.model.fusion` says why).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..data.container import TensorBatch
from ._pyro_module import UniquelyNamedModule
from .arguments import check_arguments
from .factor_protocol import AuxiliaryFactor, FactorContext, factor_config, make_factor
from .fusion import make_classifier, make_fusion
from .label_head import LabelHead
from .networks import GaussianDecoder
from .params import DF_PRIOR, MixtureParams
from .scale_floors import keep_missing_floors
from .sites import fill_unobserved, unbatched
from .standardization import FeatureStandardization

#: Default probability of modality dropout for the classifier (see the module
#: docstring; measured in ``benchmarks/RESULTS.md``).
MODALITY_DROPOUT = 0.2


class MultimodalDPMixture(FeatureStandardization, LabelHead, UniquelyNamedModule):
    """Multimodal Dirichlet-process Gaussian mixture (see the module docstring).

    Args:
        dims: ``modality name -> number of features`` (``MultimodalData.dims``).
        num_classes: classes of the supervised head; ``None`` for no head.
        latent_dim: ``D``, the size of every modality's representation.
        num_components: ``K``, the truncation level (an upper bound, not the number
            used).
        mixture: ``"joint"`` (one component per example shared by its modalities) or
            ``"independent"`` (each modality picks its own).
        representation: ``"latent"`` (amortised representations ``z``) or
            ``"observed"`` (the mixture sits on the standardised features).
        reconstruct: decode ``z`` back to the features (default: ``True`` for latent).
        fusion: ``"concat"`` (the default, and the only choice for observed),
            ``"dp"`` (prominence gate) or ``"experts"`` (one head per modality, absent
            ones add nothing: better when views are often missing, but it counts
            redundant modalities twice); see :mod:`pyro_mm.model.fusion`.
        alpha: concentration: a positive number (fixed) or ``"learned"``
            (``Gamma(*alpha_prior)`` prior).
        alpha_prior: ``(a0, b0)``, shape and rate of the Gamma prior.
        prior_loc_scale: ``s0``, prior scale of the component means.
        prior_scale: ``s1``, prior median of the component scales.
        prior_scale_spread: ``t1``, log-scale spread of the component scales.
        scale_floor: floor of the component scales as a fraction of each feature's
            training standard deviation (observed) or of ``s1`` (latent); see the
            module docstring. ``0`` (with ``resolution_floor=False``) disables it.
        resolution_floor: also floor observed features at their recording resolution
            (``q / sqrt(12)``, added in quadrature).
        component: ``"normal"`` (Gaussian components) or ``"studentt"``.
        df: Student-t degrees of freedom: a positive number (fixed, every modality) or
            ``"learned"`` (one per modality, site ``component_df_<m>``).
        hidden: hidden sizes of the decoders and the classifier.
        modality_dropout: probability of leaving each present modality out of the
            classifier's input during training (module docstring); 0 turns it off.
        experts_pool: ``fusion="experts"`` only: ``"product"`` (the product rule, exact
            for conditionally independent modalities) or ``"mean"`` (the logarithmic
            opinion pool, weights ``1 / |present|``: calibrated for redundant ones);
            see :mod:`pyro_mm.model.fusion`.
        classifier_prior_scale: ``sigma`` of a ``Normal(0, sigma)`` prior on the
            classifier's weights (MAP, i.e. L2 regularisation; site
            ``"classifier_prior"``); ``None``: no prior (maximum likelihood).
        factors: auxiliary factors (e.g. :class:`pyro_mm.factors.PMRL`).
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int | None = None,
        latent_dim: int = 16,
        num_components: int = 20,
        *,
        mixture: str = "joint",
        representation: str = "latent",
        reconstruct: bool | None = None,
        fusion: str = "concat",
        alpha: float | str = 1.0,
        alpha_prior: tuple[float, float] = (1.0, 1.0),
        prior_loc_scale: float = 3.0,
        prior_scale: float = 1.0,
        prior_scale_spread: float = 1.0,
        scale_floor: float = 0.05,
        resolution_floor: bool = False,
        component: str = "normal",
        df: float | str = "learned",
        hidden: Sequence[int] = (256,),
        modality_dropout: float = MODALITY_DROPOUT,
        classifier_prior_scale: float | None = None,
        experts_pool: str = "product",
        factors: Sequence[AuxiliaryFactor] = (),
    ):
        super().__init__("pyro_mm_model")
        if reconstruct is None:
            reconstruct = representation == "latent"
        check_arguments(
            dims=dims, num_classes=num_classes, latent_dim=latent_dim,
            num_components=num_components, mixture=mixture, representation=representation,
            reconstruct=reconstruct, fusion=fusion, factors=factors, alpha=alpha,
            modality_dropout=modality_dropout, prior_loc_scale=prior_loc_scale,
            prior_scale=prior_scale, prior_scale_spread=prior_scale_spread,
            scale_floor=scale_floor, component=component, df=df,
            classifier_prior_scale=classifier_prior_scale, experts_pool=experts_pool)

        self.modalities = tuple(str(m) for m in dims)
        self.dims = {m: int(d) for m, d in dims.items()}
        self.num_classes = None if num_classes is None else int(num_classes)
        self.latent_dim = int(latent_dim)
        self.num_components = int(num_components)
        self.mixture = mixture
        self.representation = representation
        self.reconstruct = bool(reconstruct)
        self.fusion_name = fusion
        self.learn_alpha = alpha == "learned"
        self.component = component
        self.learn_df = component == "studentt" and df == "learned"
        self.scale_floor = float(scale_floor)
        self.resolution_floor = bool(resolution_floor)
        self.hidden = tuple(int(h) for h in hidden)
        self.modality_dropout = float(modality_dropout)
        self.classifier_prior_scale = (None if classifier_prior_scale is None
                                       else float(classifier_prior_scale))
        self._config = dict(
            dims=self.dims, num_classes=self.num_classes, latent_dim=self.latent_dim,
            num_components=self.num_components, mixture=mixture,
            representation=representation, reconstruct=self.reconstruct, fusion=fusion,
            alpha=alpha, alpha_prior=list(alpha_prior), prior_loc_scale=prior_loc_scale,
            prior_scale=prior_scale, prior_scale_spread=prior_scale_spread,
            scale_floor=self.scale_floor, resolution_floor=self.resolution_floor,
            component=component, df=df, hidden=list(self.hidden),
            modality_dropout=self.modality_dropout,
            classifier_prior_scale=self.classifier_prior_scale, experts_pool=experts_pool,
        )

        self._register_buffers(alpha, alpha_prior, prior_loc_scale, prior_scale,
                               prior_scale_spread, df)
        self.fusion = make_fusion(fusion)
        self.decoders = nn.ModuleDict(
            {m: GaussianDecoder(self.latent_dim, d, self.hidden)
             for m, d in self.dims.items()} if self.reconstruct else {}
        )
        self.classifier = None
        if self.num_classes is not None:
            latent = representation == "latent"
            sizes = ([self.latent_dim] * len(self.modalities) if latent
                     else list(self.dims.values()))
            self.classifier = make_classifier(fusion, sizes, self.hidden, self.num_classes,
                                              concatenated=not latent, pool=experts_pool)
        self.factors = nn.ModuleList(factors)
        for factor in self.factors:
            factor.bind(self)
        self._records: dict[str, torch.Tensor] = {}

    def _register_buffers(self, alpha, alpha_prior, prior_loc_scale, prior_scale,
                          prior_scale_spread, df) -> None:
        """Hyperparameters and fitted statistics live in buffers, so ``.to(device)``
        moves everything and the state dict saves them."""
        self.register_buffer("alpha", torch.tensor(1.0 if self.learn_alpha else float(alpha)))
        self.register_buffer("alpha_prior", torch.tensor([float(a) for a in alpha_prior]))
        self.register_buffer("prior_loc_scale", torch.tensor(float(prior_loc_scale)))
        self.register_buffer("prior_log_scale", torch.tensor(math.log(prior_scale)))
        self.register_buffer("prior_scale_spread", torch.tensor(float(prior_scale_spread)))
        self.register_buffer("standardized", torch.tensor(False))
        for m, d in self.dims.items():
            self.register_buffer(f"feature_loc_{m}", torch.zeros(d))
            self.register_buffer(f"feature_scale_{m}", torch.ones(d))
        # Floors of the component scales (module docstring): latent ones are fixed here,
        # observed ones are refitted with the standardisation.
        floor = self.scale_floor * (prior_scale if self.representation == "latent" else 1.0)
        for m, size in self.site_sizes.items():
            self.register_buffer(f"component_scale_floor_{m}", torch.full((size,), floor))
        # Fixed Student-t degrees of freedom; 0 = none (Gaussian, or learned: a site).
        self.register_buffer("component_df", torch.tensor(
            float(df) if self.component == "studentt" and not self.learn_df else 0.0))
        self.register_buffer("df_prior", torch.tensor(DF_PRIOR))
        self._register_load_state_dict_pre_hook(keep_missing_floors, with_module=True)
        # ARM's dynamic fusion writes here; 1 = neutral.
        self.register_buffer("modality_weights", torch.ones(len(self.modalities)))
        # Training label frequencies (for H(y)), fitted with the standardisation.
        self.register_buffer("class_frequencies", torch.zeros(self.num_classes or 0))

    # ------------------------------------------------------------------ configuration
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (factors included)."""
        return {**self._config, "factors": [factor_config(f) for f in self.factors]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MultimodalDPMixture":
        config = dict(config)
        factors = [make_factor(spec) for spec in config.pop("factors", [])]
        config["alpha_prior"] = tuple(config["alpha_prior"])
        config["hidden"] = tuple(config["hidden"])
        # Saved before the scale floor existed: keep the behaviour it was fitted with.
        config.setdefault("scale_floor", 0.0)
        config.setdefault("resolution_floor", False)
        dims = config.pop("dims")
        return cls(dims, factors=factors, **config)

    @property
    def site_sizes(self) -> dict[str, int]:
        """Size of each modality's mixture component (``D`` or ``d_m``)."""
        if self.representation == "latent":
            return {m: self.latent_dim for m in self.modalities}
        return dict(self.dims)

    @property
    def device(self) -> torch.device:
        return self.alpha.device

    # ------------------------------------------------------------------ model pieces
    def scale_floors(self) -> list[torch.Tensor]:
        """``[(size_m,)]``: each modality's component scale floor ``f_m``."""
        return [getattr(self, f"component_scale_floor_{m}") for m in self.modalities]

    def params_from_sites(self, values: Mapping[str, torch.Tensor]) -> MixtureParams:
        """:class:`MixtureParams` from global site values (a guide draw or its point
        estimate), with this model's floors and component kind."""
        return MixtureParams.from_sites(
            self.modalities, values, self.alpha, floors=self.scale_floors(),
            component=self.component, df=self._fixed_df())

    def _fixed_df(self) -> list[torch.Tensor] | None:
        if self.component != "studentt" or self.learn_df:
            return None
        return [self.component_df] * len(self.modalities)

    def sample_globals(self) -> MixtureParams:
        """Sample the global sites (``alpha``, ``sticks``, component locs and scales,
        learned degrees of freedom) and return them as :meth:`params_from_sites` does."""
        K = self.num_components
        values = {}
        alpha = self.alpha
        if self.learn_alpha:
            alpha = values["alpha"] = unbatched(pyro.sample(
                "alpha", dist.Gamma(self.alpha_prior[0], self.alpha_prior[1])), 0)
        values["sticks"] = unbatched(pyro.sample(
            "sticks", dist.Beta(torch.ones_like(alpha).expand(K - 1), alpha.expand(K - 1))
            .to_event(1)), 1)
        for m, size in self.site_sizes.items():
            values[f"component_loc_{m}"] = unbatched(pyro.sample(
                f"component_loc_{m}",
                dist.Normal(torch.zeros_like(self.prior_loc_scale), self.prior_loc_scale)
                .expand([K, size]).to_event(2)), 2)
            values[f"component_scale_{m}"] = unbatched(pyro.sample(
                f"component_scale_{m}",
                dist.LogNormal(self.prior_log_scale, self.prior_scale_spread)
                .expand([K, size]).to_event(2)), 2)
        if self.learn_df:
            for m in self.modalities:
                values[f"component_df_{m}"] = unbatched(
                    pyro.sample(f"component_df_{m}", dist.Gamma(*self.df_prior)), 0)
        return self.params_from_sites(values)

    def record(self, name: str, value: torch.Tensor) -> None:
        """Keep a detached scalar for the training history (read by the trainer)."""
        self._records[name] = value.detach()

    def pop_records(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self._records.items()}
        self._records.clear()
        return out

    # ------------------------------------------------------------------ the model
    def forward(self, batch: TensorBatch, subsample: torch.Tensor | None = None,
                kl_weight: float = 1.0) -> torch.Tensor | None:
        """Run the generative model on ``batch`` (the whole prepared data set).

        Args:
            batch: from :meth:`prepare`, ``N`` examples.
            subsample: ``(B,)`` indices of the minibatch (``None``: all ``N``); the
                data plate scales local terms by ``N / B``.
            kl_weight: multiplies the representation prior and posterior (KL warm-up);
                the guide must receive the same value.

        Returns:
            ``(B, M, D)`` representations (latent) or ``None`` (observed).
        """
        params = self.sample_globals()
        self.classifier_prior()
        with pyro.plate("data", batch.size, subsample=subsample) as idx:
            part = batch if subsample is None else batch.index(idx)
            if self.representation == "observed":
                values = part.concatenated(self.modalities)
                pyro.sample("x", params.mixture(self.mixture, mask=part.masks,
                                                batch_size=part.size, stacked=False),
                            obs=values)
                self._observe_labels(values, params, part)
                return None
            with pyro.poutine.scale(scale=kl_weight):
                z = pyro.sample("z", params.mixture(self.mixture, batch_size=part.size))
            # Which modalities are complete in this minibatch: one host sync, not one
            # per modality inside fill_unobserved.
            complete = part.masks.all(0).tolist() if self.reconstruct else []
            for j, m in enumerate(self.modalities):
                if self.reconstruct:
                    loc, scale = self.decoders[m](z[..., j, :])
                    likelihood = dist.Normal(loc, scale).to_event(1)
                    observed = part.features[m] if complete[j] else fill_unobserved(
                        part.features[m], part.masks[:, j], likelihood)
                    pyro.sample(f"x_{m}", likelihood.mask(part.masks[:, j]), obs=observed)
            self._observe_labels(z, params, part)
            if len(self.factors):
                context = FactorContext(self, z, part, params, self.record)
                for factor in self.factors:
                    factor.attach(context)
            return z
