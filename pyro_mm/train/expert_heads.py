"""Exact fit of the ``fusion="experts"`` heads of an observed-feature model.

With ``representation="observed"`` and ``fusion="experts"`` the heads' part of the
objective is separate from everything else in the model: each head ``h_m`` sees only
the standardised features ``x_im`` (fixed data, no sampled representation), the ``"y"``
site passes it no gradient (the cut in :mod:`pyro_mm.model.label_head`), and the heads are
point estimates. Their MAP estimate is therefore the solution of ``M`` independent
problems, one per modality,

    minimise_{theta_m}  - sum_{i: x_im present, y_i observed} log q_m(y_i | x_im)
                        + ||W_m||^2 / (2 sigma^2)        (the prior term only with sigma)

(``W_m`` the head's weight matrices, biases unpenalised, ``sigma`` the model's
``classifier_prior_scale``) - a penalised logistic regression for linear heads, convex,
the same objective as scikit-learn's ``LogisticRegression(C=sigma^2)``. Minibatch SVI
with Adam for a few tens of epochs stops short of it (on mfeat with 70 % of the views
missing the heads of a 6-feature view lost 4 points of accuracy to it), so
:func:`solve_expert_heads` finishes the job with full-batch L-BFGS, started from the
SVI solution (for MLP heads, a non-convex objective, it refines that local solution).
:class:`~pyro_mm.train.trainer.Trainer` calls it at the end of every fit of such a model on
data in memory. Data on disk keeps SVI's heads: the solve holds every labelled row of a
view at once, which the out-of-core path must not.
"""

from __future__ import annotations

import torch
from torch.nn.functional import cross_entropy


def experts_heads_are_separable(model) -> bool:
    """Whether ``model``'s heads have the separate objective of the module docstring
    (observed representation, ``fusion="experts"``, a classifier)."""
    return (model.classifier is not None and model.fusion_name == "experts"
            and model.representation == "observed")


def _head_data(batch, modality: str, j: int):
    """``(inputs (n_j, d_j), labels (n_j,))`` of head ``j``: the standardised features
    of ``modality`` (the head's whole input) on the rows where it is present and the
    label observed."""
    seen = batch.masks[:, j]
    if batch.label_mask is not None:
        seen = seen & batch.label_mask
    return batch.features[modality][seen], batch.labels[seen]


def head_objective(head, inputs: torch.Tensor, labels: torch.Tensor,
                   sigma: float | None) -> torch.Tensor:
    """The scalar objective of the module docstring for one head: ``inputs (n, d)``,
    ``labels (n,)``; ``sigma`` ``None`` for no prior term."""
    loss = cross_entropy(head(inputs), labels, reduction="sum")
    if sigma is not None:
        penalty = sum(p.pow(2).sum() for name, p in head.named_parameters()
                      if name.endswith("weight"))
        loss = loss + 0.5 * penalty / sigma ** 2
    return loss


def solve_expert_heads(model, batch, max_iter: int = 500) -> list[float]:
    """Fit every head of ``model`` (see :func:`experts_heads_are_separable`) to its MAP
    estimate on ``batch`` (the prepared training data in memory, a ``TensorBatch``)
    by full-batch L-BFGS with a strong-Wolfe line search, in place.

    Returns the final objective of each head (``M`` floats; ``nan`` for a head with no
    labelled example, which is left as it is)."""
    if not experts_heads_are_separable(model):
        raise ValueError("solve_expert_heads: needs representation='observed', "
                         "fusion='experts' and a classifier")
    if batch.labels is None:
        return [float("nan")] * len(model.modalities)
    classifier, sigma = model.classifier, model.classifier_prior_scale
    finals = []
    for j, head in enumerate(classifier.heads):
        inputs, labels = _head_data(batch, model.modalities[j], j)
        if len(labels) == 0:
            finals.append(float("nan"))
            continue
        optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter,
                                      tolerance_grad=1e-6, tolerance_change=1e-10,
                                      history_size=20, line_search_fn="strong_wolfe")

        def closure(head=head, inputs=inputs, labels=labels, optimizer=optimizer):
            optimizer.zero_grad()
            loss = head_objective(head, inputs, labels, sigma)
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
            finals.append(float(head_objective(head, inputs, labels, sigma).detach()))
    return finals
