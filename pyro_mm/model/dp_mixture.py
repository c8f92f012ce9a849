"""The multimodal Dirichlet-process Gaussian mixture as a Pyro model.

Generative model (``K`` components, ``M`` modalities, latent size ``D``)::

    alpha            fixed, or ~ Gamma(a0, b0)                       site "alpha"
    v_k              ~ Beta(1, alpha),  k = 1..K-1                    site "sticks"
    pi               = stick_breaking(v)     (all mass kept)
    mu_mk            ~ Normal(0, s0^2 I)                              site "component_loc_<m>"
    sigma_mk^2       ~ InverseGamma(nu0 / 2, nu0 s_m^2 / 2) per dimension  site "component_scale_<m>"
                       (scale_prior="lognormal": sigma_mk ~ LogNormal(log s1, t1))
    nu_m             ~ Gamma(2, 0.1)  if component="studentt", df="learned"  site "component_df_<m>"
    W_mk             ~ Normal(0, 1), (d_m, r)  if component="factor"  site "component_loadings_<m>"
    W                ~ Normal(0, sigma_W^2)  classifier weights, if classifier_prior_scale
                                                        factor "classifier_prior"
    for i in plate("data", N, subsample=...):
        z_i          ~ MultimodalMixture(pi, mu, sqrt(sigma^2 + f_m^2))  (B, M, D)  site "z"
                       (f_m: the recording resolution, observed features only)
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
  (:meth:`MultimodalDPMixture.fit_standardization`) and held in the buffers of the
  model's part ``standardization`` (:mod:`pyro_mm.model.standardization`); every
  likelihood is on that scale, and :meth:`MultimodalDPMixture.feature_log_jacobian`
  converts to the original scale.
* **Component variances: a conjugate prior** (``scale_prior="inverse_gamma"``, the
  default for observed features; latent representations keep ``"lognormal"`` with a
  floor of 0.05 ``s1``). ``sigma_mk^2 ~ InverseGamma(nu0 / 2, nu0 s_m^2 / 2)``: ``nu0``
  (``scale_pseudo_count``) pseudo-observations of the data's own spread ``s_m^2`` (1 on
  the standardised scale of observed features; ``s1^2`` for latent representations).
  The posterior mode is ``sigma^2 = (nu0 s^2 + S_mk) / (nu0 + n_k + 1)`` (``n_k``
  members, ``S_mk`` their squared deviations): a large component follows its own spread,
  one with few members is held near the data's, and no component can shrink a feature
  to zero because its members happen to agree there (a pixel that is always 0 in a
  class), which made a held-out example one pixel step away cost hundreds of nats and
  made the density depend on the split and get worse with training. ``nu0 = 2``
  (:data:`SCALE_PSEUDO_COUNT`) was chosen by held-out log-likelihood over random splits
  of several data sets (``benchmarks/dpgmm.py``, ``benchmarks/RESULTS.md``): smaller
  values let one split's members decide, larger ones blur clusters on data with many
  features (scikit-learn's ``nu0 = d`` is why it collapses to one component on mfeat's
  649 features).
* **Recording resolution.** Observed features recorded in steps of ``q`` (integer
  pixels, counts) add ``q^2 / 12`` (uniform dequantisation) to every component
  variance: a component's scale is ``sqrt(sigma_mk^2 + f_m^2)`` with ``f_m = q / sqrt(12)``
  (``resolution_floor``; default: on for data in memory,
  :mod:`pyro_mm.model.scale_floors`), so a value one step from every training value of
  a component costs at most ~6 nats there. ``scale_floor`` adds a fixed floor (a
  fraction of the training standard deviation, or of ``s1`` for latent
  representations) in quadrature; 0 by default. A config saved before the prior existed
  rebuilds with ``scale_prior="lognormal"`` and its floors, i.e. as it was fitted.
  :class:`~pyro_mm.model.params.MixtureParams` applies the floor where it builds the
  mixture, so every consumer uses the same scale.
* **Factor components** (``component="factor"``, observed features): component ``k``
  has covariance ``W_k W_k^T + diag(sigma_k^2)`` with ``W_k`` the ``r`` columns of
  loadings of every modality stacked (``rank``), so the ``joint`` mixture's factors are
  shared across views (:mod:`pyro_mm.model.factor_analysis`). A missing view's
  conditional given the present ones is a Gaussian regression within each component
  (what :func:`pyro_mm.impute` and the classifier's fill-in use), and responsibilities
  stop counting a view's correlated features as independent evidence. The loadings'
  prior ``Normal(0, 1)`` is weak on the standardised scale (a feature's variance is 1);
  the diagonal keeps its inverse-gamma prior and floors. The loadings start at the
  principal directions of each component's members
  (:meth:`pyro_mm.model.guide.MultimodalGuide.initialize`). ``private_rank=p`` adds
  ``p`` factors of each view alone (inter-battery factor analysis, Browne 1979; group
  factor analysis): they explain a view's internal correlations without claiming them as
  evidence about the other views
  (:func:`~pyro_mm.model.factor_analysis.embed_private`); they start small, along
  random directions.
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

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..data.batch import StoreBatch
from ..data.container import MultimodalData, TensorBatch
from ..errors import DataValidationError
from ._pyro_module import UniquelyNamedModule
from .arguments import check_arguments
from .distributions import inverse_gamma_scale_prior
from .factor_protocol import AuxiliaryFactor, FactorContext, factor_config, make_factor
from .label_head import LabelHead
from .legacy_names import flat_names_into
from .networks import GaussianDecoder
from .params import DF_PRIOR, MixtureParams
from .scale_floors import keep_missing_floors
from .sites import fill_unobserved, unbatched
from .standardization import Standardization

#: Default ``nu0`` of the inverse-gamma prior on the component variances (module
#: docstring; measured in ``benchmarks/RESULTS.md``).
SCALE_PSEUDO_COUNT = 2.0
#: ``scale_floor`` with ``scale_prior="lognormal"`` (the latent default), in units of ``s1``.
LATENT_SCALE_FLOOR = 0.05

#: Default probability of modality dropout for the classifier (see the module
#: docstring; measured in ``benchmarks/RESULTS.md``).
MODALITY_DROPOUT = 0.2


class MultimodalDPMixture(UniquelyNamedModule):
    """Multimodal Dirichlet-process Gaussian mixture (see the module docstring).

    The model is composed of parts that own their state: :attr:`standardization` (a
    :class:`~pyro_mm.model.standardization.Standardization`: the feature statistics and
    the component scale floors) and :attr:`label_head` (a
    :class:`~pyro_mm.model.label_head.LabelHead`: fusion, classifier, class prior and
    modality weights), beside the decoders and the auxiliary factors.

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
        prior_scale: ``s1``: the latent representations' spread ``s`` of the
            inverse-gamma prior; with ``scale_prior="lognormal"``, the prior median of
            the component scales.
        prior_scale_spread: ``t1``, log-scale spread of the component scales
            (``scale_prior="lognormal"`` only).
        scale_prior: ``"inverse_gamma"`` (the conjugate prior on the variances, module
            docstring) or ``"lognormal"``. ``None`` (default): ``"inverse_gamma"`` for
            observed features, where it was measured to win (``benchmarks/dpgmm.py``);
            ``"lognormal"`` (with ``scale_floor`` 0.05) for latent representations, whose
            scale the encoders set and where it was not measured for prediction (the
            clustering benchmark passes ``"inverse_gamma"``).
        scale_pseudo_count: ``nu0 > 0``, the inverse-gamma prior's pseudo-count.
        scale_floor: a fixed floor of the component scales as a fraction of each
            feature's training standard deviation (observed) or of ``s1`` (latent),
            added in quadrature. ``None`` (default): 0 with the inverse-gamma prior
            (which makes it unnecessary), :data:`LATENT_SCALE_FLOOR` with the lognormal.
        resolution_floor: add each observed feature's recording resolution
            ``q^2 / 12`` to the component variances. ``None`` (default): for data in
            memory; data on disk (streamed statistics, no distinct values) skip it with
            a warning. ``True`` refuses data on disk.
        component: ``"normal"`` (Gaussian components), ``"studentt"`` or
            ``"factor"`` (low-rank-plus-diagonal covariances; observed features only).
        rank: ``r``, the factors of each ``"factor"`` component that every view shares.
        private_rank: ``p``, factors of each view alone (``0``: none): they explain
            variation within a view, so it is not read as evidence about the others.
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
        scale_prior: str | None = None,
        scale_pseudo_count: float = SCALE_PSEUDO_COUNT,
        scale_floor: float | None = None,
        resolution_floor: bool | None = None,
        component: str = "normal",
        df: float | str = "learned",
        hidden: Sequence[int] = (256,),
        modality_dropout: float = MODALITY_DROPOUT,
        classifier_prior_scale: float | None = None,
        experts_pool: str = "product",
        factors: Sequence[AuxiliaryFactor] = (),
        rank: int = 10,
        private_rank: int = 0,
    ):
        super().__init__("pyro_mm_model")
        if reconstruct is None:
            reconstruct = representation == "latent"
        if scale_prior is None:  # what was measured to win for each (module docstring)
            scale_prior = "inverse_gamma" if representation == "observed" else "lognormal"
        if scale_floor is None:
            scale_floor = 0.0 if scale_prior == "inverse_gamma" else LATENT_SCALE_FLOOR
        check_arguments(
            dims=dims, num_classes=num_classes, latent_dim=latent_dim,
            num_components=num_components, mixture=mixture, representation=representation,
            reconstruct=reconstruct, fusion=fusion, factors=factors, alpha=alpha,
            modality_dropout=modality_dropout, prior_loc_scale=prior_loc_scale,
            prior_scale=prior_scale, prior_scale_spread=prior_scale_spread,
            scale_floor=scale_floor, component=component, df=df,
            scale_prior=scale_prior, scale_pseudo_count=scale_pseudo_count,
            classifier_prior_scale=classifier_prior_scale, experts_pool=experts_pool,
            rank=rank, private_rank=private_rank)

        self.modalities = tuple(str(m) for m in dims)
        self.dims = {m: int(d) for m, d in dims.items()}
        self.num_classes = None if num_classes is None else int(num_classes)
        self.latent_dim = int(latent_dim)
        self.num_components = int(num_components)
        self.mixture = mixture
        self.representation = representation
        self.reconstruct = bool(reconstruct)
        self.learn_alpha = alpha == "learned"
        self.component = component
        self.rank = int(rank)
        self.private_rank = int(private_rank)
        self.learn_df = component == "studentt" and df == "learned"
        self.scale_prior = scale_prior
        self.scale_floor = float(scale_floor)
        self.resolution_floor = None if resolution_floor is None else bool(resolution_floor)
        self.hidden = tuple(int(h) for h in hidden)
        self._config = dict(
            dims=self.dims, num_classes=self.num_classes, latent_dim=self.latent_dim,
            num_components=self.num_components, mixture=mixture,
            representation=representation, reconstruct=self.reconstruct, fusion=fusion,
            alpha=alpha, alpha_prior=list(alpha_prior), prior_loc_scale=prior_loc_scale,
            prior_scale=prior_scale, prior_scale_spread=prior_scale_spread,
            scale_prior=scale_prior, scale_pseudo_count=float(scale_pseudo_count),
            scale_floor=self.scale_floor, resolution_floor=self.resolution_floor,
            component=component, df=df, hidden=list(self.hidden),
            modality_dropout=float(modality_dropout),
            classifier_prior_scale=(None if classifier_prior_scale is None
                                    else float(classifier_prior_scale)),
            experts_pool=experts_pool,
        )
        if component == "factor":  # only then: configs of other models stay as they were
            self._config["rank"] = self.rank
            if self.private_rank:
                self._config["private_rank"] = self.private_rank

        self._register_buffers(alpha, alpha_prior, prior_loc_scale, prior_scale,
                               prior_scale_spread, df)
        self._register_variance_prior(scale_pseudo_count, prior_scale, representation)
        latent = representation == "latent"
        self.standardization = Standardization(
            self.dims, scale_floor=self.scale_floor, resolution_floor=self.resolution_floor,
            latent_dim=self.latent_dim if latent else None, prior_scale=prior_scale)
        self.decoders = nn.ModuleDict(
            {m: GaussianDecoder(self.latent_dim, d, self.hidden)
             for m, d in self.dims.items()} if self.reconstruct else {}
        )
        # Built after the decoders, where the classifier always was: the same random
        # initialisation, and the same parameter order (a saved optimiser state's).
        self.label_head = LabelHead(
            self.modalities, list(self.site_sizes.values()), self.num_classes,
            latent=latent, mixture=mixture, fusion=fusion, hidden=self.hidden,
            modality_dropout=modality_dropout, experts_pool=experts_pool,
            classifier_prior_scale=classifier_prior_scale)
        self.factors = nn.ModuleList(factors)
        for factor in self.factors:
            factor.bind(self)
        self._records: dict[str, torch.Tensor] = {}

    def _register_buffers(self, alpha, alpha_prior, prior_loc_scale, prior_scale,
                          prior_scale_spread, df) -> None:
        """Hyperparameters live in buffers, so ``.to(device)`` moves everything and the
        state dict saves them (the fitted statistics live in the parts that fit them)."""
        self.register_buffer("alpha", torch.tensor(1.0 if self.learn_alpha else float(alpha)))
        self.register_buffer("alpha_prior", torch.tensor([float(a) for a in alpha_prior]))
        self.register_buffer("prior_loc_scale", torch.tensor(float(prior_loc_scale)))
        self.register_buffer("prior_log_scale", torch.tensor(math.log(prior_scale)))
        self.register_buffer("prior_scale_spread", torch.tensor(float(prior_scale_spread)))
        # Fixed Student-t degrees of freedom; 0 = none (Gaussian, or learned: a site).
        self.register_buffer("component_df", torch.tensor(
            float(df) if self.component == "studentt" and not self.learn_df else 0.0))
        self.register_buffer("df_prior", torch.tensor(DF_PRIOR))
        # States of 0.1.0 hold the parts' entries flat on the model (legacy_names).
        self._register_load_state_dict_pre_hook(
            flat_names_into(("standardization", "label_head")), with_module=True)
        self._register_load_state_dict_pre_hook(keep_missing_floors, with_module=True)

    def _register_variance_prior(self, pseudo_count, prior_scale, representation) -> None:
        """``(nu0, s^2)`` of the inverse-gamma prior. Not persistent: they follow from
        the config, so states saved before the prior existed load unchanged."""
        spread = 1.0 if representation == "observed" else float(prior_scale) ** 2
        self.register_buffer("variance_prior", torch.tensor(
            [float(pseudo_count), spread]), persistent=False)

    # ------------------------------------------------------------------ configuration
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (factors included)."""
        config = dict(self._config)
        if self.scale_prior == "lognormal":
            # As configs were before the prior existed (from_config's default): a run
            # saved then and resumed now is the same model, not a changed one.
            del config["scale_prior"], config["scale_pseudo_count"]
        return {**config, "factors": [factor_config(f) for f in self.factors]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MultimodalDPMixture":
        """The model :meth:`config` describes (untrained: load its state after)."""
        config = dict(config)
        factors = [make_factor(spec) for spec in config.pop("factors", [])]
        config["alpha_prior"] = tuple(config["alpha_prior"])
        config["hidden"] = tuple(config["hidden"])
        # Saved before the scale floor (or the variance prior) existed: keep the
        # behaviour it was fitted with.
        config.setdefault("scale_floor", 0.0)
        config.setdefault("scale_prior", "lognormal")
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

    # ------------------------------------------------------------------ the label head
    # Thin delegations to label_head: the names users, the factors (FactorModel) and
    # the other layers call on the model.
    @property
    def classifier(self) -> nn.Module | None:
        """The label head's classifier (``None`` without ``num_classes``)."""
        return self.label_head.classifier

    @property
    def modality_weights(self) -> torch.Tensor:
        """``(M,)`` per-modality weights of the fusion (1 = neutral); ARM's dynamic
        fusion assigns new ones (a tensor of shape ``(M,)``)."""
        return self.label_head.modality_weights

    @modality_weights.setter
    def modality_weights(self, weights: torch.Tensor) -> None:
        self.label_head.set_modality_weights(weights)

    @property
    def class_frequencies(self) -> torch.Tensor:
        """``(C,)`` training label frequencies (zeros before
        :meth:`fit_standardization`; ``(0,)`` without a classifier)."""
        return self.label_head.class_frequencies

    @property
    def fusion_name(self) -> str:
        """``"concat"``, ``"dp"`` or ``"experts"``."""
        return self.label_head.fusion_name

    @property
    def modality_dropout(self) -> float:
        """Probability of dropping each present modality from the classifier's input in
        training."""
        return self.label_head.modality_dropout

    @property
    def classifier_prior_scale(self) -> float | None:
        """``sigma`` of the classifier weights' Gaussian prior (``None``: none)."""
        return self.label_head.classifier_prior_scale

    def class_logits(self, z: torch.Tensor, params: MixtureParams,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C)`` logits: :meth:`LabelHead.class_logits
        <pyro_mm.model.label_head.LabelHead.class_logits>`."""
        return self.label_head.class_logits(z, params, mask)

    def label_log_prob(self, z: torch.Tensor, params: MixtureParams, labels: torch.Tensor,
                       mask: torch.Tensor | None = None, drop: int | None = None
                       ) -> torch.Tensor:
        """``(B,)`` ``log q(y_i | z_i)`` (without modality ``drop``):
        :meth:`LabelHead.label_log_prob <pyro_mm.model.label_head.LabelHead.label_log_prob>`."""
        return self.label_head.label_log_prob(z, params, labels, mask, drop)

    def dropout_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` modality dropout of ``mask``:
        :meth:`LabelHead.dropout_mask <pyro_mm.model.label_head.LabelHead.dropout_mask>`."""
        return self.label_head.dropout_mask(mask)

    # ------------------------------------------------------------------ data
    def check_data(self, data: MultimodalData) -> None:
        """Raise :class:`DataValidationError` if ``data`` does not fit this model."""
        missing = [m for m in self.modalities if m not in data.dims]
        if missing:
            raise DataValidationError(
                f"modalities {missing}: the model was built for {list(self.modalities)} "
                f"but the data has {list(data.modalities)}"
            )
        for m in self.modalities:
            if data.dims[m] != self.dims[m]:
                raise DataValidationError(
                    f"modality {m!r}: has {data.dims[m]} features but the model expects "
                    f"{self.dims[m]}"
                )
        if (self.num_classes is not None and data.has_labels
                and data.labels.max() >= self.num_classes):
            raise DataValidationError(
                f"labels: the largest label is {int(data.labels.max())} but the model has "
                f"num_classes={self.num_classes} (labels must lie in 0..{self.num_classes - 1}); "
                f"build the model with num_classes={int(data.labels.max()) + 1} or more")

    def check_batch(self, batch: TensorBatch | StoreBatch) -> None:
        """Raise :class:`DataValidationError` if the features of ``batch`` are not in
        the model's dtype (a float32 batch given to ``model.double()``, or a float64
        one built by hand for a float32 model), naming both dtypes, instead of a
        ``mat1 and mat2 must have the same dtype`` from deep inside a network.

        Compares the ``dtype`` attribute of each modality's tensor: no host sync, no
        arithmetic. A :class:`~pyro_mm.data.batch.StoreBatch` is not read for this
        (its rows come from :meth:`prepare`, in the model's dtype).
        """
        if not isinstance(batch, TensorBatch):
            return
        dtype = self.alpha.dtype
        for m in self.modalities:
            x = batch.features.get(m)
            if x is not None and x.dtype != dtype:
                raise DataValidationError(
                    f"batch: the features of modality {m!r} are {x.dtype} but the model "
                    f"is {dtype}; prepare the data with model.prepare(data), which "
                    f"converts them to the model's dtype, or convert the model "
                    f"(model.to({x.dtype}) and a guide built for it)")

    def fit_standardization(self, data: MultimodalData) -> None:
        """Fit the feature statistics and (observed) the scale floors on (training)
        ``data`` (:meth:`Standardization.fit
        <pyro_mm.model.standardization.Standardization.fit>`), then the class
        frequencies of its labels."""
        self.check_data(data)
        self.standardization.fit(data)
        if data.has_labels:
            self.label_head.fit_class_frequencies(data.labels)

    def prepare(self, data: MultimodalData, rows=None) -> TensorBatch | StoreBatch:
        """Validate ``data`` against the model, standardise it and move it to the
        model's device. Missing entries stay exactly zero.

        Args:
            rows: only these examples (``(B,)`` positions, in that order).

        Returns:
            a :class:`TensorBatch`; for data on disk without ``rows``, a
            :class:`~pyro_mm.data.batch.StoreBatch` that reads rows when indexed.
        """
        if not self.standardization.fitted:
            raise ValueError(
                "prepare: the model has no standardisation statistics yet; call "
                "model.fit_standardization(train_data) first (pyro_mm.fit does)")
        self.check_data(data)
        if data.on_disk and rows is None:
            return self._store_batch(data.select(self.modalities))
        return self.standardize(data.to_tensors(self.device, modalities=self.modalities,
                                                rows=rows))

    def _store_batch(self, data: MultimodalData) -> StoreBatch:
        device, mods = self.device, self.modalities
        masks = torch.as_tensor(np.stack([data.masks[m] for m in mods], 1), device=device)
        labels = label_mask = None
        if self.num_classes is not None and data.labels is not None:
            label_mask = torch.as_tensor(data.labels >= 0, device=device)
            labels = torch.as_tensor(np.maximum(data.labels, 0), device=device)

        def read(rows: np.ndarray) -> TensorBatch:
            return self.standardize(data.to_tensors(device, modalities=mods, rows=rows))

        return StoreBatch(read, masks, labels, label_mask)

    def standardize(self, raw: TensorBatch) -> TensorBatch:
        """``raw`` (features as stored, on the model's device, in its modality order)
        standardised; labels dropped for a model without classifier."""
        features = self.standardization.standardize(raw.features, raw.masks)
        labels, label_mask = raw.labels, raw.label_mask
        if self.num_classes is None:
            labels = label_mask = None
        return TensorBatch(features, raw.masks, labels, label_mask)

    def feature_log_jacobian(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B,)`` from ``masks (B, M)``: add to a log-density of standardised features
        to get the density of the original features (:meth:`Standardization.feature_log_jacobian
        <pyro_mm.model.standardization.Standardization.feature_log_jacobian>`)."""
        return self.standardization.feature_log_jacobian(masks)

    # ------------------------------------------------------------------ model pieces
    def scale_floors(self) -> list[torch.Tensor]:
        """``[(size_m,)]``: each modality's component scale floor ``f_m``."""
        return self.standardization.scale_floors()

    def params_from_sites(self, values: Mapping[str, torch.Tensor]) -> MixtureParams:
        """:class:`MixtureParams` from global site values (a guide draw or its point
        estimate), with this model's floors and component kind."""
        return MixtureParams.from_sites(
            self.modalities, values, self.alpha, floors=self.scale_floors(),
            component=self.component, df=self._fixed_df(),
            shared_rank=self.rank if self.private_rank else None)

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
            # The sticks' prior takes alpha as sampled (with any draw and plate dims),
            # so a batch of draws gives a batch of priors, one per draw.
            alpha = pyro.sample("alpha", dist.Gamma(self.alpha_prior[0], self.alpha_prior[1]))
            values["alpha"] = unbatched(alpha, 0)
        concentration = alpha.unsqueeze(-1).expand(*alpha.shape, K - 1)
        values["sticks"] = unbatched(pyro.sample(
            "sticks", dist.Beta(torch.ones_like(concentration), concentration)
            .to_event(1)), 1)
        for m, size in self.site_sizes.items():
            values[f"component_loc_{m}"] = unbatched(pyro.sample(
                f"component_loc_{m}",
                dist.Normal(torch.zeros_like(self.prior_loc_scale), self.prior_loc_scale)
                .expand([K, size]).to_event(2)), 2)
            values[f"component_scale_{m}"] = unbatched(pyro.sample(
                f"component_scale_{m}", self.scale_prior_distribution()
                .expand([K, size]).to_event(2)), 2)
        if self.learn_df:
            for m in self.modalities:
                values[f"component_df_{m}"] = unbatched(
                    pyro.sample(f"component_df_{m}", dist.Gamma(*self.df_prior)), 0)
        if self.component == "factor":
            one = torch.ones_like(self.prior_loc_scale)
            for m, size in self.site_sizes.items():
                values[f"component_loadings_{m}"] = unbatched(pyro.sample(
                    f"component_loadings_{m}", dist.Normal(torch.zeros_like(one), one)
                    .expand([K, size, self.rank + self.private_rank]).to_event(3)), 3)
        return self.params_from_sites(values)

    def scale_prior_distribution(self) -> dist.TorchDistribution:
        """The prior of one component scale ``sigma_mk`` (batch shape ``()``): the
        inverse-gamma on ``sigma^2`` (:func:`~pyro_mm.model.distributions.inverse_gamma_scale_prior`)
        or, for ``scale_prior="lognormal"``, ``LogNormal(log s1, t1)``."""
        if self.scale_prior == "lognormal":
            return dist.LogNormal(self.prior_log_scale, self.prior_scale_spread)
        return inverse_gamma_scale_prior(self.variance_prior[0], self.variance_prior[1])

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

        Raises:
            DataValidationError: ``batch`` is not in the model's dtype
                (:meth:`check_batch`).
        """
        self.check_batch(batch)
        params = self.sample_globals()
        self.label_head.classifier_prior()
        with pyro.plate("data", batch.size, subsample=subsample) as idx:
            part = batch if subsample is None else batch.index(idx)
            if self.representation == "observed":
                values = part.concatenated(self.modalities)
                # No mask when nothing is missing: the masking passes over (B, M, K)
                # are then skipped (one host sync to know it).
                mask = None if bool(part.masks.all()) else part.masks
                pyro.sample("x", params.mixture(self.mixture, mask=mask,
                                                batch_size=part.size, stacked=False),
                            obs=values)
                self.label_head.observe(values, params, part)
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
            self.label_head.observe(z, params, part)
            if len(self.factors):
                context = FactorContext(self, z, part, params, self.record)
                for factor in self.factors:
                    factor.attach(context)
            return z
